use super::*;
use std::io::Write;
use std::sync::{Arc, Mutex};

const WINDOW: Duration = Duration::from_secs(30);
const COOLDOWN: Duration = Duration::from_secs(120);

fn cfg(max_error_rate: f64, min_requests: u64) -> Guard {
    Guard {
        max_error_rate,
        min_requests,
        window: WINDOW,
        cooldown: COOLDOWN,
        compare_to_stable: true,
        confidence: 0.99,
        max_latency_ratio: None,
        min_latency: Duration::from_millis(50),
    }
}

fn gauge() -> IntGauge {
    IntGauge::new("graylane_gray_tripped", "test").unwrap()
}

/// A guard whose clock starts at the returned instant, with its gauge.
fn guard_with(c: Guard) -> (GuardState, IntGauge, Instant) {
    let g = gauge();
    let t0 = Instant::now();
    (
        GuardState::with_origin("chat".into(), c, g.clone(), t0),
        g,
        t0,
    )
}

fn secs(t0: Instant, s: f64) -> Instant {
    t0 + Duration::from_secs_f64(s)
}

/// Records `n` outcomes at `now`, the `i`th failed when `fail(i)`.
fn feed(g: &GuardState, now: Instant, n: u64, fail: impl Fn(u64) -> bool) {
    for i in 0..n {
        g.record_gray_at(fail(i), now);
    }
}

/// Log lines written while `f` runs.
fn logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(sub, f);
    let out = buf.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn state_word_round_trips() {
    for st in [
        State {
            mode: Mode::Closed,
            gen: 0,
        },
        State {
            mode: Mode::Open(TIME_MAX),
            gen: GEN_MASK,
        },
        State {
            mode: Mode::HalfOpen,
            gen: 12345,
        },
    ] {
        assert_eq!(State::unpack(st.pack()), st);
    }
}

#[test]
fn low_traffic_never_trips() {
    let (g, gauge, t0) = guard_with(cfg(0.05, 50));
    feed(&g, t0, 49, |_| true);
    assert!(!g.is_tripped());
    assert!(g.admit_at(t0));
    assert_eq!(gauge.get(), 0);
    // Once those are a window old: one a second never fills a window with 50,
    // however long it runs.
    for s in 30..600 {
        g.record_gray_at(true, secs(t0, f64::from(s)));
    }
    assert!(!g.is_tripped());
}

#[test]
fn trips_above_bound_with_enough_requests_and_says_why_once() {
    let (g, gauge, t0) = guard_with(cfg(0.05, 50));
    feed(&g, t0, 45, |_| false);
    let out = logs(|| {
        feed(&g, t0, 4, |_| true);
        assert!(!g.is_tripped(), "49 requests are below min_requests");
        g.record_gray_at(true, t0); // 5 of 50 = 0.1 > 0.05
        assert!(g.is_tripped());
        feed(&g, t0, 20, |_| true); // stragglers: no second line
    });
    assert_eq!(gauge.get(), 1);
    assert!(!g.admit_at(t0));
    assert!(!g.admit_at(secs(t0, 119.9)));
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].contains(
            "gray tripped for service chat (error_rate): gray 5 of 50 failed (0.1), p95 - \
                 ms; stable 0 of 0 failed (0), p95 - ms; above max_error_rate 0.05 (stable \
                 under min_requests: not compared); sending gray traffic to stable for 2m"
        ) && errors[0].contains("gray_requests=50 gray_failures=5"),
        "{out}"
    );
}

#[test]
fn at_or_below_bound_never_trips() {
    let (g, _, t0) = guard_with(cfg(0.05, 50));
    // Exactly one in twenty fails, and never more than that share at any point.
    for s in 0..100 {
        feed(&g, secs(t0, f64::from(s)), 100, |i| i % 20 == 19);
    }
    assert!(!g.is_tripped());
}

#[test]
fn old_failures_slide_out_of_the_window() {
    // Control: 40 failures and 10 successes within 30 s, then a failure: trips.
    let (g, _, t0) = guard_with(cfg(0.05, 50));
    feed(&g, t0, 40, |_| true);
    feed(&g, secs(t0, 29.0), 10, |_| false);
    g.record_gray_at(true, secs(t0, 29.999));
    assert!(g.is_tripped());

    // The same, but the last failure comes when the first 40 are a window old.
    let (g, _, t0) = guard_with(cfg(0.05, 50));
    feed(&g, t0, 40, |_| true);
    feed(&g, secs(t0, 29.0), 10, |_| false);
    g.record_gray_at(true, secs(t0, 30.0));
    assert!(!g.is_tripped());
    assert_eq!(g.gray_counts(secs(t0, 30.0)), (11, 1));
}

#[test]
fn half_open_admits_the_probe_share() {
    let (g, gauge, t0) = guard_with(cfg(0.05, 50));
    assert!(g.trip_at(t0));
    assert!((0..100).all(|_| !g.admit_at(secs(t0, 119.999))));
    let after = secs(t0, 120.0);
    let admitted = (0..1000).filter(|_| g.admit_at(after)).count();
    assert_eq!(admitted as u64, 1000 / PROBE_EVERY);
    assert!(g.is_tripped(), "half-open still holds gray back");
    assert_eq!(gauge.get(), 1);
}

#[test]
fn first_request_after_cooldown_is_a_probe() {
    let (g, _, t0) = guard_with(cfg(0.05, 50));
    g.trip_at(t0);
    assert!(g.admit_at(secs(t0, 500.0)));
    assert!(!g.admit_at(secs(t0, 500.0)));
}

#[test]
fn healthy_probes_close_it_with_a_fresh_window() {
    // Cooldown shorter than the window: the failures that tripped it are still inside
    // the window when it closes, and must not count again.
    let c = Guard {
        cooldown: Duration::from_secs(10),
        ..cfg(0.05, 50)
    };
    let (g, gauge, t0) = guard_with(c);
    feed(&g, t0, 50, |_| true);
    assert!(g.is_tripped());
    let t = secs(t0, 10.0);
    let mut probes = 0;
    let out = logs(|| {
        for _ in 0..10_000 {
            if !g.is_tripped() {
                break;
            }
            if g.admit_at(t) {
                probes += 1;
                // One failure in twenty is within 0.05.
                g.record_gray_at(probes == 7, t);
            }
        }
    });
    assert_eq!(probes, MAX_PROBES);
    assert!(!g.is_tripped());
    assert_eq!(gauge.get(), 0);
    assert!(g.admit_at(t));
    assert!(out.contains("INFO"), "{out}");
    assert!(
        out.contains("gray guard closed for service chat: 1 of 20 probes failed"),
        "{out}"
    );
    assert!(!out.contains("ERROR"), "{out}");
    g.record_gray_at(true, t);
    assert!(!g.is_tripped());
    assert_eq!(g.gray_counts(t), (1, 1));
}

#[test]
fn failing_probes_reopen_it() {
    let (g, gauge, t0) = guard_with(cfg(0.05, 50));
    g.trip_at(t0);
    let t = secs(t0, 120.0);
    let out = logs(|| {
        assert!(g.admit_at(t));
        g.record_gray_at(true, t);
        assert!(g.is_tripped());
        assert_eq!(
            g.load_state().mode,
            Mode::HalfOpen,
            "one failure of 20 is within 0.05"
        );
        g.record_gray_at(true, t);
    });
    // Two of twenty can no longer end within 0.05: open again at once.
    assert_eq!(g.load_state().mode, Mode::Open(240_000));
    assert_eq!(gauge.get(), 1);
    assert!(!g.admit_at(secs(t0, 239.9)));
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].contains("gray tripped for service chat (probes): gray 2 of 2 failed"),
        "{out}"
    );
    // A new round after the second cooldown starts from zero.
    let t = secs(t0, 240.0);
    assert!(g.admit_at(t));
    for _ in 0..MAX_PROBES {
        g.record_gray_at(false, t);
    }
    assert!(!g.is_tripped());
}

#[test]
fn small_min_requests_decides_on_fewer_probes() {
    let (g, _, t0) = guard_with(cfg(0.5, 4));
    g.trip_at(t0);
    let t = secs(t0, 120.0);
    assert!(g.admit_at(t));
    for failed in [true, false, true] {
        g.record_gray_at(failed, t);
    }
    assert!(g.is_tripped());
    g.record_gray_at(false, t); // 2 of 4 = 0.5, within the bound
    assert!(!g.is_tripped());
}

#[test]
fn manual_trip_and_reset() {
    let (g, gauge, t0) = guard_with(cfg(0.05, 50));
    feed(&g, t0, 40, |_| true);
    let out = logs(|| assert!(g.trip_at(t0)));
    assert!(
        out.contains("ERROR") && out.contains("tripped by hand"),
        "{out}"
    );
    assert!(g.is_tripped());
    assert_eq!(gauge.get(), 1);
    assert!(!g.admit_at(t0));
    // Tripping again restarts the cooldown.
    g.trip_at(secs(t0, 60.0));
    assert!(!g.admit_at(secs(t0, 150.0)));

    assert!(!g.reset());
    assert!(!g.is_tripped());
    assert_eq!(gauge.get(), 0);
    assert!(g.admit_at(t0));
    // The 40 failures before the reset are gone: 10 more do not reach min_requests.
    feed(&g, t0, 10, |_| true);
    assert!(!g.is_tripped());
    // Reset while half-open closes too.
    g.trip_at(t0);
    assert!(g.admit_at(secs(t0, 120.0)));
    assert!(!g.reset());
    assert!(g.admit_at(secs(t0, 120.0)));
}

#[test]
fn outcomes_while_open_are_ignored() {
    let (g, _, t0) = guard_with(cfg(0.05, 50));
    g.trip_at(t0);
    feed(&g, secs(t0, 1.0), 100, |_| true);
    assert_eq!(g.probes.0.load(Ordering::Acquire), 0);
    assert_eq!(g.gray_counts(secs(t0, 1.0)), (0, 0));
}

#[test]
fn a_full_bucket_is_halved_and_keeps_its_share() {
    let (g, _, t0) = guard_with(cfg(1.0, 50));
    let n = COUNT_MAX + 1000;
    feed(&g, t0, n, |i| i % 4 == 0);
    let (r, f) = g.gray_counts(t0);
    assert!(r <= COUNT_MAX && r > COUNT_MAX / 2, "{r}");
    let share = f as f64 / r as f64;
    assert!((share - 0.25).abs() < 0.01, "{share}");
}

#[test]
fn concurrent_records_all_count() {
    let (g, _, t0) = guard_with(cfg(1.0, 50)); // a share above 1.0 is impossible
    let g = Arc::new(g);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let g = Arc::clone(&g);
            std::thread::spawn(move || feed(&g, t0, 10_000, |i| i % 4 == 0))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(g.gray_counts(t0), (80_000, 20_000));
}

#[test]
fn concurrent_transitions_smoke() {
    let c = Guard {
        window: Duration::from_millis(50),
        cooldown: Duration::from_millis(5),
        ..cfg(0.05, 10)
    };
    let gauge = gauge();
    let g = Arc::new(GuardState::new("chat".into(), c, gauge.clone()));
    let threads: Vec<_> = (0..8u64)
        .map(|n| {
            let g = Arc::clone(&g);
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    if g.admit() {
                        g.record_gray((i * 7 + n) % 13 == 0, None, Instant::now());
                    }
                    if i % 5000 == 4999 && n == 0 {
                        g.trip();
                    }
                    if i % 7001 == 7000 && n == 1 {
                        g.reset();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(gauge.get(), i64::from(g.is_tripped()));
    g.reset();
    assert_eq!(gauge.get(), 0);
    assert!(g.admit());
}

/// Records `n` stable outcomes at `now`, the `i`th failed when `fail(i)`.
fn feed_stable(g: &GuardState, now: Instant, n: u64, fail: impl Fn(u64) -> bool) {
    for i in 0..n {
        g.record_stable(fail(i), Some(Duration::from_millis(5)), now);
    }
}

#[test]
fn a_failure_shared_with_stable_does_not_trip_gray() {
    let (g, gauge, t0) = guard_with(cfg(0.05, 50));
    feed_stable(&g, t0, 500, |_| true);
    feed(&g, t0, 150, |_| true);
    assert!(!g.is_tripped(), "gray fails as stable does");
    assert_eq!(gauge.get(), 0);
    assert!(g.held_since().is_none());
    // Stable recovers while gray keeps failing: gray is now worse beyond chance.
    let t = secs(t0, 31.0);
    feed_stable(&g, t, 500, |_| false);
    feed(&g, t, 60, |_| true);
    assert!(g.is_tripped());
    let e = g.last_trip.load_full().expect("evidence");
    assert_eq!(e.reason, Reason::ErrorRate);
    assert!(e.z.is_some_and(|z| z > e.z_needed), "{e:?}");
    assert_eq!((e.stable.requests, e.stable.failures), (500, 0));
    assert!(g.held_since().is_some());
}

#[test]
fn without_comparison_the_bound_alone_trips() {
    let c = Guard {
        compare_to_stable: false,
        ..cfg(0.05, 50)
    };
    let (g, _, t0) = guard_with(c);
    feed_stable(&g, t0, 500, |_| true);
    feed(&g, t0, 50, |_| true);
    assert!(g.is_tripped());
    assert_eq!(g.last_trip.load_full().unwrap().z, None);
}

#[test]
fn a_slow_gray_trips_the_latency_guard() {
    let c = Guard {
        max_latency_ratio: Some(3.0),
        ..cfg(0.05, 50)
    };
    let (g, _, t0) = guard_with(c);
    for _ in 0..100 {
        g.record_stable(false, Some(Duration::from_millis(20)), t0);
    }
    for i in 0..100u64 {
        g.record_gray(
            false,
            Some(Duration::from_millis(100)),
            secs(t0, i as f64 * 0.01),
        );
    }
    assert!(g.is_tripped());
    let e = g.last_trip.load_full().unwrap();
    assert_eq!(e.reason, Reason::Latency);
    let (gp, sp) = (e.gray.p95_ms.unwrap(), e.stable.p95_ms.unwrap());
    assert!(gp > 3.0 * sp, "{gp} vs {sp}");
}

#[test]
fn a_gray_only_slightly_slower_does_not_trip() {
    let c = Guard {
        max_latency_ratio: Some(3.0),
        ..cfg(0.05, 50)
    };
    let (g, _, t0) = guard_with(c);
    for _ in 0..100 {
        g.record_stable(false, Some(Duration::from_millis(40)), t0);
    }
    for i in 0..200u64 {
        g.record_gray(
            false,
            Some(Duration::from_millis(60)),
            secs(t0, i as f64 * 0.01),
        );
    }
    assert!(!g.is_tripped());
}

#[test]
fn probes_failing_like_stable_close_the_guard() {
    let (g, _, t0) = guard_with(cfg(0.05, 50));
    g.trip_at(t0);
    let t = secs(t0, 120.0);
    feed_stable(&g, t, 200, |_| true);
    assert!(g.admit_at(t));
    for _ in 0..MAX_PROBES {
        g.record_gray_at(true, t);
    }
    assert!(!g.is_tripped(), "a shared outage is not gray's fault");
}
