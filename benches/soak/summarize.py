#!/usr/bin/env python3
"""Reads a soak run directory (samples.csv, reloads.csv, meta.env, the helpers' JSON
stats, the metrics scraped at the end of the load) and prints summary.md: the figures
and one PASS/FAIL line per criterion. Exit status 0 when every criterion passed.

    python3 benches/soak/summarize.py RUN_DIR
"""

import csv
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soaklib  # noqa: E402


def load_env(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            out[k] = v
    return out


def num(v, default=None):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def main(run):
    meta = load_env(os.path.join(run, "meta.env"))
    with open(os.path.join(run, "samples.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(run, "reloads.csv")) as f:
        reloads = list(csv.DictReader(f))
    http = soaklib.read_json(os.path.join(run, "http_stats.json"))
    ws = soaklib.read_json(os.path.join(run, "ws_stats.json"))
    up = soaklib.read_json(os.path.join(run, "upstreams_stats.json"))
    machine = open(os.path.join(run, "machine.md")).read().rstrip()
    try:
        end_metrics = soaklib.metric_sums(open(os.path.join(run, "metrics-end-of-load.txt")).read())
    except OSError:
        end_metrics = {}
    try:
        after_metrics = soaklib.metric_sums(open(os.path.join(run, "metrics-after.txt")).read())
    except OSError:
        after_metrics = {}

    duration = int(meta["duration"])
    warmup = int(meta["warmup"])
    links = int(meta["links"])
    window = min(60, max(10, warmup))
    load = [r for r in rows if r["phase"] in ("warmup", "load")]
    steady = [r for r in load if num(r["t"], -1) >= warmup]

    def mean_rss(rs):
        v = [num(r["rss_kib"]) for r in rs if num(r["rss_kib"])]
        return statistics.mean(v) if v else None

    rss_warm_rows = [r for r in steady if num(r["t"]) < warmup + window]
    rss_end_rows = [r for r in steady if num(r["t"]) > duration - window]
    rss_warm = mean_rss(rss_warm_rows)
    rss_end = mean_rss(rss_end_rows)
    growth = (rss_end - rss_warm) / rss_warm * 100 if rss_warm and rss_end else None
    # Least-squares slope over every steady sample, per hour.
    slope = None
    pts = [(num(r["t"]), num(r["rss_kib"])) for r in steady if num(r["rss_kib"])]
    if len(pts) >= 3:
        mt = statistics.mean(p[0] for p in pts)
        mr = statistics.mean(p[1] for p in pts)
        den = sum((p[0] - mt) ** 2 for p in pts)
        slope = sum((p[0] - mt) * (p[1] - mr) for p in pts) / den * 3600 if den else None
    peak_rss = max((num(r["rss_kib"]) for r in rows if num(r["rss_kib"])), default=0)
    hwm = max((num(r["hwm_kib"]) for r in rows if num(r["hwm_kib"])), default=0)
    steady_rss = [num(r["rss_kib"]) for r in steady if num(r["rss_kib"])]

    base_fds = int(meta["base_fds"])
    peak_fds = max((int(num(r["fds"], 0)) for r in rows), default=0)
    fds_after = int(num(meta.get("fds_after"), -1))
    fds_back = meta.get("fds_back_s", "")
    gauge_after = int(num(meta.get("gauge_after"), -1))

    gauges = [int(num(r["ws_gauge"], 0)) for r in steady if r["ws_gauge"] != ""]
    last_load = load[-1] if load else {}
    ws_open_end = int(num(last_load.get("ws_open"), -1))

    checks = []

    def check(name, ok, detail):
        checks.append((name, ok, detail))

    # ------------------------------------------------------------------ memory
    check("RSS growth after warm-up < 5%", growth is not None and growth < 5.0,
          f"{growth:+.2f}%" if growth is not None else "no samples")
    # ------------------------------------------------------------------ fds
    check("open fds back to baseline after the load", fds_after >= 0 and fds_after <= base_fds and fds_back != "",
          f"{fds_after} after vs {base_fds} at baseline" + (f", back {fds_back} s after the clients stopped" if fds_back else f", not back within {meta['fd_wait']} s"))
    # ------------------------------------------------------------------ requests
    lost = http.get("lost", -1)
    check("0 requests lost (to reloads or anything else)", lost == 0, f"{lost} lost of {http.get('sent', 0):,}")
    check("0 misrouted answers", http.get("misrouted", -1) == 0, f"{http.get('misrouted')} misrouted")
    # ------------------------------------------------------------------ reloads
    writes, broken = int(meta["writes"]), int(meta["broken"])
    ok = end_metrics.get("reloads_ok", -1)
    err = end_metrics.get("reloads_error", -1)
    unch = end_metrics.get("reloads_unchanged", -1)
    check("every rules edit went live, every broken file was rejected",
          ok == writes and err == broken,
          f"ok {ok} (edits {writes}), error {err} (broken files {broken}), unchanged {unch}")
    lat = [int(r["live_ms"]) for r in reloads if r["live_ms"]]
    errlat = [int(r["error_seen_ms"]) for r in reloads if r["error_seen_ms"]]
    check("each edit live within 1 s", bool(lat) and max(lat) <= 1000 if lat else writes == 0,
          f"median {statistics.median(lat):.0f} ms, max {max(lat)} ms" if lat else "no edits")
    extras = [r for r in reloads if r["extra"]]
    extra_bad = [r for r in extras if r["version"] not in r["extra_result"]
                 or (r["extra"] == "post" and not r["extra_result"].startswith("200"))]
    check("POST /reload and SIGHUP answered with the live rules", not extra_bad,
          f"{sum(r['extra'] == 'post' for r in extras)} POST /reload, {sum(r['extra'] == 'sighup' for r in extras)} SIGHUP"
          + (f"; bad: {[r['k'] for r in extra_bad]}" if extra_bad else ""))
    # ------------------------------------------------------------------ links
    check(f"all {links:,} WebSocket links held at the end of the load", ws_open_end == links,
          f"{ws_open_end:,} open (client); initial {links:,} open after {ws.get('initial_open_s')} s")
    rh_client = ws.get("rehome_closes", -1)
    rh_gl = after_metrics.get("rehomed_total", end_metrics.get("rehomed_total", -2))
    check("re-homes: every graylane re-home reached its client as a 1012 close", rh_client == rh_gl,
          f"{rh_client:,} closes 1012 received, graylane_long_links_rehomed_total {rh_gl:,}")
    unexpected = ws.get("unexpected_closes", 0) + ws.get("drops", 0)
    reconnect_ok = ws.get("reconnects", -1) == rh_client + unexpected
    check("every re-homed link reconnected", reconnect_ok,
          f"{ws.get('reconnects', -1):,} reconnects for {rh_client:,} re-homes + {unexpected} other closes")
    bad_ws = {k: ws.get(k, -1) for k in ("unexpected_closes", "drops", "handshake_failures", "stale",
                                          "wrong_rehomes", "misrouted", "echo_timeouts", "echo_wrong")}
    check("0 unexpected link closes, failed handshakes, stale or misrouted links, lost echoes",
          all(v == 0 for v in bad_ws.values()), ", ".join(f"{k} {v}" for k, v in bad_ws.items()))
    check("links gauge back to 0 after the clients closed", gauge_after == 0 and ws.get("close_timeouts_at_end", 1) == 0,
          f"gauge {gauge_after}, {ws.get('closed_clean_at_end', 0):,} closed with a Close handshake, "
          f"{ws.get('close_timeouts_at_end')} close timeouts")
    check("graylane ran the whole soak (same process)", meta.get("graylane_alive") == "1", "alive at the end" if meta.get("graylane_alive") == "1" else "exited")

    # ------------------------------------------------------------------ output
    out = []
    w = out.append
    hours = duration / 3600
    w(f"## Soak: {duration // 60} min, {links:,} WebSocket links, reloads every {meta['reload_every']} s\n")
    w(f"`{meta['command']}` (run directory `{os.path.basename(run.rstrip('/'))}`)\n")
    w(machine + "\n")
    w("| figure | value |")
    w("|---|---|")
    w(f"| load | {links:,} WebSocket links; HTTP {meta['rate']} req/s on {meta['conns']} keep-alive connections "
      f"(actual {http.get('rate_actual')} req/s); warm-up {warmup} s; samples every 10 s ({len(rows)}) |")
    w(f"| RSS at baseline (idle, before load) | {mib(int(meta['base_rss_kib']))} |")
    if rss_warm and rss_end:
        w(f"| RSS after warm-up (mean of {len(rss_warm_rows)} samples, t = {warmup}–{warmup + window} s) | {mib(rss_warm)} |")
        w(f"| RSS at the end of the load (mean of {len(rss_end_rows)} samples, last {window} s) | {mib(rss_end)} |")
        w(f"| **RSS growth after warm-up** | **{growth:+.2f}%** ({(rss_end - rss_warm) / 1024:+.1f} MiB) |")
    if slope is not None:
        w(f"| RSS trend after warm-up (least squares over {len(pts)} samples) | {slope / 1024:+.2f} MiB/h "
          f"({slope / rss_warm * 100 if rss_warm else 0:+.2f}%/h) |")
    if steady_rss:
        w(f"| RSS range after warm-up (min–max sample) | {mib(min(steady_rss))} – {mib(max(steady_rss))} |")
    w(f"| peak RSS (largest sample / VmHWM) | {mib(peak_rss)} / {mib(hwm)} |")
    w(f"| RSS after the load, links closed | {mib(int(num(meta.get('rss_after_kib'), 0)))} |")
    w(f"| **open fds**: baseline / peak / after the load | **{base_fds} / {peak_fds:,} / {fds_after}**"
      + (f" (back to baseline {fds_back} s after the clients stopped)" if fds_back else f" (not back within {meta['fd_wait']} s)") + " |")
    w(f"| HTTP requests sent / answered | {http.get('sent', 0):,} / {http.get('answered', 0):,} |")
    by = http.get("by_status", {})
    must = ", ".join(f"{k.split()[1]}: {v:,}" for k, v in sorted(by.items()) if k.startswith("must200"))
    fault = ", ".join(f"{k.split()[1]}: {v:,}" for k, v in sorted(by.items()) if k.startswith("faultok"))
    w(f"| answers, requests that must be 200 (`/api`, stable users of `/chat`) | {must or '-'} |")
    w(f"| answers, `/chat` of always-gray users (faulty upstream) | {fault or '-'} |")
    fk = "; ".join(f"{k}: {v:,}" for k, v in sorted(http.get("faults", {}).items()))
    w(f"| fault answers (counted apart, not lost) | {http.get('fault_answers', 0):,} ({fk or 'none'}) |")
    w(f"| **lost requests** | **{lost}** ({', '.join(f'{k}: {v}' for k, v in http.get('lost_kinds', {}).items()) or 'none'}) |")
    w(f"| misrouted answers (fixed-pool users answered by the other pool) | {http.get('misrouted')} |")
    w(f"| faults injected (gray `chat` endpoint) | {up.get('inj_500', 0):,} × 500, {up.get('inj_resets', 0):,} resets, "
      f"{up.get('inj_stalls', 0):,} stalls of 4 s, {up.get('inj_down_phases', 0)} down phases (listener closed 10 s), "
      f"of {up.get('inj_requests', 0):,} requests it saw |")
    w(f"| HTTP latency, mean / max | {http.get('mean_latency_ms')} ms / {http.get('max_latency_ms')} ms |")
    w(f"| client connections opened (keep-alive, recycled by the client) | {http.get('conns_opened', 0):,} |")
    w(f"| rules edits (rename) / broken files / POST /reload / SIGHUP | {writes} / {broken} / {meta['posts']} / {meta['sighups']} |")
    w(f"| `graylane_rules_reloads_total` ok / unchanged / error | {ok} / {unch} / {err} |")
    if lat:
        w(f"| edit live (rename → `/rules` shows it), median / max | {statistics.median(lat):.0f} ms / {max(lat)} ms |")
    if errlat:
        w(f"| broken file rejected (`last_error` set), max | {max(errlat)} ms |")
    w(f"| WebSocket links: opened at start / held at end of load | {links:,} in {ws.get('initial_open_s')} s / {ws_open_end:,} |")
    if gauges:
        w(f"| `graylane_websocket_connections` after warm-up, min–max sample | {min(gauges):,} – {max(gauges):,} |")
    w(f"| links re-homed (1012 received) / graylane's count / reconnected | {rh_client:,} / {rh_gl:,} / {ws.get('reconnects', 0):,} |")
    w(f"| link opens in total (incl. reconnects) / echo round-trips checked | {ws.get('opens', 0):,} / {ws.get('echo_ok', 0):,} |")
    w(f"| unexpected closes / drops / failed handshakes / stale / wrong re-homes / misrouted links | "
      f"{ws.get('unexpected_closes')} / {ws.get('drops')} / {ws.get('handshake_failures')} / {ws.get('stale')} / "
      f"{ws.get('wrong_rehomes')} / {ws.get('misrouted')} |")
    w(f"| links gauge after the clients closed | {gauge_after} |")
    w(f"| graylane CPU over the run | {num(rows[-1]['cpu_s'], 0) - num(rows[0]['cpu_s'], 0):.0f} s "
      f"({(num(rows[-1]['cpu_s'], 0) - num(rows[0]['cpu_s'], 0)) / max(num(rows[-1]['epoch']) - num(rows[0]['epoch']), 1) * 100:.0f}% of a core); "
      f"load average {min(num(r['loadavg1'], 0) for r in rows):.2f}–{max(num(r['loadavg1'], 0) for r in rows):.2f} |")
    w("")
    w("| criterion | result | detail |")
    w("|---|---|---|")
    for name, good, detail in checks:
        w(f"| {name} | {'PASS' if good else '**FAIL**'} | {detail} |")
    w("")
    # Lost requests next to the reloads, when there are any.
    lost_path = os.path.join(run, "lost.jsonl")
    if os.path.exists(lost_path) and os.path.getsize(lost_path):
        times = [int(r["epoch"]) for r in reloads]
        w("Lost or misrouted requests (first 20), with the nearest rules edit:\n")
        w("| time (UTC) | service | category | what | s from nearest edit |")
        w("|---|---|---|---|---|")
        import time as _t
        with open(lost_path) as f:
            for i, line in enumerate(f):
                if i >= 20:
                    break
                e = json.loads(line)
                near = min((e["t"] - t for t in times), key=abs, default=None)
                w(f"| {_t.strftime('%H:%M:%S', _t.gmtime(e['t']))} | {e['service']} | {e['cat']} | "
                  f"{e['kind']}: {e['detail'][:60]} | {near:+.1f} |" if near is not None else
                  f"| {e['t']} | {e['service']} | {e['cat']} | {e['kind']}: {e['detail'][:60]} | - |")
        w("")
    failed = [c for c in checks if not c[1]]
    w(f"**{'PASS' if not failed else 'FAIL'}**: {len(checks) - len(failed)} of {len(checks)} criteria met.")
    print("\n".join(out))
    return 0 if not failed else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
