//! TLS termination with rustls (ring provider): PEM certificate and key per listener,
//! ALPN `h2` and `http/1.1`, re-read on SIGHUP without touching open connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::Tls;
use crate::state::Shared;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no PEM certificate.
    #[error("{}: cannot read certificate: {reason}", path.display())]
    Cert {
        /// The certificate file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file is missing, unreadable or holds no PEM private key.
    #[error("{}: cannot read private key: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls rejected the pair (e.g. the key does not match the certificate).
    #[error("{}: {reason}", cert.display())]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

/// One TLS listener's acceptor, swappable so a SIGHUP can bring in a renewed
/// certificate while connections already open keep theirs.
pub(crate) struct TlsTerminator {
    files: Tls,
    acceptor: ArcSwap<TlsAcceptor>,
    /// Kept across reloads: a SIGHUP (which also reloads the rules) must not send every
    /// returning client through a full handshake.
    tickets: Arc<dyn rustls::server::ProducesTickets>,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Loads the certificate and key.
    pub(crate) fn load(files: &Tls) -> Result<Self, TlsError> {
        let tickets = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config {
            cert: files.cert.clone(),
            reason: format!("session tickets: {e}"),
        })?;
        let cfg = server_config(&files.cert, &files.key, &tickets)?;
        Ok(Self {
            files: files.clone(),
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(cfg))),
            tickets,
        })
    }

    /// The acceptor for a new connection.
    pub(crate) fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Re-reads the files; on error the old certificate stays and the error is returned.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let cfg = server_config(&self.files.cert, &self.files.key, &self.tickets)?;
        self.acceptor
            .store(Arc::new(TlsAcceptor::from(Arc::new(cfg))));
        Ok(())
    }
}

/// Re-reads every TLS listener's certificate and key: on SIGHUP (certificates are
/// renewed on disk and the process told, as for nginx), and when asked.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    tls: Arc<[Option<TlsTerminator>]>,
}

impl Reloader {
    pub(super) fn new(shared: Arc<Shared>, tls: Arc<[Option<TlsTerminator>]>) -> Self {
        Self { shared, tls }
    }

    /// Re-reads now. A bad file keeps the old certificate serving and is logged with the
    /// reason.
    pub fn reload(&self) {
        for (l, t) in self.shared.config.listeners.iter().zip(self.tls.iter()) {
            if let Some(t) = t {
                match t.reload() {
                    Ok(()) => tracing::info!(listener = %l.name, "TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(listener = %l.name, "TLS reload rejected, keeping the old certificate: {e}")
                    }
                }
            }
        }
    }

    /// Re-reads on every SIGHUP until the returned task is aborted; `None` without TLS
    /// listeners (or where signals cannot be had).
    pub fn on_sighup(self) -> Option<tokio::task::JoinHandle<()>> {
        if self.tls.iter().all(Option::is_none) {
            return None;
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    return Some(tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            self.reload();
                        }
                    }))
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
            }
        }
        None
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

fn server_config(
    cert: &Path,
    key: &Path,
    tickets: &Arc<dyn rustls::server::ProducesTickets>,
) -> Result<ServerConfig, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_path_buf(),
            reason: "no PEM certificate found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|e| TlsError::Config {
            cert: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Stateless session tickets: a returning browser resumes however many clients came
    // between (the default stateful cache holds 256 sessions per listener), and no worker
    // locks a cache to hand one out. The keys rotate every 6 hours.
    cfg.ticketer = Arc::clone(tickets);
    Ok(cfg)
}
