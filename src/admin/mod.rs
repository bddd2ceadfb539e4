//! The admin listener (SPEC §5): `/metrics`, `/healthz`, `/readyz`, `/rules`,
//! `/explain`, `POST /reload`, the guard switches, and the status page (SPEC §10).
//!
//! - `explain`: `/explain` and `graylane explain`: a decision described without traffic.
//! - `guard`, `rules`: the `/guard`, `/rules`, `/rules/history` and `/shadow` bodies.
//! - `status`: `/status` and the sampled history behind its charts.
//! - `page`: `/`, the status page drawn from `/status`.

mod explain;
mod guard;
mod page;
mod rules;
mod status;

pub(crate) use rules::rules_json;

pub use explain::{explain, ExplainRequest};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::reload::Reloader;
use crate::server::ServerError;
use crate::state::Shared;
use crate::upstream::DownBody;
use explain::explain_params;

/// The admin listener, bound; bound apart from the traffic listeners because it outlives
/// their drain (it closes last).
pub(crate) struct Admin {
    listener: TcpListener,
}

impl Admin {
    /// Binds `admin.bind`.
    pub(crate) async fn bind(addr: SocketAddr) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                name: "admin".into(),
                addr,
                source,
            })?;
        Ok(Self { listener })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves the admin API until `stop` flips.
    pub(crate) async fn serve(
        self,
        shared: Arc<Shared>,
        reloader: Arc<Reloader>,
        stop: watch::Receiver<bool>,
    ) {
        serve(self.listener, shared, reloader, stop).await
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    mut stop: watch::Receiver<bool>,
) {
    let token = match &shared.config.admin.token_file {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(Arc::<str>::from(t.trim())),
            Err(e) => {
                // `run` checks the file before binding; this is a file removed since.
                tracing::error!(file = %p.display(), error = %e, "cannot read admin token_file; POST endpoints refuse everyone");
                Some(Arc::<str>::from(""))
            }
        },
    };
    let history = Arc::new(status::History::new());
    history.sample(&shared);
    let sampler = tokio::spawn(status::sampler(shared.clone(), history.clone()));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    crate::timer::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let ctx = Ctx {
            shared: shared.clone(),
            reloader: reloader.clone(),
            history: history.clone(),
            token: token.clone(),
        };
        conns.spawn(async move {
            let ctx = Arc::new(ctx);
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    conns.abort_all();
    sampler.abort();
}

/// What every admin request may need.
struct Ctx {
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    history: Arc<status::History>,
    token: Option<Arc<str>>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<DownBody> {
    let mut r = Response::new(DownBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<DownBody> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(DownBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(req: Request<Incoming>, ctx: &Ctx) -> Response<DownBody> {
    let (shared, reloader, token) = (&*ctx.shared, &*ctx.reloader, ctx.token.as_deref());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if req.method() == Method::POST {
        if let Some(t) = token {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|given| !t.is_empty() && constant_time_eq(given.trim(), t));
            if !ok {
                let mut r = json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "missing or wrong bearer token"}),
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
        // Drain a small body so keep-alive works; admin POSTs carry none we need.
        let _ = http_body_util::Limited::new(req.into_body(), 64 * 1024)
            .collect()
            .await;
        return match path.as_str() {
            "/reload" => match reloader.reload("POST /reload").await {
                Ok(_) => json_response(StatusCode::OK, &rules_json(shared)),
                Err(msg) => {
                    json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "error": msg }))
                }
            },
            "/guard/trip" | "/guard/reset" => match guard::find(shared, &query) {
                Ok((name, g)) => json_response(StatusCode::OK, &guard::switch(name, g, &path)),
                Err(e) => json_response(StatusCode::NOT_FOUND, &e),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path.as_str() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, shared.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/" => {
            let page = page::render(&status::status(shared, &ctx.history));
            let mut r = text(StatusCode::OK, page);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        "/status" => {
            // Serialized from the typed document, so fields keep their order.
            json_response(StatusCode::OK, &status::status(shared, &ctx.history))
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/rules" => json_response(StatusCode::OK, &rules_json(shared)),
        "/rules/history" => json_response(StatusCode::OK, &rules::history_json(shared)),
        "/shadow" => match rules::shadow_json(shared) {
            Some(v) => json_response(StatusCode::OK, &v),
            None => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "no shadow_rules_file configured" }),
            ),
        },
        "/guard" => match guard::find(shared, &query) {
            Ok((name, g)) => json_response(StatusCode::OK, &guard::status(name, g)),
            Err(e) => json_response(StatusCode::NOT_FOUND, &e),
        },
        "/explain" => {
            let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            match explain_params(shared, &params) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": e })),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
