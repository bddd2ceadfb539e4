#!/usr/bin/env python3
"""Keep deploy/kubernetes/prometheusrule.yaml the PrometheusRule wrapping of
deploy/prometheus/graylane-alerts.yaml (the file promtool tests).

  sync-prometheusrule.py          check: exit 1 with a diff when they differ
  sync-prometheusrule.py --write  regenerate prometheusrule.yaml

The rules are embedded as text (indented under `spec:`), so comments survive; the check
also compares the parsed `groups:` of both, which is what the operator loads.
"""
import difflib
import pathlib
import sys

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
PLAIN = DEPLOY / "prometheus" / "graylane-alerts.yaml"
WRAPPED = DEPLOY / "kubernetes" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/graylane-alerts.yaml by
# deploy/scripts/sync-prometheusrule.py --write; edit that file, not this one.
# Overlays add the label your Prometheus's ruleSelector wants (e.g. `release: ...`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: graylane
  labels:
    app.kubernetes.io/name: graylane
spec:
"""


def render(plain_text: str) -> str:
    lines = plain_text.splitlines()
    # Drop the plain file's own header comments: they describe that file.
    start = next(i for i, l in enumerate(lines) if l.startswith("groups:"))
    body = "".join(("  " + l if l.strip() else "") + "\n" for l in lines[start:])
    return HEADER + body


def main() -> int:
    plain_text = PLAIN.read_text()
    want = render(plain_text)
    if sys.argv[1:] == ["--write"]:
        WRAPPED.write_text(want)
        print(f"wrote {WRAPPED.relative_to(DEPLOY.parent)}")
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    have = WRAPPED.read_text() if WRAPPED.exists() else ""
    plain_groups = yaml.safe_load(plain_text)["groups"]
    wrapped_doc = yaml.safe_load(have) if have else {}
    wrapped_groups = (wrapped_doc or {}).get("spec", {}).get("groups")
    ok = True
    if plain_groups != wrapped_groups:
        print("prometheusrule.yaml: spec.groups differs from graylane-alerts.yaml groups")
        ok = False
    if have != want:
        sys.stdout.writelines(
            difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                 str(WRAPPED), "generated", n=1))
        ok = False
    if not ok:
        print("run: deploy/scripts/sync-prometheusrule.py --write")
        return 1
    n = sum(len(g["rules"]) for g in plain_groups)
    print(f"prometheusrule.yaml matches graylane-alerts.yaml ({len(plain_groups)} groups, {n} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
