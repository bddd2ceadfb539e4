//! The guard's question, "is gray worse than stable, right now, beyond chance?", as
//! arithmetic over the two pools' windows (SPEC §9.1).
//!
//! Errors: gray's failure share must exceed `max_error_rate` over at least `min_requests`;
//! with `compare_to_stable` and at least `min_requests` on stable too, it must also be
//! higher than stable's by a one-sided two-proportion z-test:
//!
//! ```text
//! p₁ = f₁/n₁ (gray), p₂ = f₂/n₂ (stable), p = (f₁+f₂)/(n₁+n₂)
//! z  = (p₁ − p₂) / √(p(1−p)(1/n₁ + 1/n₂))       trips when z > Φ⁻¹(confidence)
//! ```
//!
//! so a dependency that fails both pools alike (p₁ ≈ p₂) never trips gray. Latency
//! (`max_latency_ratio: R`): with `min_requests` on both pools, gray's p95 must exceed
//! R × stable's and `min_latency`.

use std::time::SystemTime;

use super::window::Counts;
use crate::config::Guard;

/// Why the guard tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Gray's failure share over the window.
    ErrorRate,
    /// Gray's p95 against stable's.
    Latency,
    /// The half-open probes failed.
    Probes,
    /// `POST /guard/trip`.
    Manual,
}

impl Reason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::ErrorRate => "error_rate",
            Reason::Latency => "latency",
            Reason::Probes => "probes",
            Reason::Manual => "manual",
        }
    }
}

/// What the guard saw when it decided: both pools over the same window, and the test.
#[derive(Debug, Clone)]
pub(crate) struct Evidence {
    pub(crate) reason: Reason,
    pub(crate) at: SystemTime,
    pub(crate) gray: Counts,
    pub(crate) stable: Counts,
    /// The comparison's z, when it applied (stable had `min_requests`).
    pub(crate) z: Option<f64>,
    /// The z the confidence asks for.
    pub(crate) z_needed: f64,
}

/// The configured bounds, with the confidence turned into its z once.
#[derive(Debug, Clone)]
pub(crate) struct Judge {
    max_error_rate: f64,
    min_requests: u64,
    compare: bool,
    pub(crate) z_needed: f64,
    /// `(R, min_latency in ms)` when the latency guard is on.
    latency: Option<(f64, f64)>,
}

/// The error verdict and the comparison's z when it applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ErrorVerdict {
    pub(crate) trips: bool,
    pub(crate) z: Option<f64>,
}

impl Judge {
    pub(crate) fn new(cfg: &Guard) -> Self {
        Self {
            max_error_rate: cfg.max_error_rate,
            min_requests: cfg.min_requests.max(1),
            compare: cfg.compare_to_stable,
            z_needed: inverse_normal(cfg.confidence),
            latency: cfg
                .max_latency_ratio
                .map(|r| (r, cfg.min_latency.as_secs_f64() * 1000.0)),
        }
    }

    pub(crate) fn latency_on(&self) -> bool {
        self.latency.is_some()
    }

    /// Whether gray's failures trip it; `min_gray` is the requests gray needs (fewer for
    /// half-open probes).
    pub(crate) fn errors(&self, gray: &Counts, stable: &Counts, min_gray: u64) -> ErrorVerdict {
        let over_bound = gray.requests >= min_gray
            && gray.failures as f64 > self.max_error_rate * gray.requests as f64;
        if !over_bound {
            return ErrorVerdict {
                trips: false,
                z: None,
            };
        }
        if !self.compare || stable.requests < self.min_requests {
            return ErrorVerdict {
                trips: true,
                z: None,
            };
        }
        let z = two_proportion_z(gray, stable);
        ErrorVerdict {
            trips: z > self.z_needed,
            z: Some(z),
        }
    }

    /// Whether gray's latency trips it.
    pub(crate) fn latency(&self, gray: &Counts, stable: &Counts, min_gray: u64) -> bool {
        let Some((ratio, min_ms)) = self.latency else {
            return false;
        };
        if gray.requests < min_gray || stable.requests < self.min_requests {
            return false;
        }
        match (gray.p95_ms, stable.p95_ms) {
            (Some(g), Some(s)) => g > ratio * s && g > min_ms,
            _ => false,
        }
    }
}

/// The one-sided two-proportion z of gray's failure share over stable's (pooled standard
/// error). 0 when both shares are 0 or 1: nothing tells the pools apart.
pub(crate) fn two_proportion_z(gray: &Counts, stable: &Counts) -> f64 {
    let (n1, n2) = (gray.requests as f64, stable.requests as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return 0.0;
    }
    let (p1, p2) = (gray.failures as f64 / n1, stable.failures as f64 / n2);
    let p = (gray.failures + stable.failures) as f64 / (n1 + n2);
    let se = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        0.0
    } else {
        (p1 - p2) / se
    }
}

/// Φ⁻¹(p), the standard normal quantile, by Acklam's rational approximation (relative
/// error below 1.2e-9 over (0, 1)); `confidence` 0.99 gives 2.326.
pub(crate) fn inverse_normal(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        let q = (-2.0 * q.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail(p)
    } else if p > 1.0 - LOW {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn counts(requests: u64, failures: u64, p95_ms: Option<f64>) -> Counts {
        Counts {
            requests,
            failures,
            p95_ms,
        }
    }

    fn judge(compare: bool, ratio: Option<f64>) -> Judge {
        Judge::new(&Guard {
            max_error_rate: 0.05,
            min_requests: 50,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(120),
            compare_to_stable: compare,
            confidence: 0.99,
            max_latency_ratio: ratio,
            min_latency: Duration::from_millis(50),
        })
    }

    #[test]
    fn quantiles_match_the_table() {
        for (p, z) in [
            (0.5, 0.0),
            (0.9, 1.281_552),
            (0.95, 1.644_854),
            (0.99, 2.326_348),
        ] {
            assert!(
                (inverse_normal(p) - z).abs() < 1e-5,
                "{p}: {}",
                inverse_normal(p)
            );
        }
        assert!((inverse_normal(0.999) - 3.090_232).abs() < 1e-5);
        assert!((inverse_normal(0.01) + 2.326_348).abs() < 1e-5);
    }

    #[test]
    fn failing_alike_does_not_trip_but_worse_than_stable_does() {
        let j = judge(true, None);
        // Both pools fail everything: a shared outage.
        let v = j.errors(&counts(150, 150, None), &counts(3000, 3000, None), 50);
        assert_eq!(
            v,
            ErrorVerdict {
                trips: false,
                z: Some(0.0)
            }
        );
        // Both at 30 %: not worse, however many requests.
        let v = j.errors(&counts(500, 150, None), &counts(5000, 1500, None), 50);
        assert!(!v.trips && v.z.unwrap().abs() < 0.5, "{v:?}");
        // Gray 30 %, stable 1 %: far beyond chance.
        let v = j.errors(&counts(200, 60, None), &counts(2000, 20, None), 50);
        assert!(v.trips && v.z.unwrap() > 10.0, "{v:?}");
        // Gray slightly above stable on little traffic: within chance.
        let v = j.errors(&counts(60, 4, None), &counts(600, 24, None), 50);
        assert!(!v.trips, "{v:?}");
    }

    #[test]
    fn without_enough_stable_or_without_comparing_the_bound_alone_applies() {
        let both_fail = (counts(100, 100, None), counts(100, 100, None));
        assert!(
            judge(false, None)
                .errors(&both_fail.0, &both_fail.1, 50)
                .trips
        );
        let thin_stable = counts(10, 10, None);
        let v = judge(true, None).errors(&both_fail.0, &thin_stable, 50);
        assert_eq!(
            v,
            ErrorVerdict {
                trips: true,
                z: None
            }
        );
        // Below min_requests nothing trips, compared or not.
        assert!(
            !judge(false, None)
                .errors(&counts(49, 49, None), &thin_stable, 50)
                .trips
        );
        // At the bound is not above it.
        assert!(
            !judge(false, None)
                .errors(&counts(100, 5, None), &thin_stable, 50)
                .trips
        );
    }

    #[test]
    fn latency_trips_on_ratio_and_floor() {
        let j = judge(true, Some(3.0));
        let stable = counts(100, 0, Some(20.0));
        assert!(j.latency(&counts(100, 0, Some(100.0)), &stable, 50));
        assert!(!j.latency(&counts(100, 0, Some(50.0)), &stable, 50));
        // Fast services: 3x of 2 ms is noise below min_latency.
        assert!(!j.latency(&counts(100, 0, Some(10.0)), &counts(100, 0, Some(2.0)), 50));
        assert!(!j.latency(&counts(10, 0, Some(500.0)), &stable, 50));
        assert!(!judge(true, None).latency(&counts(100, 0, Some(500.0)), &stable, 50));
    }
}
