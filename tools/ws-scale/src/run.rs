//! The run: graylane first, then the peers on the same links and upstreams, each through
//! the same phases (warm-up, open, idle, echo, close) so their figures compare.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::admin::{wait_gauge, websocket_gauge, Gauge};
use crate::configs::{write_graylane_config, write_nginx_config};
use crate::links::{close_all, echo, open_many, EchoStats};
use crate::report::{self, Report, Summary};
use crate::supervisor::{
    cpu_ticks, free_addr, graylane_bin, machine_busy_ticks, nginx_bin, nginx_version,
    open_files_limit, wait_ready, Mem, Proc,
};
use crate::upstream::{echo_upstream, ws_config};
use crate::Opts;

/// File descriptors this process and a proxy hold besides the links (listeners, epoll,
/// stdio, log files, …).
const FD_HEADROOM: u64 = 100;

/// Stable links carry uids from here, gray links `0..N/2`: a proxy without range rules
/// (nginx's `map`) can tell them apart by the number of digits.
const STABLE_UID_BASE: u64 = 1_000_000;

/// Linux `USER_HZ`, the unit of utime and stime in `/proc/PID/stat`.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// How long links stay idle before the second memory reading, so handshake buffers a
/// proxy frees lazily are gone from the figure.
pub(crate) const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// What every phase shares, so graylane and its peers see the same load.
pub(crate) struct Setup {
    /// `(uid, pool)` per link.
    pub(crate) plan: Vec<(u64, &'static str)>,
    pub(crate) concurrency: usize,
    pub(crate) echo_len: Duration,
    pub(crate) ws: WebSocketConfig,
    pub(crate) stable: SocketAddr,
    pub(crate) gray: SocketAddr,
}

/// Where a phase's links go.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// Through a proxy listening here.
    Proxy(SocketAddr),
    /// Straight to the upstream of the link's pool: what the load generator costs alone.
    Direct {
        stable: SocketAddr,
        gray: SocketAddr,
    },
}

impl Target {
    pub(crate) fn addr(&self, pool: &str) -> SocketAddr {
        match *self {
            Target::Proxy(a) => a,
            Target::Direct { gray, .. } if pool == "gray" => gray,
            Target::Direct { stable, .. } => stable,
        }
    }
}

/// One phase's figures.
pub(crate) struct Phase {
    pub(crate) label: String,
    pub(crate) opened: u64,
    pub(crate) open_gray: u64,
    pub(crate) open_took: Duration,
    /// The proxy's memory; `None` straight to the upstreams.
    pub(crate) mem: Option<PhaseMem>,
    pub(crate) echo: EchoStats,
    /// CPU of the proxy during the echo phase, in cores; `None` without a proxy.
    pub(crate) proxy_cores: Option<f64>,
    /// CPU of this process (load generator and upstreams) during the echo phase.
    pub(crate) gen_cores: f64,
    /// CPU of everything else on the machine during the echo phase (other processes,
    /// interrupts): what this run competed with.
    pub(crate) other_cores: f64,
    pub(crate) close_took: Duration,
}

pub(crate) struct PhaseMem {
    pub(crate) before: Mem,
    pub(crate) idle: Mem,
    pub(crate) after_echo: Mem,
    pub(crate) after_close: Mem,
}

impl PhaseMem {
    pub(crate) fn per_link_kib(&self, links: u64) -> f64 {
        (self.idle.rss_kib as f64 - self.before.rss_kib as f64) / links.max(1) as f64
    }

    pub(crate) fn peak_kib(&self) -> u64 {
        [
            &self.before,
            &self.idle,
            &self.after_echo,
            &self.after_close,
        ]
        .iter()
        .map(|m| m.hwm_kib.max(m.rss_kib))
        .max()
        .unwrap_or(0)
    }
}

/// Failed checks are collected rather than returned, so the run still reports every
/// figure it measured.
#[derive(Default)]
pub(crate) struct Checks {
    pub(crate) failed: Vec<String>,
}

impl Checks {
    fn expect(&mut self, ok: bool, what: String) {
        if !ok {
            self.failed.push(what);
        }
    }
}

pub(crate) async fn run(opts: Opts) -> Result<Report, String> {
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let fd_limit = open_files_limit()?;
    let cap = fd_limit.saturating_sub(FD_HEADROOM) / 2;
    let n = opts.links.min(cap);
    if n < 2 {
        return Err(format!(
            "the open-files limit ({fd_limit}) leaves no room for links; run tools/ws-scale/run.sh"
        ));
    }
    let gray_n = n / 2;
    let ws = ws_config();
    let setup = Setup {
        plan: (0..n)
            .map(|i| {
                if i < gray_n {
                    (i, "gray")
                } else {
                    (STABLE_UID_BASE + i, "stable")
                }
            })
            .collect(),
        concurrency: opts.concurrency,
        echo_len: Duration::from_secs_f64(opts.echo_secs),
        ws,
        stable: echo_upstream("stable", ws).await?,
        gray: echo_upstream("gray", ws).await?,
    };
    let mut checks = Checks::default();
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;

    // === graylane ===
    let bin = graylane_bin()?;
    let listen = free_addr()?;
    let admin = free_addr()?;
    write_graylane_config(dir.path(), listen, admin, &setup, gray_n)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("run")
        .arg("--config")
        .arg(dir.path().join("graylane.yaml"))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let mut graylane = Proc::spawn("graylane", cmd, &dir.path().join("graylane.log"), false)?;
    wait_ready(&mut graylane, admin, "/readyz").await?;
    let gl = measure(
        "graylane",
        &setup,
        Target::Proxy(listen),
        Some(&mut graylane),
        Some(admin),
        opts.hold,
        &mut checks,
    )
    .await?;
    graylane.stop();

    // === peers ===
    let mut nginx_note = None;
    let mut peers = Vec::new();
    if opts.peers {
        match nginx_bin() {
            Some(nginx) => {
                let version = nginx_version(&nginx);
                let listen = free_addr()?;
                let ndir = dir.path().join("nginx");
                write_nginx_config(&ndir, listen, &setup, fd_limit)?;
                let mut cmd = Command::new(&nginx);
                cmd.arg("-p")
                    .arg(&ndir)
                    .arg("-c")
                    .arg(ndir.join("nginx.conf"))
                    .arg("-e")
                    .arg(ndir.join("error.log"))
                    .args(["-g", "daemon off;"]);
                let mut proc = Proc::spawn("nginx", cmd, &ndir.join("stderr.log"), true)?;
                wait_ready(&mut proc, listen, "/__ready").await?;
                let p = measure(
                    &version,
                    &setup,
                    Target::Proxy(listen),
                    Some(&mut proc),
                    None,
                    None,
                    &mut checks,
                )
                .await?;
                proc.stop();
                peers.push(p);
            }
            None => nginx_note = Some("nginx not installed: no nginx peer in this run"),
        }
        let direct = Target::Direct {
            stable: setup.stable,
            gray: setup.gray,
        };
        peers.push(
            measure(
                "direct (no proxy)",
                &setup,
                direct,
                None,
                None,
                None,
                &mut checks,
            )
            .await?,
        );
    }

    Ok(report::render(&Summary {
        args: &opts.args,
        asked: opts.links,
        links: n,
        fd_limit,
        nginx_note,
        bin: &bin,
        load_at_start: &load_at_start,
        setup: &setup,
        graylane: &gl,
        peers: &peers,
        checks: &checks,
    }))
}

/// Opens every link through `target`, lets them idle, reads the proxy's memory, echoes,
/// closes. `admin` (graylane only) enables the gauge checks.
async fn measure(
    label: &str,
    setup: &Setup,
    target: Target,
    mut proxy: Option<&mut Proc>,
    admin: Option<SocketAddr>,
    hold: Option<u64>,
    checks: &mut Checks,
) -> Result<Phase, String> {
    let fail = |proxy: &Option<&mut Proc>, msg: String| match proxy {
        Some(p) => p.with_log(msg),
        None => msg,
    };
    let mem = |proxy: &Option<&mut Proc>| proxy.as_ref().map(|p| p.mem()).transpose();
    let failed_before = checks.failed.len();

    // Warm-up: one link through and closed, so lazy setup (upstream clients, metric
    // children, per-thread allocator arenas) is in the baseline, not charged to the links.
    let warm = open_many(&setup.plan[..1], 1, target, setup.ws).await;
    if !warm.errors.is_empty() {
        return Err(fail(
            &proxy,
            format!("{label}: warm-up link failed: {}", warm.errors.join("; ")),
        ));
    }
    let w = echo(warm.links, Duration::from_millis(200)).await;
    if w.stats.count == 0 || w.stats.wrong_pool > 0 {
        return Err(fail(
            &proxy,
            format!(
                "{label}: warm-up link did not echo from its pool ({} ok, {} wrong pool, {} errors)",
                w.stats.count, w.stats.wrong_pool, w.stats.errors
            ),
        ));
    }
    close_all(w.links).await;
    if let Some(admin) = admin {
        wait_gauge(admin, 0, Duration::from_secs(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = mem(&proxy)?;

    // Open every link, then let them idle.
    let opened = open_many(&setup.plan, setup.concurrency, target, setup.ws).await;
    let n = setup.plan.len() as u64;
    let open_n = opened.links.len() as u64;
    checks.expect(
        open_n == n,
        format!(
            "{label}: {open_n} of {n} handshakes succeeded{}",
            first_errors(&opened.errors)
        ),
    );
    if open_n == 0 {
        return Err(fail(
            &proxy,
            format!("{label}: no link opened{}", first_errors(&opened.errors)),
        ));
    }
    let open_gray = opened.links.iter().filter(|l| l.pool == "gray").count() as u64;
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle = mem(&proxy)?;
    if let Some(admin) = admin {
        let g = websocket_gauge(admin).await?;
        let want = Gauge {
            total: open_n,
            gray: open_gray,
            stable: open_n - open_gray,
        };
        checks.expect(
            g == want,
            format!("{label}: gauge while open {g:?}, expected {want:?}"),
        );
    }
    if let (Some(hold), Some(p)) = (hold, proxy.as_ref()) {
        eprintln!(
            "ws-scale: {open_n} links open and idle through {label} (pid {}); holding {hold} s",
            p.pid
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }

    // Echo on every link at once.
    // CPU over the whole call: it runs a little past the phase while the last round-trips
    // come back.
    let me = std::process::id();
    let p0 = proxy.as_ref().map(|p| p.cpu_ticks());
    let (g0, m0, t0) = (cpu_ticks(&[me]), machine_busy_ticks(), Instant::now());
    let echoed = echo(opened.links, setup.echo_len).await;
    let wall = t0.elapsed().as_secs_f64();
    let cores = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_SEC / wall;
    let p1 = proxy.as_ref().map(|p| p.cpu_ticks());
    let (g1, m1) = (cpu_ticks(&[me]), machine_busy_ticks());
    let gen_cores = cores(g1.saturating_sub(g0));
    let proxy_cores = p0.zip(p1).map(|(a, b)| cores(b.saturating_sub(a)));
    let machine_cores = cores(m1.saturating_sub(m0));
    let other_cores = (machine_cores - gen_cores - proxy_cores.unwrap_or(0.0)).max(0.0);
    checks.expect(
        echoed.stats.wrong_pool == 0 && echoed.stats.errors == 0,
        format!(
            "{label}: echo had {} replies from the wrong pool and {} errors",
            echoed.stats.wrong_pool, echoed.stats.errors
        ),
    );
    let after_echo = mem(&proxy)?;

    // Close every link.
    let close_start = Instant::now();
    close_all(echoed.links).await;
    if let Some(admin) = admin {
        let g = wait_gauge(admin, 0, Duration::from_secs(10)).await;
        checks.expect(
            g == Some(0),
            format!("{label}: gauge after close {g:?}, expected Some(0)"),
        );
    }
    let close_took = close_start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_close = mem(&proxy)?;
    if let Some(p) = proxy.as_mut() {
        if let Some(status) = p.exited() {
            checks.expect(false, format!("{label} exited during the run: {status}"));
        }
    }

    if checks.failed.len() > failed_before {
        if let Some(p) = proxy.as_ref() {
            checks
                .failed
                .push(p.with_log(format!("{label} log follows")));
        }
    }

    let mem = match (before, idle, after_echo, after_close) {
        (Some(before), Some(idle), Some(after_echo), Some(after_close)) => Some(PhaseMem {
            before,
            idle,
            after_echo,
            after_close,
        }),
        _ => None,
    };
    Ok(Phase {
        label: label.to_owned(),
        opened: open_n,
        open_gray,
        open_took: opened.took,
        mem,
        echo: echoed.stats,
        proxy_cores,
        gen_cores,
        other_cores,
        close_took,
    })
}

fn first_errors(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = errors.iter().take(3).map(String::as_str).collect();
    format!("; first errors: {}", shown.join("; "))
}
