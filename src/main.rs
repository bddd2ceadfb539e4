//! graylane command line: `run`, `check`, `explain`, `demo` (SPEC §7), the release tools
//! `plan-ranges` and `replay` (SPEC §9.4), and `status` across replicas.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue};

use graylane::{explain, Compiled, Config, ExplainRequest, Graylane, Shared};

#[derive(Parser)]
#[command(name = "graylane", version, about = "Gray-release reverse proxy")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with a config file.
    Run {
        /// Path to graylane.yaml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate config and rules, print a summary.
    Check {
        /// Path to graylane.yaml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the routing decision for a request, offline.
    Explain {
        /// Path to graylane.yaml.
        #[arg(long)]
        config: PathBuf,
        /// Listener the request arrives on.
        #[arg(long)]
        listener: String,
        /// Request path (with query).
        #[arg(long)]
        path: String,
        /// Host header.
        #[arg(long)]
        host: Option<String>,
        /// A request header, `name: value` (repeatable; cookies as `cookie: a=b`).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Print the /explain JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the built-in sample with demo upstreams.
    Demo,
    /// What a candidate ruleset would do to logged traffic, against the live rules.
    Replay {
        /// Path to graylane.yaml (its rules_file holds the live rules).
        #[arg(long)]
        config: PathBuf,
        /// The candidate rules file.
        #[arg(long)]
        rules: PathBuf,
        /// graylane's JSON access log (`--log-format json`, target graylane::access).
        #[arg(long)]
        log: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// One table across running replicas (rules sha256 and version, guards, gray share);
    /// exit 1 when they disagree or one does not answer.
    Status {
        /// A replica's admin listener, `http://host:port` (repeatable).
        #[arg(long = "admin", required = true)]
        admins: Vec<String>,
        /// Print JSON: every replica's /status and the disagreements.
        #[arg(long)]
        json: bool,
    },
    /// Plan contiguous UID ranges holding at most a target share of the traffic.
    PlanRanges {
        /// CSV of `uid,requests` lines (e.g. 7-day inbound counts per user).
        #[arg(long)]
        volumes: PathBuf,
        /// The share to stay at or under: `3%` or `0.03`.
        #[arg(long)]
        target: String,
        /// At most this many ranges.
        #[arg(long)]
        max_ranges: Option<usize>,
    },
}

/// mimalloc instead of glibc's malloc: the request path still allocates a few times per
/// request (hyper's codecs, header names outside the standard set), and glibc spent ~8%
/// of a worker's CPU on it in the load benchmark (thread-local free lists beat its arenas).
#[global_allocator]
static ALLOC: graylane::Mimalloc = graylane::Mimalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.cmd {
        Cmd::Run { config } => run(&config),
        // `check` prints the bare `FILE:LINE:COLUMN: message`, as compilers do.
        Cmd::Check { config } => {
            return match check(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Explain {
            config,
            listener,
            path,
            host,
            headers,
            json,
        } => explain_cmd(&config, listener, path, host, &headers, json),
        Cmd::Demo => demo(),
        Cmd::Replay {
            config,
            rules,
            log,
            json,
        } => {
            graylane::tools::replay::run(&config, &rules, &log, json, &mut std::io::stdout().lock())
                .map_err(anyhow::Error::from)
        }
        Cmd::Status { admins, json } => return status_cmd(&admins, json),
        Cmd::PlanRanges {
            volumes,
            target,
            max_ranges,
        } => {
            // Exit 1 with the tool's own message when nothing fits.
            return match graylane::tools::plan_ranges::run(
                &volumes,
                &target,
                max_ranges,
                &mut std::io::stdout().lock(),
            ) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `graylane status`: exit 0 when the replicas agree, 1 when not (or on a usage error).
fn status_cmd(admins: &[String], json: bool) -> ExitCode {
    use graylane::tools::status;
    let result = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        let replicas = rt
            .block_on(status::fetch_all(admins))
            .map_err(|e| e.to_string())?;
        status::print(&replicas, json, &mut std::io::stdout().lock()).map_err(|e| e.to_string())
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: journald and kubectl logs keep escape codes verbatim.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Config and first ruleset, with errors as one `FILE:LINE:COLUMN: message` line.
fn load(config: &Path) -> anyhow::Result<(Config, Compiled)> {
    let cfg = Config::load(config).map_err(anyhow::Error::msg)?;
    let rules = graylane::load_rules(&cfg.rules_file, &cfg.rules_file_display, &cfg.topology())
        .map_err(anyhow::Error::msg)?;
    Ok((cfg, rules))
}

/// Worker 0's runtime: current-thread, like every worker (see `server`); the others are
/// started by the server on their own threads. I/O and signals only: timers are
/// `graylane::timer`'s, and tokio's time driver would cost every park its bookkeeping.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the runtime")
}

fn run(config: &Path) -> anyhow::Result<()> {
    let (cfg, rules) = load(config)?;
    graylane::preflight(&cfg)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let shared = Arc::new(Shared::new(cfg, rules)?);
        serve(shared, |_, _| {}).await
    })
}

/// Binds the traffic listeners and the admin listener, serves both side by side until
/// SIGTERM/SIGINT, drains (SPEC §8).
async fn serve(
    shared: Arc<Shared>,
    on_bound: impl FnOnce(&[std::net::SocketAddr], std::net::SocketAddr),
) -> anyhow::Result<()> {
    let names: Vec<String> = shared
        .config()
        .listeners
        .iter()
        .map(|l| l.name.clone())
        .collect();
    let graylane = Graylane::bind(shared).await?;
    let addrs = graylane.listener_addrs();
    let admin = graylane
        .admin_addr()
        .context("admin listener has no address")?;
    for (name, a) in names.iter().zip(&addrs) {
        tracing::info!(listener = %name, addr = %a, "listening");
    }
    tracing::info!(addr = %admin, "admin listening");
    on_bound(&addrs, admin);
    let clean = graylane.run(shutdown_signal()).await;
    if !clean {
        tracing::warn!("exiting with requests still in flight (drain time ran out)");
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn check(config: &Path) -> anyhow::Result<()> {
    let (cfg, rules) = load(config)?;
    graylane::preflight(&cfg)?;
    println!(
        "config ok: {} listener(s), {} service(s), pools {}",
        cfg.listeners.len(),
        cfg.services.len(),
        cfg.pool_names.join(", ")
    );
    println!(
        "rules ok: {} rule(s), version {}, sha256 {}, {} file(s)",
        rules.rules.len(),
        rules.rules.version().unwrap_or("-"),
        rules.sha256,
        rules.files.len()
    );
    // Expired rules still route: a warning, not an error (exit 0).
    for line in rules.rules.expiry_warnings(std::time::SystemTime::now()) {
        eprintln!("warning: {line}");
    }
    Ok(())
}

fn explain_cmd(
    config: &Path,
    listener: String,
    path: String,
    host: Option<String>,
    raw_headers: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let (cfg, rules) = load(config)?;
    let mut headers = HeaderMap::new();
    for h in raw_headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} must look like 'name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("invalid header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("invalid header value in {h:?}"))?;
        headers.append(name, value);
    }
    if let Some(h) = &host {
        if let Ok(v) = HeaderValue::from_str(h) {
            headers.insert(http::header::HOST, v);
        }
    }
    // Offline: endpoint names are not resolved (they may only exist in the cluster), and
    // every pool counts as healthy.
    let mut cfg = cfg;
    cfg.map_endpoints(|_, _| vec!["127.0.0.1:9".to_owned()]);
    let shared = Shared::new(cfg, rules)?;
    let req = ExplainRequest {
        listener,
        path,
        host,
        headers,
        markers: Vec::new(),
    };
    let v = explain(&shared, &req).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for k in ["service", "pool", "rule", "fallback"] {
            let s = match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                _ => "-".to_owned(),
            };
            println!("{k}: {s}");
        }
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("graylane-demo-{}", std::process::id()));
    let config_path = graylane::demo::write_sample(&dir)
        .with_context(|| format!("cannot write the sample into {}", dir.display()))?;
    let (mut cfg, rules) = load(&config_path)?;
    let rt = runtime()?;
    rt.block_on(async move {
        // Every endpoint of the sample becomes a demo upstream on a free loopback port.
        let mut ups = Vec::new();
        for s in &cfg.services {
            for p in &s.pools {
                let mut eps = Vec::new();
                for _ in &p.endpoints {
                    let a = graylane::demo::spawn_upstream(s.name.clone(), p.name.clone()).await?;
                    eps.push(a.to_string());
                }
                ups.push((s.name.clone(), p.name.clone(), eps));
            }
        }
        cfg.map_endpoints(|s, p| {
            ups.iter()
                .find(|(us, up, _)| us == s && up == p)
                .map(|(_, _, e)| e.clone())
                .unwrap_or_default()
        });
        let shared = Arc::new(Shared::new(cfg, rules)?);
        let served = serve(shared, |addrs, admin| {
            let im = addrs.first().copied();
            let console = addrs.get(1).copied().or(im);
            if let (Some(im), Some(console)) = (im, console) {
                graylane::demo::print_tour(im, console, admin, &dir);
            }
        })
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        served
    })
}
