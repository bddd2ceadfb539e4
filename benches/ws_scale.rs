//! Scale check for long links (SPEC §4): many concurrent idle WebSocket links through a
//! real graylane process, its resident memory per link, then echo round-trips/s across
//! those links. A benchmark, not a test: it prints a markdown report of what it measured.
//!
//! Run it with `bash benches/ws_scale.sh [--links N]`: the script raises the open-files
//! limit, builds the release binary and runs `cargo bench --bench ws_scale -- ARGS`.
//!
//! # How it is measured
//!
//! Everything shares the machine's cores, as on a one-box deployment test:
//!
//! - this process: the load generator (tokio-tungstenite clients) and two in-process
//!   WebSocket echo upstreams, one per pool, that answer `{pool}:{text}`;
//! - graylane, the release binary, as a child process (`graylane run --config …`) with
//!   one listener, one service `/` whose stable and gray pools point at the two echo
//!   upstreams, `timeouts: { idle: 60s }`, and a rule sending uids `0..N/2` to gray
//!   (`ranges: ["0-4999"]` for 10,000 links); the other half carry uids from 1,000,000;
//! - the peers, run one after the other on the same links and upstreams: nginx (when
//!   installed) as a WebSocket proxy that picks the pool from the same header with a `map`,
//!   and the links straight to the upstreams (what the load generator manages alone).
//!
//! Memory is the proxy's `VmRSS` from `/proc/PID/status` (nginx: master plus workers):
//! once after a warm-up link has been opened, echoed and closed, once with every link open
//! and idle for two seconds. The difference divided by the links opened is the figure per
//! idle link; it includes what the allocator keeps from the handshakes, which is part of
//! what an operator pays. Kernel socket buffers are not in RSS and not counted.
//!
//! Each link carries its own `xdw-kefu-uid`, so the echo phase also checks routing: a
//! reply must come from the link's pool. Through graylane, the
//! `graylane_websocket_connections` gauge must sum to the links open (per pool, too) and
//! return to 0 after all are closed. The echo phase is closed-loop on every link at once:
//! send a short text frame, wait for its echo, send again, for `--echo-secs`; only
//! round-trips finished within that time count. CPU is utime + stime from `/proc`; the
//! report also shows what everything else on the machine used meanwhile (`/proc/stat`), so
//! a run that shared the cores with other work says so.
//!
//! Each link costs this process two sockets (client and upstream side) and the proxy two,
//! so links are capped at a little under half the open-files limit; the report says so
//! when the cap applied.
//!
//! Exit status: 0 when the run completed, whether or not the targets were met (the report
//! says which); 1 when it could not run or a check failed (handshakes lost, a reply from
//! the wrong pool, a gauge mismatch).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The targets (README reports the figures).
const TARGET_KIB_PER_LINK: f64 = 16.0;
const TARGET_ROUND_TRIPS: f64 = 10_000.0;

/// File descriptors this process and a proxy hold besides the links (listeners, epoll,
/// stdio, log files, …).
const FD_HEADROOM: u64 = 100;

/// Stable links carry uids from here, gray links `0..N/2`: a proxy without range rules
/// (nginx's `map`) can tell them apart by the number of digits.
const STABLE_UID_BASE: u64 = 1_000_000;

/// Linux `USER_HZ`, the unit of utime and stime in `/proc/PID/stat`.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// How long links stay idle before the second memory reading.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

type Ws = WebSocketStream<TcpStream>;

fn main() -> ExitCode {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ws_scale: {e}\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    if opts.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ws_scale: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(report) => {
            println!("{}", report.text);
            if report.checks_failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ws_scale: {e}");
            ExitCode::FAILURE
        }
    }
}

// === options ===

const USAGE: &str = "\
usage: cargo bench --bench ws_scale -- [--links N] [--concurrency C] [--echo-secs S] [--no-peers] [--hold S]
  --links N        idle WebSocket links to open (default 10000; capped by the open-files limit)
  --concurrency C  handshakes in flight at once (default 200)
  --echo-secs S    length of each echo phase in seconds (default 5)
  --no-peers       measure graylane only (skip nginx and the links straight to the upstreams)
  --hold S         keep graylane's idle links open S seconds after measuring (to inspect it)
environment: GRAYLANE_BIN overrides the graylane binary (default: the one cargo built,
target/release/graylane); NGINX_BIN the nginx binary (default: nginx on PATH or /usr/sbin)";

struct Opts {
    links: u64,
    concurrency: usize,
    echo_secs: f64,
    peers: bool,
    hold: Option<u64>,
    help: bool,
    /// The arguments as given, for the report's command line.
    args: Vec<String>,
}

impl Opts {
    fn parse(args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut o = Opts {
            links: 10_000,
            concurrency: 200,
            echo_secs: 5.0,
            peers: true,
            hold: None,
            help: false,
            args: Vec::new(),
        };
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value"))
                    .inspect(|v| o.args.extend([name.to_owned(), v.clone()]))
            };
            match a.as_str() {
                // cargo bench passes --bench to every harness = false target.
                "--bench" => {}
                "--links" => o.links = num(&value("--links")?, "--links")?,
                "--concurrency" => o.concurrency = num(&value("--concurrency")?, "--concurrency")?,
                "--echo-secs" => o.echo_secs = num(&value("--echo-secs")?, "--echo-secs")?,
                "--hold" => o.hold = Some(num(&value("--hold")?, "--hold")?),
                "--no-peers" => {
                    o.peers = false;
                    o.args.push(a);
                }
                "-h" | "--help" => o.help = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.links < 2 || o.concurrency == 0 || o.echo_secs.is_nan() || o.echo_secs <= 0.0 {
            return Err(
                "--links must be at least 2; --concurrency and --echo-secs positive".into(),
            );
        }
        Ok(o)
    }
}

fn num<T: std::str::FromStr>(v: &str, name: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: {v:?} is not a number"))
}

// === the run ===

/// What every phase shares.
struct Setup {
    /// `(uid, pool)` per link.
    plan: Vec<(u64, &'static str)>,
    concurrency: usize,
    echo_len: Duration,
    ws: WebSocketConfig,
    stable: SocketAddr,
    gray: SocketAddr,
}

/// Where a phase's links go.
#[derive(Clone, Copy)]
enum Target {
    /// Through a proxy listening here.
    Proxy(SocketAddr),
    /// Straight to the upstream of the link's pool.
    Direct {
        stable: SocketAddr,
        gray: SocketAddr,
    },
}

impl Target {
    fn addr(&self, pool: &str) -> SocketAddr {
        match *self {
            Target::Proxy(a) => a,
            Target::Direct { gray, .. } if pool == "gray" => gray,
            Target::Direct { stable, .. } => stable,
        }
    }
}

/// One phase's figures.
struct Phase {
    label: String,
    opened: u64,
    open_gray: u64,
    open_took: Duration,
    /// The proxy's memory; `None` straight to the upstreams.
    mem: Option<PhaseMem>,
    echo: EchoStats,
    /// CPU of the proxy during the echo phase, in cores; `None` without a proxy.
    proxy_cores: Option<f64>,
    /// CPU of this process (load generator and upstreams) during the echo phase.
    gen_cores: f64,
    /// CPU of everything else on the machine during the echo phase (other processes,
    /// interrupts): what this run competed with.
    other_cores: f64,
    close_took: Duration,
}

struct PhaseMem {
    before: Mem,
    idle: Mem,
    after_echo: Mem,
    after_close: Mem,
}

impl PhaseMem {
    fn per_link_kib(&self, links: u64) -> f64 {
        (self.idle.rss_kib as f64 - self.before.rss_kib as f64) / links.max(1) as f64
    }

    fn peak_kib(&self) -> u64 {
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

struct Report {
    text: String,
    checks_failed: bool,
}

async fn run(opts: Opts) -> Result<Report, String> {
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let fd_limit = open_files_limit()?;
    let cap = fd_limit.saturating_sub(FD_HEADROOM) / 2;
    let n = opts.links.min(cap);
    if n < 2 {
        return Err(format!(
            "the open-files limit ({fd_limit}) leaves no room for links; run benches/ws_scale.sh"
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

    // === report ===
    let cmd = std::iter::once("bash benches/ws_scale.sh".to_owned())
        .chain(opts.args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\n## ws_scale: {} idle WebSocket links through graylane\n",
        gl.opened
    );
    let _ = writeln!(r, "- command: `{cmd}`");
    let _ = writeln!(r, "- machine: {}", machine(&load_at_start));
    let _ = writeln!(
        r,
        "- on the same cores: the proxy under test, this load generator (tokio-tungstenite) and \
         two in-process echo upstreams; graylane is `{}`",
        bin.display()
    );
    if n < opts.links {
        let _ = writeln!(
            r,
            "- links capped at {n} (asked {}): the open-files limit is {fd_limit} and each link \
             needs 2 fds in the proxy and 2 in the load generator",
            opts.links
        );
    }
    if let Some(note) = nginx_note {
        let _ = writeln!(r, "- {note}");
    }
    let _ = writeln!(r);
    report_table(&mut r, &gl, &peers, &setup);
    let _ = writeln!(r);
    let gl_mem = gl.mem.as_ref().map_or(0.0, |m| m.per_link_kib(gl.opened));
    let rts = gl.echo.count as f64 / setup.echo_len.as_secs_f64();
    let _ = writeln!(
        r,
        "graylane against the targets: {gl_mem:.1} KiB per idle link (target < {TARGET_KIB_PER_LINK:.0}: {}), \
         {rts:.0} echo round-trips/s (target ≥ {TARGET_ROUND_TRIPS:.0}: {})",
        verdict(gl_mem < TARGET_KIB_PER_LINK),
        verdict(rts >= TARGET_ROUND_TRIPS)
    );
    let _ = writeln!(r);
    if checks.failed.is_empty() {
        let _ = writeln!(
            r,
            "checks: all passed (every handshake answered 101, every echo came from the link's \
             pool, graylane_websocket_connections = links open, then 0)"
        );
    } else {
        for f in &checks.failed {
            let _ = writeln!(r, "CHECK FAILED: {f}");
        }
    }
    Ok(Report {
        text: r,
        checks_failed: !checks.failed.is_empty(),
    })
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
            "ws_scale: {open_n} links open and idle through {label} (pid {}); holding {hold} s",
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

fn report_table(r: &mut String, gl: &Phase, peers: &[Phase], setup: &Setup) {
    let phases: Vec<&Phase> = std::iter::once(gl).chain(peers).collect();
    let secs = setup.echo_len.as_secs_f64();
    let row = |r: &mut String, name: &str, cell: &dyn Fn(&Phase) -> String| {
        let cells: Vec<String> = phases.iter().map(|p| cell(p)).collect();
        let _ = writeln!(r, "| {name} | {} |", cells.join(" | "));
    };
    let labels: Vec<&str> = phases.iter().map(|p| p.label.as_str()).collect();
    let _ = writeln!(r, "| measure | {} |", labels.join(" | "));
    let _ = writeln!(r, "|---|{}", "---|".repeat(phases.len()));
    let mem = |f: fn(&PhaseMem) -> u64| {
        move |p: &Phase| p.mem.as_ref().map_or("–".into(), |m| mib(f(m)))
    };
    row(r, "links opened (gray / stable)", &|p| {
        format!(
            "{} ({} / {}) in {:.1} s",
            p.opened,
            p.open_gray,
            p.opened - p.open_gray,
            p.open_took.as_secs_f64()
        )
    });
    row(r, "RSS before (after warm-up)", &mem(|m| m.before.rss_kib));
    row(
        r,
        &format!("RSS, links idle {} s", IDLE_SETTLE.as_secs()),
        &mem(|m| m.idle.rss_kib),
    );
    row(r, "**RSS per idle link**", &|p| {
        p.mem.as_ref().map_or("–".into(), |m| {
            format!("**{:.1} KiB**", m.per_link_kib(p.opened))
        })
    });
    row(
        r,
        &format!("echo round-trips/s ({secs:.0} s, all links)"),
        &|p| format!("{:.0}", p.echo.count as f64 / secs),
    );
    row(r, "round-trip p50 / p99 / max", &|p| p.echo.latency());
    row(r, "proxy CPU during echo", &|p| {
        p.proxy_cores
            .map_or("–".into(), |c| format!("{c:.2} cores"))
    });
    row(r, "load generator + upstreams CPU", &|p| {
        format!("{:.2} cores", p.gen_cores)
    });
    row(r, "everything else on the machine", &|p| {
        format!("{:.2} cores", p.other_cores)
    });
    row(r, "RSS after echo", &mem(|m| m.after_echo.rss_kib));
    row(r, "RSS after all closed", &|p| {
        p.mem.as_ref().map_or("–".into(), |m| {
            format!(
                "{} (closed in {:.1} s)",
                mib(m.after_close.rss_kib),
                p.close_took.as_secs_f64()
            )
        })
    });
    row(r, "peak RSS (VmHWM)", &mem(PhaseMem::peak_kib));
}

#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn expect(&mut self, ok: bool, what: String) {
        if !ok {
            self.failed.push(what);
        }
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn first_errors(errors: &[String]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = errors.iter().take(3).map(String::as_str).collect();
    format!("; first errors: {}", shown.join("; "))
}

// === the proxies, as child processes ===

/// The graylane binary: `GRAYLANE_BIN`, else the one cargo built for this bench, else
/// `target/release/graylane` under the crate.
fn graylane_bin() -> Result<PathBuf, String> {
    let bin = std::env::var_os("GRAYLANE_BIN")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_graylane").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/graylane"));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "graylane binary not found at {}: run `cargo build --release` first \
             (or `bash benches/ws_scale.sh`, which does), or set GRAYLANE_BIN",
            bin.display()
        ))
    }
}

/// nginx for the peer run: `NGINX_BIN`, else on PATH, else `/usr/sbin/nginx`.
fn nginx_bin() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("NGINX_BIN") {
        return Some(PathBuf::from(b));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .strip_prefix("nginx version: ")
                .map(|v| v.replace('/', " "))
        })
        .unwrap_or_else(|| "nginx".into())
}

/// A proxy under test, stopped when dropped however the bench ends.
struct Proc {
    name: &'static str,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    /// Its children (nginx workers) count in its memory and CPU.
    with_children: bool,
}

impl Proc {
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        with_children: bool,
    ) -> Result<Self, String> {
        if let Some(d) = log.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let log_file = std::fs::File::create(log).map_err(|e| format!("log file: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Self {
            name,
            pid: child.id(),
            child: Some(child),
            log: log.to_owned(),
            with_children,
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process and, for nginx, its workers.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        if self.with_children {
            pids.extend(children_of(self.pid));
        }
        pids
    }

    /// An error message with the tail of the proxy's log.
    fn with_log(&self, msg: String) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            msg
        } else {
            format!("{msg}\n--- {} log (last lines) ---\n{tail}", self.name)
        }
    }

    /// VmRSS and VmHWM, summed over the process and its workers.
    fn mem(&self) -> Result<Mem, String> {
        let mut m = Mem::default();
        for pid in self.pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(|e| format!("cannot read /proc/{pid}/status of {}: {e}", self.name))?;
            m.rss_kib += status_kib(&status, "VmRSS:");
            m.hwm_kib += status_kib(&status, "VmHWM:");
        }
        Ok(m)
    }

    fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&self.pids())
    }

    /// SIGTERM (nginx's fast shutdown) for a process with workers, SIGKILL otherwise;
    /// SIGKILL for anything left after a few seconds. Only the PIDs this bench started.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let workers = if self.with_children {
            children_of(self.pid)
        } else {
            Vec::new()
        };
        if self.with_children {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        for w in workers {
            // Still the worker we saw (its command line), not a reused PID.
            let cmdline = std::fs::read(format!("/proc/{w}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"nginx: worker") {
                let _ = Command::new("kill")
                    .args(["-KILL", &w.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// PIDs whose parent is `pid`, from `/proc/*/stat`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

#[derive(Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn write_graylane_config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    setup: &Setup,
    gray_n: u64,
) -> Result<(), String> {
    let (stable, gray) = (setup.stable, setup.gray);
    // Long links do not count against max_connections today; the limit is raised anyway
    // so the bench measures memory, not a connection cap.
    let max_conn = setup.plan.len() * 2 + 1000;
    let config = format!(
        "\
listeners:
  - name: ws
    bind: \"{listen}\"
admin: {{ bind: \"{admin}\" }}
rules_file: rules.yaml
services:
  - name: im
    match: {{ path_prefix: / }}
    pools:
      stable: {{ endpoints: [\"{stable}\"] }}
      gray: {{ endpoints: [\"{gray}\"] }}
timeouts: {{ idle: 60s }}
limits: {{ max_connections: {max_conn} }}
"
    );
    let rules = format!(
        "\
version: ws-scale
rules:
  - name: first-half-gray
    when: {{ uid: {{ ranges: [\"0-{}\"] }} }}
    route: gray
",
        gray_n - 1
    );
    std::fs::write(dir.join("graylane.yaml"), config)
        .and_then(|()| std::fs::write(dir.join("rules.yaml"), rules))
        .map_err(|e| format!("cannot write graylane config: {e}"))
}

/// nginx doing graylane's job for this bench: the pool from `xdw-kefu-uid` (gray uids
/// have at most six digits, stable ones seven), WebSocket upgrade, long read timeouts so
/// idle links stay open, as many workers as graylane has (one per core).
fn write_nginx_config(
    dir: &Path,
    listen: SocketAddr,
    setup: &Setup,
    fd_limit: u64,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let d = dir.display();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (stable, gray) = (setup.stable, setup.gray);
    let conf = format!(
        "\
worker_processes {workers};
worker_rlimit_nofile {fd_limit};
pid {d}/nginx.pid;
events {{ worker_connections {fd_limit}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_xdw_kefu_uid $pool {{
        \"~^[0-9]{{1,6}}$\" gray;
        default stable;
    }}
    upstream stable {{ server {stable}; }}
    upstream gray {{ server {gray}; }}
    server {{
        listen {listen} backlog=4096;
        location = /__ready {{ return 200 \"ready\\n\"; }}
        location / {{
            proxy_pass http://$pool;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf)
        .map_err(|e| format!("cannot write nginx config: {e}"))
}

async fn wait_ready(p: &mut Proc, addr: SocketAddr, path: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = p.exited() {
            return Err(p.with_log(format!("{} exited during start-up: {status}", p.name)));
        }
        if let Ok((200, _)) = http_get(addr, path).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(p.with_log(format!("{} not ready within 15 s", p.name)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound and released; the proxy binds it right after).
fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

// === admin ===

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let go = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .map_err(|_| format!("{addr} did not answer within 5 s"))?
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Gauge {
    total: u64,
    gray: u64,
    stable: u64,
}

/// Sums `graylane_websocket_connections` over its label sets.
async fn websocket_gauge(admin: SocketAddr) -> Result<Gauge, String> {
    let (status, body) = http_get(admin, "/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    let mut g = Gauge::default();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("graylane_websocket_connections{") else {
            continue;
        };
        let v = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        g.total += v;
        if rest.contains("pool=\"gray\"") {
            g.gray += v;
        } else if rest.contains("pool=\"stable\"") {
            g.stable += v;
        }
    }
    Ok(g)
}

/// Polls the gauge until it reads `want` or `within` passes; returns the last reading.
async fn wait_gauge(admin: SocketAddr, want: u64, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    loop {
        let got = websocket_gauge(admin).await.ok().map(|g| g.total);
        if got == Some(want) || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// === the echo upstreams ===

/// Small buffers on both ends: this process holds twice as many sockets as the proxy.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// A WebSocket upstream that answers every text frame with `{name}:{text}`.
async fn echo_upstream(name: &'static str, cfg: WebSocketConfig) -> Result<SocketAddr, String> {
    // A deep accept queue: a dropped SYN costs the proxy a 1 s retransmit, which is its
    // default connect timeout.
    let l = tokio::net::TcpSocket::new_v4()
        .and_then(|s| {
            s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            s.listen(4096)
        })
        .map_err(|e| format!("upstream bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let s = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("ws_scale: {name} upstream accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(s, Some(cfg)).await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    let reply = match m {
                        Message::Text(t) => Message::text(format!("{name}:{t}")),
                        Message::Binary(b) => Message::Binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
                // Flush the answer to the client's close (tungstenite queued it) and hang up.
                let _ = ws.close(None).await;
            });
        }
    });
    Ok(addr)
}

// === links ===

struct Link {
    pool: &'static str,
    ws: Ws,
}

struct Opened {
    links: Vec<Link>,
    errors: Vec<String>,
    took: Duration,
}

/// Opens a link per `(uid, pool)`, `concurrency` handshakes at a time.
async fn open_many(
    plan: &[(u64, &'static str)],
    concurrency: usize,
    target: Target,
    cfg: WebSocketConfig,
) -> Opened {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    for &(uid, pool) in plan {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let addr = target.addr(pool);
        set.spawn(async move {
            let r = open_link(addr, uid, cfg).await;
            drop(permit);
            r.map(|ws| Link { pool, ws })
        });
    }
    let mut links = Vec::with_capacity(plan.len());
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(l)) => links.push(l),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    Opened {
        links,
        errors,
        took: start.elapsed(),
    }
}

async fn open_link(addr: SocketAddr, uid: u64, cfg: WebSocketConfig) -> Result<Ws, String> {
    let go = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut req = format!("ws://{addr}/im")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert("xdw-kefu-uid", http::HeaderValue::from(uid));
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!("handshake answered {}", resp.status()));
        }
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(15), go)
        .await
        .map_err(|_| "handshake took over 15 s".to_owned())?
}

#[derive(Default)]
struct EchoStats {
    /// Round-trips completed within the phase.
    count: u64,
    /// Replies that came from the other pool's upstream.
    wrong_pool: u64,
    errors: u64,
    /// Round-trip times in microseconds.
    latencies_us: Vec<u32>,
}

impl EchoStats {
    fn merge(&mut self, o: EchoStats) {
        self.count += o.count;
        self.wrong_pool += o.wrong_pool;
        self.errors += o.errors;
        self.latencies_us.extend(o.latencies_us);
    }

    fn latency(&self) -> String {
        let mut l = self.latencies_us.clone();
        if l.is_empty() {
            return "n/a".into();
        }
        l.sort_unstable();
        let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        format!("{:.0} / {:.0} / {:.0} ms", at(0.5), at(0.99), at(1.0))
    }
}

struct Echoed {
    links: Vec<Link>,
    stats: EchoStats,
}

/// Closed loop on every link at once: send a short text frame, wait for its echo, repeat,
/// until `len` has passed. Round-trips that finish after the deadline are not counted.
async fn echo(links: Vec<Link>, len: Duration) -> Echoed {
    let deadline = Instant::now() + len;
    let mut set = JoinSet::new();
    for (i, mut link) in links.into_iter().enumerate() {
        set.spawn(async move {
            let mut st = EchoStats::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let msg = format!("{i}:{seq}");
                let sent = Instant::now();
                if link.ws.send(Message::text(msg.clone())).await.is_err() {
                    st.errors += 1;
                    break;
                }
                let reply = tokio::time::timeout_at(deadline + Duration::from_secs(5), async {
                    loop {
                        match link.ws.next().await {
                            Some(Ok(Message::Text(t))) => return Some(t),
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                            Some(Ok(_)) => continue,
                        }
                    }
                })
                .await;
                let done = Instant::now();
                match reply {
                    Ok(Some(t)) => {
                        let from_own_pool = t
                            .as_str()
                            .strip_prefix(link.pool)
                            .and_then(|r| r.strip_prefix(':'))
                            == Some(msg.as_str());
                        if !from_own_pool {
                            st.wrong_pool += 1;
                        } else if done <= deadline {
                            st.count += 1;
                            let us = (done - sent).as_micros().min(u32::MAX as u128) as u32;
                            st.latencies_us.push(us);
                        }
                    }
                    _ => {
                        st.errors += 1;
                        break;
                    }
                }
            }
            (link, st)
        });
    }
    let mut links = Vec::with_capacity(set.len());
    let mut stats = EchoStats::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((l, st)) => {
                links.push(l);
                stats.merge(st);
            }
            Err(_) => stats.errors += 1,
        }
    }
    Echoed { links, stats }
}

/// Closes every link with a Close frame and waits (briefly) for the other side's answer.
async fn close_all(links: Vec<Link>) {
    let mut set = JoinSet::new();
    for mut link in links {
        set.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = link.ws.close(None).await;
                while let Some(Ok(_)) = link.ws.next().await {}
            })
            .await;
        });
    }
    while set.join_next().await.is_some() {}
}

// === the machine ===

/// utime + stime of the given processes, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the parenthesised command name; utime and stime are the 14th
            // and 15th of the whole line.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            tick(11) + tick(12)
        })
        .sum()
}

/// CPU time the whole machine spent busy (user, nice, system, irq, softirq), in clock
/// ticks, from `/proc/stat`.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or("");
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum()
}

/// The soft open-files limit of this process (the proxies inherit it).
fn open_files_limit() -> Result<u64, String> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| format!("cannot read /proc/self/limits: {e}"))?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no open-files limit in /proc/self/limits".into())
}

/// `load_at_start`: the 1-minute load average before the bench added its own, so a busy
/// machine shows in the report.
fn machine(load_at_start: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .map(|m| status_kib(&m, "MemTotal:"))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let graylane = if std::env::var_os("GRAYLANE_BIN").is_some() {
        "graylane from GRAYLANE_BIN".to_owned()
    } else {
        let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = git(&["status", "--porcelain", "--untracked-files=no", "src"])
            .is_some_and(|s| !s.is_empty());
        let dirty = if dirty {
            " with uncommitted src/ changes"
        } else {
            ""
        };
        format!("graylane at {commit}{dirty}")
    };
    format!(
        "{cores} × {model}, {:.0} GiB RAM, Linux {}, load average {} at the start; {graylane}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        load_at_start
    )
}
