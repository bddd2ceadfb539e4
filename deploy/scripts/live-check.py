#!/usr/bin/env python3
"""Start graylane on the deployed config (binds moved to 127.0.0.1:0, endpoints to a
closed loopback port) and check what the manifests and alerts rely on:

  live-check.py GRAYLANE_BIN CONFIG_DIR ALERTS.yaml DASHBOARD_RULES.yaml

- /healthz and /readyz answer 200; POST /reload is 401 without the token, 200 with it;
- every graylane_* metric, and every label name and literal value matched on it, in the
  alerts and the dashboard queries exists in /metrics;
- SIGTERM: the process exits 0 within timeouts.drain.
"""
import json
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

# Labels Prometheus adds at scrape time (ServiceMonitor target labels).
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "le"}
SELECTOR = re.compile(r"\b(graylane_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# Loopback only: never through an http_proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url, token=None):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with OPENER.open(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def exprs_of(path):
    doc = yaml.safe_load(open(path))
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def main():
    binary, cfg_dir, alerts, dash_rules = sys.argv[1:5]
    cfg_dir = pathlib.Path(cfg_dir)
    cfg = yaml.safe_load((cfg_dir / "graylane.yaml").read_text())
    for l in cfg["listeners"]:
        l["bind"] = "127.0.0.1:0"
        l.pop("tls", None)
    cfg.setdefault("admin", {})["bind"] = "127.0.0.1:0"
    for s in cfg["services"]:
        for p in s["pools"].values():
            p["endpoints"] = ["127.0.0.1:9"]  # nothing listens: no DNS, no traffic out
    live = cfg_dir / "live.yaml"
    live.write_text(yaml.safe_dump(cfg))
    token_file = cfg["admin"].get("token_file")
    token = (cfg_dir / token_file).read_text().strip() if token_file else None

    proc = subprocess.Popen([binary, "--log-format", "json", "run", "--config", str(live)],
                            stderr=subprocess.PIPE, text=True)
    errors = []
    try:
        admin = None
        deadline = time.time() + 10
        while admin is None and time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            try:
                f = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if f.get("message") == "admin listening":
                admin = f"http://{f['addr']}"
        if admin is None:
            raise SystemExit(f"graylane did not start: exit {proc.poll()}")
        time.sleep(0.3)
        for path in ("/healthz", "/readyz"):
            code, _ = http("GET", admin + path)
            if code != 200:
                errors.append(f"GET {path}: {code}, want 200")
        if token:
            code, _ = http("POST", admin + "/reload")
            if code != 401:
                errors.append(f"POST /reload without token: {code}, want 401")
            code, _ = http("POST", admin + "/reload", token)
            if code != 200:
                errors.append(f"POST /reload with token: {code}, want 200")
        code, text = http("GET", admin + "/metrics")
        if code != 200:
            raise SystemExit(f"GET /metrics: {code}")

        labels = {}  # sample name -> {label: set(values)}
        for line in text.splitlines():
            m = SAMPLE.match(line)
            if not m or line.startswith("#"):
                continue
            d = labels.setdefault(m.group(1), {})
            for k, v in LABEL.findall(m.group(3) or ""):
                d.setdefault(k, set()).add(v)
        used = [(alerts, e) for e in exprs_of(alerts)] + [(dash_rules, e) for e in exprs_of(dash_rules)]
        names = set()
        for src, expr in used:
            for name, sel in SELECTOR.findall(expr):
                names.add(name)
                if name not in labels:
                    errors.append(f"{src}: {name} is not in graylane's /metrics")
                    continue
                for lname, op, value in MATCHER.findall(sel or ""):
                    if lname in TARGET_LABELS:
                        continue
                    if lname not in labels[name]:
                        errors.append(f"{src}: {name} has no label {lname!r}")
                    elif op in ("=", "!=") and value not in labels[name][lname]:
                        errors.append(f"{src}: {name}{{{lname}={value!r}}} never appears "
                                      f"(seen: {sorted(labels[name][lname])})")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=35)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed after 35s"
        live.unlink()
    if rc != 0:
        errors.append(f"SIGTERM: exit {rc}, want 0")
    for e in errors:
        print(f"  FAIL {e}")
    if errors:
        return 1
    print(f"  ok  /healthz, /readyz, /reload token, SIGTERM exit 0; "
          f"{len(names)} metrics used by alerts and dashboard exist with their labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
