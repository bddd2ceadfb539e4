//! The markdown report: one column per proxy so graylane reads against its peers, plus
//! the machine it ran on, since figures from a shared or busy box are not comparable.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::run::{Checks, Phase, PhaseMem, Setup, IDLE_SETTLE};
use crate::supervisor::{status_kib, workspace_root};

/// The targets README reports against: a cheap idle link is what lets one box hold an IM
/// fleet's connections, and echo throughput shows the links still carry traffic.
const TARGET_KIB_PER_LINK: f64 = 16.0;
const TARGET_ROUND_TRIPS: f64 = 10_000.0;

pub(crate) struct Report {
    pub(crate) text: String,
    /// A failed check makes the exit status 1 even though the report still prints.
    pub(crate) checks_failed: bool,
}

/// What a finished run hands to the report.
pub(crate) struct Summary<'a> {
    /// The arguments as given, for the report's command line.
    pub(crate) args: &'a [String],
    /// Links asked for; more than `links` when the open-files limit capped them.
    pub(crate) asked: u64,
    pub(crate) links: u64,
    pub(crate) fd_limit: u64,
    pub(crate) nginx_note: Option<&'a str>,
    pub(crate) bin: &'a Path,
    pub(crate) load_at_start: &'a str,
    pub(crate) setup: &'a Setup,
    pub(crate) graylane: &'a Phase,
    pub(crate) peers: &'a [Phase],
    pub(crate) checks: &'a Checks,
}

pub(crate) fn render(s: &Summary<'_>) -> Report {
    let gl = s.graylane;
    let cmd = std::iter::once("bash tools/ws-scale/run.sh".to_owned())
        .chain(s.args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\n## ws-scale: {} idle WebSocket links through graylane\n",
        gl.opened
    );
    let _ = writeln!(r, "- command: `{cmd}`");
    let _ = writeln!(r, "- machine: {}", machine(s.load_at_start));
    let _ = writeln!(
        r,
        "- on the same cores: the proxy under test, this load generator (tokio-tungstenite) and \
         two in-process echo upstreams; graylane is `{}`",
        s.bin.display()
    );
    if s.links < s.asked {
        let _ = writeln!(
            r,
            "- links capped at {} (asked {}): the open-files limit is {} and each link \
             needs 2 fds in the proxy and 2 in the load generator",
            s.links, s.asked, s.fd_limit
        );
    }
    if let Some(note) = s.nginx_note {
        let _ = writeln!(r, "- {note}");
    }
    let _ = writeln!(r);
    report_table(&mut r, gl, s.peers, s.setup);
    let _ = writeln!(r);
    let gl_mem = gl.mem.as_ref().map_or(0.0, |m| m.per_link_kib(gl.opened));
    let rts = gl.echo.count as f64 / s.setup.echo_len.as_secs_f64();
    let _ = writeln!(
        r,
        "graylane against the targets: {gl_mem:.1} KiB per idle link (target < {TARGET_KIB_PER_LINK:.0}: {}), \
         {rts:.0} echo round-trips/s (target ≥ {TARGET_ROUND_TRIPS:.0}: {})",
        verdict(gl_mem < TARGET_KIB_PER_LINK),
        verdict(rts >= TARGET_ROUND_TRIPS)
    );
    let _ = writeln!(r);
    if s.checks.failed.is_empty() {
        let _ = writeln!(
            r,
            "checks: all passed (every handshake answered 101, every echo came from the link's \
             pool, graylane_websocket_connections = links open, then 0)"
        );
    } else {
        for f in &s.checks.failed {
            let _ = writeln!(r, "CHECK FAILED: {f}");
        }
    }
    Report {
        text: r,
        checks_failed: !s.checks.failed.is_empty(),
    }
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

/// `load_at_start`: the 1-minute load average before the run added its own, so a busy
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
            .current_dir(workspace_root())
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
