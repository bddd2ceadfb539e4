//! `graylane status --admin URL...`: one table across replicas, from each one's
//! `GET /status`, and whether they agree.
//!
//! Replicas share nothing at run time (SPEC §11): the same files give the same decisions,
//! so replicas that serve different rules (a ConfigMap update that has not reached one
//! pod, a pod whose reload failed) are the thing to catch. A guard, on the other hand,
//! judges each replica's own traffic; replicas whose guards disagree route one user
//! differently depending on the replica the SLB picks, which an SRE resolves by tripping
//! or resetting the guard on every replica. Both count as disagreement.

use std::io::{self, Write};
use std::time::Duration;

use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// How long one replica may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// `/status` bodies are a few KiB per service; anything bigger is not graylane.
const MAX_BODY: usize = 8 << 20;

/// Why `graylane status` could not run at all (an unreachable replica is a row, not this).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// An `--admin` value that is not an `http://host:port[/prefix]` URL.
    #[error("--admin {0:?}: {1}")]
    BadUrl(String, &'static str),
    /// No `--admin` given.
    #[error("give at least one --admin URL")]
    NoReplica,
    /// The output could not be written.
    #[error("writing the output: {0}")]
    Write(#[from] io::Error),
}

/// What one replica said, or why it said nothing.
#[derive(Debug)]
pub struct Replica {
    /// The `--admin` value as given.
    pub url: String,
    /// The `/status` document, or the error reaching it.
    pub status: Result<Value, String>,
}

impl Replica {
    fn rules(&self, key: &str) -> Option<String> {
        let v = self.status.as_ref().ok()?.get("rules")?.get(key)?;
        Some(v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    }

    /// `(service, tripped)` for each service with a guard.
    fn guards(&self) -> Vec<(String, bool)> {
        self.services()
            .iter()
            .filter_map(|s| {
                let g = s.get("guard").filter(|g| !g.is_null())?;
                Some((name(s), g.get("tripped").and_then(Value::as_bool)?))
            })
            .collect()
    }

    fn services(&self) -> Vec<Value> {
        self.status
            .as_ref()
            .ok()
            .and_then(|s| s.get("services"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

fn name(s: &Value) -> String {
    s.get("name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// The `/status` URL of an `--admin` value: `http://host:port`, `host:port`, or a URL with
/// a path prefix (an ingress or `kubectl proxy` path), to which `/status` is appended.
pub fn status_uri(admin: &str) -> Result<Uri, StatusError> {
    let bad = |why| StatusError::BadUrl(admin.to_owned(), why);
    let with_scheme = if admin.contains("://") {
        admin.to_owned()
    } else {
        format!("http://{admin}")
    };
    let uri: Uri = with_scheme.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// (the admin listener speaks plain HTTP)"));
    }
    let authority = uri.authority().ok_or(bad("no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("no port (the admin listener's, e.g. :9901)"));
    }
    let prefix = uri.path().trim_end_matches('/');
    format!("http://{authority}{prefix}/status")
        .parse()
        .map_err(|_| bad("not a URL"))
}

/// Fetches `/status` from every replica at once.
pub async fn fetch_all(admins: &[String]) -> Result<Vec<Replica>, StatusError> {
    if admins.is_empty() {
        return Err(StatusError::NoReplica);
    }
    let uris = admins
        .iter()
        .map(|a| status_uri(a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, uri) in uris.into_iter().enumerate() {
        tasks.spawn(async move {
            let r = crate::timer::timeout(TIMEOUT, fetch(&uri)).await;
            (
                i,
                r.unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}"))),
            )
        });
    }
    let mut out: Vec<Replica> = admins
        .iter()
        .map(|a| Replica {
            url: a.clone(),
            status: Err("not asked".into()),
        })
        .collect();
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, status)) = done {
            if let Some(r) = out.get_mut(i) {
                r.status = status;
            }
        }
    }
    Ok(out)
}

async fn fetch(uri: &Uri) -> Result<Value, String> {
    let authority = uri.authority().ok_or("no host")?;
    let port = authority.port_u16().ok_or("no port")?;
    let stream = TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get(uri.clone())
        .header(http::header::HOST, authority.as_str())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let code = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !code.is_success() {
        return Err(format!(
            "answered {code} (not graylane's admin listener, or too old)"
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not /status JSON: {e}"))
}

/// What the replicas disagree on, one line each; empty when they agree.
pub fn disagreements(replicas: &[Replica]) -> Vec<String> {
    let mut out = Vec::new();
    for r in replicas {
        if let Err(e) = &r.status {
            out.push(format!("{} did not answer: {e}", r.url));
        }
    }
    let up: Vec<&Replica> = replicas.iter().filter(|r| r.status.is_ok()).collect();
    for key in ["sha256", "version"] {
        let mut seen: Vec<(String, Vec<&str>)> = Vec::new();
        for r in &up {
            let v = r.rules(key).unwrap_or_else(|| "null".into());
            match seen.iter_mut().find(|(x, _)| *x == v) {
                Some((_, urls)) => urls.push(&r.url),
                None => seen.push((v, vec![&r.url])),
            }
        }
        if seen.len() > 1 {
            let parts: Vec<String> = seen
                .iter()
                .map(|(v, urls)| format!("{} on {}", short(v), urls.join(", ")))
                .collect();
            out.push(format!("rules {key} differs: {}", parts.join("; ")));
        }
    }
    let mut services: Vec<String> = up
        .iter()
        .flat_map(|r| r.guards().into_iter().map(|(s, _)| s))
        .collect();
    services.sort();
    services.dedup();
    for svc in services {
        let tripped: Vec<&str> = up
            .iter()
            .filter(|r| r.guards().iter().any(|(s, t)| *s == svc && *t))
            .map(|r| r.url.as_str())
            .collect();
        if !tripped.is_empty() && tripped.len() < up.len() {
            out.push(format!(
                "guard of {svc} tripped on {} of {} replicas ({}): trip or reset it on all",
                tripped.len(),
                up.len(),
                tripped.join(", ")
            ));
        }
    }
    out
}

fn short(v: &str) -> &str {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        &v[..12]
    } else {
        v
    }
}

/// Prints the table (or, with `json`, one JSON document) and says whether the replicas
/// agree.
pub fn print(replicas: &[Replica], json: bool, out: &mut impl Write) -> Result<bool, StatusError> {
    let problems = disagreements(replicas);
    if json {
        let rows: Vec<Value> = replicas
            .iter()
            .map(|r| match &r.status {
                Ok(s) => serde_json::json!({ "admin": r.url, "status": s }),
                Err(e) => serde_json::json!({ "admin": r.url, "error": e }),
            })
            .collect();
        let doc = serde_json::json!({ "agree": problems.is_empty(), "problems": problems, "replicas": rows });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        )?;
        return Ok(problems.is_empty());
    }
    let mut rows = vec![[
        "replica",
        "version",
        "sha256",
        "loaded_at",
        "last_error",
        "guards",
        "gray share",
    ]
    .map(str::to_owned)];
    for r in replicas {
        rows.push(row(r));
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    if problems.is_empty() {
        writeln!(out, "\n{} replicas agree.", replicas.len())?;
    } else {
        writeln!(out)?;
        for p in &problems {
            writeln!(out, "DISAGREE: {p}")?;
        }
    }
    Ok(problems.is_empty())
}

fn row(r: &Replica) -> [String; 7] {
    let Ok(_) = &r.status else {
        let e = r.status.as_ref().err().cloned().unwrap_or_default();
        return [
            r.url.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("unreachable: {e}"),
            "-".into(),
            "-".into(),
        ];
    };
    let guards: Vec<String> = r
        .services()
        .iter()
        .filter_map(|s| {
            let state = s.get("guard")?.get("state")?.as_str()?;
            Some(format!("{}={state}", name(s)))
        })
        .collect();
    let shares: Vec<String> = r
        .services()
        .iter()
        .map(|s| {
            let share = s
                .get("gray_share")
                .and_then(Value::as_f64)
                .map_or("-".to_owned(), |v| format!("{:.1}%", v * 100.0));
            format!("{}={share}", name(s))
        })
        .collect();
    let last_error = r.rules("last_error").filter(|e| e != "null");
    [
        r.url.clone(),
        r.rules("version").unwrap_or_default(),
        short(&r.rules("sha256").unwrap_or_default()).to_owned(),
        r.rules("loaded_at").unwrap_or_default(),
        last_error.map_or("-".into(), |e| e.replace('\n', " ")),
        if guards.is_empty() {
            "-".into()
        } else {
            guards.join(" ")
        },
        shares.join(" "),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica(url: &str, sha: &str, version: &str, tripped: bool) -> Replica {
        Replica {
            url: url.into(),
            status: Ok(json!({
                "rules": { "sha256": sha, "version": version, "loaded_at": "2026-12-06T07:00:00Z", "last_error": null },
                "services": [
                    { "name": "chat", "gray_share": 0.2,
                      "guard": { "state": if tripped { "open" } else { "closed" }, "tripped": tripped } },
                    { "name": "static", "gray_share": null, "guard": null },
                ],
            })),
        }
    }

    #[test]
    fn urls_take_a_prefix_and_need_a_port() {
        let u = |s: &str| status_uri(s).map(|u| u.to_string());
        assert_eq!(
            u("127.0.0.1:9901").ok().as_deref(),
            Some("http://127.0.0.1:9901/status")
        );
        assert_eq!(
            u("http://h:9901/").ok().as_deref(),
            Some("http://h:9901/status")
        );
        assert_eq!(
            u("http://localhost:8001/api/v1/namespaces/gl/pods/p-0:9901/proxy/")
                .ok()
                .as_deref(),
            Some("http://localhost:8001/api/v1/namespaces/gl/pods/p-0:9901/proxy/status")
        );
        assert!(u("https://h:9901").is_err());
        assert!(u("h").is_err());
    }

    #[test]
    fn agreement_is_sha_version_and_guards() {
        let a = [
            replica("a", "s1", "v1", false),
            replica("b", "s1", "v1", false),
        ];
        assert!(disagreements(&a).is_empty());
        let b = [
            replica("a", "s1", "v1", false),
            replica("b", "s2", "v1", false),
        ];
        let d = disagreements(&b);
        assert_eq!(d, vec!["rules sha256 differs: s1 on a; s2 on b".to_owned()]);
        let c = [
            replica("a", "s1", "v1", true),
            replica("b", "s1", "v1", false),
        ];
        assert_eq!(disagreements(&c).len(), 1, "{:?}", disagreements(&c));
        let all = [
            replica("a", "s1", "v1", true),
            replica("b", "s1", "v1", true),
        ];
        assert!(
            disagreements(&all).is_empty(),
            "tripped everywhere is agreement"
        );
        let down = [
            replica("a", "s1", "v1", false),
            Replica {
                url: "b".into(),
                status: Err("connect: refused".into()),
            },
        ];
        assert_eq!(
            disagreements(&down),
            vec!["b did not answer: connect: refused".to_owned()]
        );
    }

    #[test]
    fn the_table_names_every_replica() {
        let rs = [
            replica("a", &"f".repeat(64), "v1", false),
            replica("b", &"e".repeat(64), "v1", false),
        ];
        let mut out = Vec::new();
        let agree = print(&rs, false, &mut out).unwrap_or(true);
        let text = String::from_utf8_lossy(&out);
        assert!(!agree);
        assert!(
            text.contains("ffffffffffff") && text.contains("eeeeeeeeeeee"),
            "{text}"
        );
        assert!(text.contains("chat=closed"), "{text}");
        assert!(text.contains("chat=20.0% static=-"), "{text}");
        assert!(text.contains("DISAGREE: rules sha256 differs"), "{text}");
    }
}
