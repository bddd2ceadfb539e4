//! Scale check for long links: many concurrent idle WebSocket links through a real
//! graylane process, its resident memory per link, then echo round-trips/s across those
//! links. A benchmark, not a test: it prints a markdown report of what it measured.
//!
//! Run it with `bash tools/ws-scale/run.sh [--links N]`, which raises the open-files limit
//! first; README.md next to this crate says how each figure is measured.
//!
//! Exit status: 0 when the run completed, whether or not the targets were met (the report
//! says which); 1 when it could not run or a check failed (handshakes lost, a reply from
//! the wrong pool, a gauge mismatch).

// A client of graylane, not graylane: the root's ban on tokio's timers (graylane's runtimes
// have no time driver) does not apply here.
#![allow(clippy::disallowed_methods)]

mod admin;
mod configs;
mod links;
mod report;
mod run;
mod supervisor;
mod upstream;

use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ws-scale: {e}\n\n{USAGE}");
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
            eprintln!("ws-scale: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run::run(opts)) {
        Ok(report) => {
            println!("{}", report.text);
            if report.checks_failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ws-scale: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "\
usage: bash tools/ws-scale/run.sh [--links N] [--concurrency C] [--echo-secs S] [--no-peers] [--hold S]
  --links N        idle WebSocket links to open (default 10000; capped by the open-files limit)
  --concurrency C  handshakes in flight at once (default 200)
  --echo-secs S    length of each echo phase in seconds (default 5)
  --no-peers       measure graylane only (skip nginx and the links straight to the upstreams)
  --hold S         keep graylane's idle links open S seconds after measuring (to inspect it)
environment: GRAYLANE_BIN overrides the graylane binary (default: the release build of this
workspace, target/release/graylane); NGINX_BIN the nginx binary (default: nginx on PATH or /usr/sbin)";

struct Opts {
    links: u64,
    concurrency: usize,
    echo_secs: f64,
    peers: bool,
    hold: Option<u64>,
    help: bool,
    /// The arguments as given, so the report's command line reproduces the run.
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
