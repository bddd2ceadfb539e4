//! A headless Chromium driven over the Chrome DevTools Protocol: just enough of a client
//! for a test to load pages and read what they did.
//!
//! [`Browser::launch`] starts Debian's `chromium` in a new temporary profile (and its own
//! process group) with `--remote-debugging-port=0`, reads the port it chose from
//! `DevToolsActivePort`, and [`Browser::connect`] opens the browser-wide WebSocket named by
//! `/json/version`. A [`Cdp`] then creates targets (tabs), attaches to them with
//! `flatten: true` and sends `Page.*` / `Runtime.*` commands on the tab's session; events
//! (only from domains a test enables, such as `Network`) are kept for the test to read. Dropping the [`Browser`] kills
//! its whole process group, however the test ends, and removes the profile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one DevTools command may take before the test gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Events kept for [`Cdp::take_events`]; older ones are dropped.
pub const MAX_EVENTS: usize = 2000;
/// How long Chromium may take to start and write `DevToolsActivePort` (slow on 2 cores).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium executable: `/usr/bin/chromium`, else `chromium` on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    let debian = Path::new("/usr/bin/chromium");
    if debian.is_file() {
        return Some(debian.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    })
}

/// Chromium, or `None` (with a notice naming `test`) when it is missing and not required:
/// `GRAYLANE_REQUIRE_BROWSER=1` (CI) makes a missing Chromium a failure.
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = find_chromium() {
        return Some(p);
    }
    let required = std::env::var("GRAYLANE_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "GRAYLANE_REQUIRE_BROWSER=1 but no chromium: neither /usr/bin/chromium nor `chromium` \
         on PATH (apt-get install -y chromium)"
    );
    // Straight to the process's stderr: the test harness captures eprintln! of a test
    // that passes, and this notice must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "NOTICE: {test} skipped: no chromium (/usr/bin/chromium or on PATH). Install Debian's \
         package `chromium` to run it; GRAYLANE_REQUIRE_BROWSER=1 makes this a failure."
    );
    None
}

/// A running headless Chromium. Dropping it kills the browser and every process it
/// started (one process group) and removes its temporary directory.
pub struct Browser {
    child: Child,
    /// Holds `profile/` (the `--user-data-dir`) and `chromium.log` (its stdout and stderr).
    root: Option<tempfile::TempDir>,
    /// The DevTools HTTP and WebSocket port.
    pub port: u16,
}

impl Browser {
    /// Starts `exe` headless with the flags every test needs plus `extra` (for example
    /// `--host-resolver-rules=…`), and waits until its DevTools port is known.
    ///
    /// `--ignore-certificate-errors` lets a self-signed certificate through, but Chromium
    /// then stores nothing fetched over such a connection in its HTTP cache. A test that
    /// needs the cache also passes `--ignore-certificate-errors-spki-list=BASE64` (the
    /// SHA-256 of the certificate's SubjectPublicKeyInfo): that certificate then counts as
    /// valid.
    pub async fn launch(exe: &Path, extra: &[String]) -> Result<Browser, String> {
        use std::os::unix::process::CommandExt;
        let root = tempfile::Builder::new()
            .prefix("graylane-chromium-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let profile = root.path().join("profile");
        std::fs::create_dir(&profile).map_err(|e| format!("profile dir: {e}"))?;
        let log = std::fs::File::create(root.path().join("chromium.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: Drop kills the renderers and helpers with it.
        .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let mut b = Browser {
            child,
            root: Some(root),
            port: 0,
        };
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The file is written whole, but read it only once it has both lines.
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(_path)) = (lines.next(), lines.next()) {
                    b.port = port
                        .trim()
                        .parse()
                        .map_err(|e| format!("DevToolsActivePort {text:?}: {e}"))?;
                    return Ok(b);
                }
            }
            if let Ok(Some(status)) = b.child.try_wait() {
                return Err(format!(
                    "chromium exited at start ({status}); its log:\n{}",
                    b.log_tail(4000)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "chromium wrote no DevToolsActivePort within {START_TIMEOUT:?}; its log:\n{}",
                    b.log_tail(4000)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `max` bytes of what Chromium printed (for failure messages).
    pub fn log_tail(&self, max: usize) -> String {
        let Some(root) = &self.root else {
            return String::new();
        };
        let bytes = std::fs::read(root.path().join("chromium.log")).unwrap_or_default();
        let from = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    /// Opens the browser-wide DevTools WebSocket that `/json/version` names.
    pub async fn connect(&self) -> Result<Cdp, String> {
        let url = format!("http://127.0.0.1:{}/json/version", self.port);
        let (status, _, body) = super::get(&super::client(), &url, &[]).await;
        if !status.is_success() {
            return Err(format!("{url}: {status} {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{url}: {e}: {body}"))?;
        let ws_url = v["webSocketDebuggerUrl"]
            .as_str()
            .ok_or_else(|| format!("{url}: no webSocketDebuggerUrl in {body}"))?;
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .map_err(|e| format!("{ws_url}: {e}"))?;
        Ok(Cdp {
            ws,
            next_id: 0,
            events: Default::default(),
            browser: v["Browser"].as_str().unwrap_or("?").to_owned(),
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("chromium's log (last 3000 bytes):\n{}", self.log_tail(3000));
        }
        // The whole group (browser, zygotes, renderers, GPU and network processes), then
        // the browser itself in case the group kill could not run. The crash handler
        // (chrome_crashpad_handler) starts a session of its own, out of the group; it exits
        // by itself when the browser is gone (seen: within a second).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(root) = self.root.take() {
            // A helper still dying may write one more file: retry a little.
            for _ in 0..20 {
                if !root.path().exists() || std::fs::remove_dir_all(root.path()).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One tab: its target id and the session attached to it.
#[derive(Debug, Clone)]
pub struct Page {
    pub target: String,
    pub session: String,
}

/// A DevTools connection to the browser. Commands are sent one at a time; events that
/// arrive before a command's answer are kept (the last [`MAX_EVENTS`]) for
/// [`Cdp::take_events`] and otherwise ignored.
pub struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: std::collections::VecDeque<Value>,
    /// The browser's product string, as `/json/version` gave it.
    pub browser: String,
}

impl Cdp {
    /// Sends `method` (on `session`, or to the browser) and waits for its answer.
    pub async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| format!("{method}: send: {e}"))?;
        let (ws, events) = (&mut self.ws, &mut self.events);
        let answer = async {
            loop {
                let m = match ws.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(format!("{method}: {e}")),
                    None => return Err(format!("{method}: DevTools connection closed")),
                };
                let Message::Text(text) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                // Events have no id; answers to earlier calls that timed out are stale.
                match v.get("id").and_then(Value::as_u64) {
                    Some(i) if i == id => {}
                    Some(_) => continue,
                    None => {
                        if events.len() == MAX_EVENTS {
                            events.pop_front();
                        }
                        events.push_back(v);
                        continue;
                    }
                }
                if let Some(e) = v.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| format!("{method}: no answer within {CALL_TIMEOUT:?}"))?
    }

    /// The events received so far (`method`, `params`, `sessionId`), oldest first, and
    /// forgets them. Only domains a test enabled send any.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// A new tab on `about:blank`, attached with `flatten: true`.
    pub async fn new_page(&mut self) -> Result<Page, String> {
        let r = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target = r["targetId"]
            .as_str()
            .ok_or_else(|| format!("Target.createTarget: no targetId in {r}"))?
            .to_owned();
        let r = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await?;
        let session = r["sessionId"]
            .as_str()
            .ok_or_else(|| format!("Target.attachToTarget: no sessionId in {r}"))?
            .to_owned();
        Ok(Page { target, session })
    }

    /// Closes the tab (its WebSockets close with it).
    pub async fn close_page(&mut self, page: &Page) -> Result<(), String> {
        self.call(
            None,
            "Target.closeTarget",
            json!({ "targetId": page.target }),
        )
        .await
        .map(drop)
    }

    /// Starts loading `url` in the tab; returns once the navigation is under way (use
    /// [`Cdp::wait_for`] for what the page does). A network error is an error.
    pub async fn navigate(&mut self, page: &Page, url: &str) -> Result<(), String> {
        let r = self
            .call(Some(&page.session), "Page.navigate", json!({ "url": url }))
            .await?;
        match r.get("errorText").and_then(Value::as_str) {
            Some(e) if !e.is_empty() => Err(format!("Page.navigate {url}: {e}")),
            _ => Ok(()),
        }
    }

    /// Reloads the tab as the reload button does (the HTTP cache is used as usual).
    pub async fn reload(&mut self, page: &Page) -> Result<(), String> {
        self.call(
            Some(&page.session),
            "Page.reload",
            json!({ "ignoreCache": false }),
        )
        .await
        .map(drop)
    }

    /// Evaluates `expr` in the page, awaiting it when it is a promise; returns its value
    /// as JSON. A thrown exception is an error.
    pub async fn evaluate(&mut self, page: &Page, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("{expr}: {text}"));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `expr` every 50 ms until it gives something other than `null`, `false`
    /// or `undefined` (errors while a page loads count as "not yet"); returns that value,
    /// or the last error / value when `within` runs out.
    pub async fn wait_for(
        &mut self,
        page: &Page,
        expr: &str,
        within: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.evaluate(page, expr).await {
                Ok(Value::Null) | Ok(Value::Bool(false)) => "null or false".to_owned(),
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!("not within {within:?}: {expr}: last {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
