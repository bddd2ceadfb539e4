//! The proxies under test as child processes, and the `/proc` readings taken of them and
//! of the machine. Memory and CPU come from `/proc` rather than from the proxies
//! themselves so graylane and nginx are measured the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::admin::http_get;

/// The workspace this tool was built in: where graylane's release build and its `src/`
/// live, two levels above this crate.
pub(crate) fn workspace_root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).unwrap_or(manifest)
}

/// The graylane binary: `GRAYLANE_BIN`, else the release build next to this tool's own
/// build (which follows `CARGO_TARGET_DIR`), else `target/release/graylane` under the
/// workspace. Always a release build: a debug proxy's figures mean nothing.
pub(crate) fn graylane_bin() -> Result<PathBuf, String> {
    let bin = match std::env::var_os("GRAYLANE_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let in_workspace = workspace_root().join("target/release/graylane");
            std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("release/graylane")))
                .filter(|b| b.is_file())
                .unwrap_or(in_workspace)
        }
    };
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "graylane binary not found at {}: run `cargo build --release --bin graylane` \
             first (or `bash tools/ws-scale/run.sh`, which does), or set GRAYLANE_BIN",
            bin.display()
        ))
    }
}

/// nginx for the peer run: `NGINX_BIN`, else on PATH, else `/usr/sbin/nginx`.
pub(crate) fn nginx_bin() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("NGINX_BIN") {
        return Some(PathBuf::from(b));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The report's column label, so a result names the nginx it was measured against.
pub(crate) fn nginx_version(bin: &Path) -> String {
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

/// A proxy under test, stopped when dropped however the run ends.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    child: Option<Child>,
    pub(crate) pid: u32,
    log: PathBuf,
    /// Its children (nginx workers) count in its memory and CPU.
    with_children: bool,
}

impl Proc {
    pub(crate) fn spawn(
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

    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
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

    /// An error message with the tail of the proxy's log, since a failure is rarely
    /// explained by the load generator's side alone.
    pub(crate) fn with_log(&self, msg: String) -> String {
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
    pub(crate) fn mem(&self) -> Result<Mem, String> {
        let mut m = Mem::default();
        for pid in self.pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(|e| format!("cannot read /proc/{pid}/status of {}: {e}", self.name))?;
            m.rss_kib += status_kib(&status, "VmRSS:");
            m.hwm_kib += status_kib(&status, "VmHWM:");
        }
        Ok(m)
    }

    pub(crate) fn cpu_ticks(&self) -> u64 {
        cpu_ticks(&self.pids())
    }

    /// SIGTERM (nginx's fast shutdown) for a process with workers, SIGKILL otherwise;
    /// SIGKILL for anything left after a few seconds. Only the PIDs this run started.
    pub(crate) fn stop(&mut self) {
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
pub(crate) struct Mem {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

pub(crate) fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) async fn wait_ready(p: &mut Proc, addr: SocketAddr, path: &str) -> Result<(), String> {
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
pub(crate) fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

/// utime + stime of the given processes, in clock ticks.
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
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
/// ticks, from `/proc/stat`, so the report shows what else competed for the cores.
pub(crate) fn machine_busy_ticks() -> u64 {
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

/// The soft open-files limit of this process (the proxies inherit it), which caps the
/// links a run can open.
pub(crate) fn open_files_limit() -> Result<u64, String> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| format!("cannot read /proc/self/limits: {e}"))?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no open-files limit in /proc/self/limits".into())
}
