//! One running graylane, SPEC §8 from start to exit: the traffic server and the admin
//! listener bound side by side, the reload triggers armed, the pools' background tasks
//! started; on shutdown the traffic side drains first (long links last), then the
//! reloaders and background tasks stop, and the admin listener closes last.
//!
//! `main` and the integration tests start graylane through [`Graylane`], so both run
//! exactly this order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::reload::Reloader;
use crate::server::{self, tls, Server, ServerError};
use crate::state::Shared;

/// What `run` refuses at start beyond the YAML and the rules.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin token file cannot be read.
    #[error("cannot read admin token_file {}: {error}", path.display())]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error (in the message, so not also a `source`: a `{:#}` chain would
        /// print it twice).
        error: std::io::Error,
    },
    /// A listener cannot bind, or its TLS files cannot be used.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Checks what `run` would refuse at start besides the files `check` validates: an
/// unreadable admin token file, a TLS certificate or key that cannot be used. A config
/// that passes it starts (DNS names aside: they are resolved at start only).
pub fn preflight(cfg: &Config) -> Result<(), StartError> {
    if let Some(t) = &cfg.admin.token_file {
        std::fs::read_to_string(t).map_err(|error| StartError::TokenFile {
            path: t.clone(),
            error,
        })?;
    }
    server::load_tls(cfg)?;
    Ok(())
}

/// graylane with every socket bound, ready to run.
pub struct Graylane {
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    server: Server,
    admin: Admin,
    /// Re-reads certificates on SIGHUP; aborted at exit.
    tls_task: Option<tokio::task::JoinHandle<()>>,
}

impl Graylane {
    /// Binds the traffic listeners and the admin listener, and arms the reload triggers
    /// (file watcher, SIGHUP): a change made once `bind` returned is not missed.
    pub async fn bind(shared: Arc<Shared>) -> Result<Self, StartError> {
        crate::timer::start();
        let server = Server::bind(shared.clone())?;
        let admin = Admin::bind(shared.config.admin.bind).await?;
        let reloader = Reloader::new(shared.clone());
        reloader.start();
        shared.refresh_rule_states();
        shared.warn_expired();
        let tls_task = server.tls_reloader().on_sighup();
        Ok(Self {
            reloader,
            shared,
            server,
            admin,
            tls_task,
        })
    }

    /// The bound address of each traffic listener, in config order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.server.listener_addrs()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr()
    }

    /// The state every request shares.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The rules reloader (what `POST /reload` and SIGHUP call).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// What re-reads the TLS certificates (SIGHUP does, too).
    pub fn tls_reloader(&self) -> tls::Reloader {
        self.server.tls_reloader()
    }

    /// Serves until `shutdown` resolves, then drains. Returns `true` when every
    /// in-flight request finished within `timeouts.drain`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let Graylane {
            shared,
            reloader,
            server,
            admin,
            tls_task,
        } = self;
        let upstream_tasks = shared.upstreams.spawn_tasks(&shared.config);
        // Worker 0 closes its idle upstream connections like every other worker.
        let sweep = tokio::spawn(crate::upstream::h1::sweep_idle());
        // Ramps step and rules expire with the clock alone: their gauges follow it.
        let ticker = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = crate::timer::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    shared.refresh_rule_states();
                }
            })
        };
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin.serve(shared.clone(), reloader.clone(), admin_stop_rx));

        let clean = server.run(shutdown).await;

        reloader.stop();
        if let Some(t) = tls_task {
            t.abort();
        }
        ticker.abort();
        sweep.abort();
        for t in upstream_tasks {
            t.abort();
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        clean
    }
}
