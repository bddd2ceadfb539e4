//! graylane-floor: the least work an HTTP/1.1 proxy can do for the load benchmark's
//! routing (uid from the `xdw-kefu-uid` header, else its cookie; 10000000–10499999 to
//! gray; hop-by-hop fields out, `x-forwarded-for`/`-proto` in), with nothing else: no
//! rules engine, metrics, log, limits, timeouts, retries or pool sharing. It measures the
//! two levers graylane's HTTP/1.1 path has left, side by side with graylane and the peers
//! (`benches/load/run.sh --floor`, `benches/load/instructions.sh --floor`):
//!
//! - its user time is the floor of a lean path (the received head edited into the
//!   upstream write, no header map) on the same runtime;
//! - `--io uring` runs the same steps on io_uring (monoio), `--eager-read` tries a read
//!   straight after each write, `--io batch` sends the writes of a wake-up through
//!   io_uring in one system call (reads stay on epoll): what is left of the kernel's
//!   share to win.
//!
//! Usage: graylane-floor --listen ADDR --stable ADDR --gray ADDR [--io epoll|batch|uring]
//!        [--eager-read]

mod batch;
mod epoll;
mod head;
mod uring;

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut listen = None;
    let mut stable = None;
    let mut gray = None;
    let mut io = String::from("epoll");
    let mut eager = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut addr = |what: &str| -> Option<SocketAddr> {
            let v = args.next()?;
            v.parse()
                .map_err(|e| eprintln!("graylane-floor: {what} {v}: {e}"))
                .ok()
        };
        match a.as_str() {
            "--listen" => listen = addr("--listen"),
            "--stable" => stable = addr("--stable"),
            "--gray" => gray = addr("--gray"),
            "--io" => io = args.next().unwrap_or_default(),
            "--eager-read" => eager = true,
            _ => {
                eprintln!("graylane-floor: unknown argument {a}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(listen), Some(stable), Some(gray)) = (listen, stable, gray) else {
        eprintln!("usage: graylane-floor --listen ADDR --stable ADDR --gray ADDR [--io epoll|batch|uring] [--eager-read]");
        return ExitCode::from(2);
    };
    let r = match io.as_str() {
        "epoll" => epoll::run(listen, [stable, gray], eager, false),
        "batch" if !eager => epoll::run(listen, [stable, gray], eager, true),
        "uring" if !eager => uring::run(listen, [stable, gray]),
        _ => {
            eprintln!(
                "graylane-floor: --io takes epoll, batch or uring (--eager-read: epoll only)"
            );
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graylane-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
