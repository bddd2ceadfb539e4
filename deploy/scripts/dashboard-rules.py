#!/usr/bin/env python3
"""Turn every PromQL query of the Grafana dashboard into a recording rule, so that
`promtool check rules` parses them all.

  dashboard-rules.py DASHBOARD.json OUT.yaml

Grafana variables are replaced by concrete values ($__rate_interval by 5m, a query
variable by a sample value); a `$` left over afterwards is an error. The selector inside
each `label_values(SELECTOR, LABEL)` variable query is checked too.
"""
import json
import re
import sys

import yaml

BUILTIN = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "60000",
}
SAMPLE = {"namespace": "kefu", "service": "chat"}
VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def substitute(expr, names, where):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTIN:
            return BUILTIN[name]
        if name in names:
            return SAMPLE.get(name, "x")
        raise SystemExit(f"{where}: unknown variable ${name}")
    out = VAR.sub(repl, expr)
    if "$" in out:
        raise SystemExit(f"{where}: `$` left after substitution: {out}")
    return out


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    dash = json.load(open(sys.argv[1]))
    variables = dash.get("templating", {}).get("list", [])
    names = {v["name"] for v in variables}
    rules = []
    for v in variables:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q, re.S)
        if m:
            q = m.group(1)
        elif q.strip().startswith("label_values("):
            continue  # label_values(label): no selector to check
        rules.append({"record": f"dashboard:var_{v['name']}",
                      "expr": substitute(q, names, f"variable {v['name']}")})
    seen = set()
    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            expr = t.get("expr")
            if not expr:
                continue
            where = f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}"
            key = (p.get("id"), t.get("refId"))
            if key in seen:
                raise SystemExit(f"{where}: duplicate panel id/refId")
            seen.add(key)
            rules.append({"record": f"dashboard:panel_{p.get('id')}_{t.get('refId')}",
                          "expr": substitute(expr, names, where)})
    if not rules:
        raise SystemExit("no queries found in the dashboard")
    with open(sys.argv[2], "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f,
                       sort_keys=False, width=1000)
    print(f"{len(rules)} dashboard queries written as recording rules to {sys.argv[2]}")


if __name__ == "__main__":
    main()
