#!/usr/bin/env python3
"""Validate rendered Kubernetes manifests offline, and check what graylane needs of them.

  validate-manifests.py RENDERED.yaml [--kube-versions 1.30.0,1.37.0] [--extract-config DIR]

- Built-in kinds: kubernetes-validate's bundled OpenAPI schemas, strict (unknown fields
  are errors). It reads only files inside the package: no network.
- ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1): the pydantic models that
  cloudcoil-models-prometheus-operator generates from the operator's CRD schemas, with
  extra fields forbidden.
- graylane's own needs (SPEC §8, §11): probes, preStop, grace period above the drain,
  security context, a directory (not subPath) mount of the one ConfigMap, ports that
  match graylane.yaml, selectors that select.
- --extract-config DIR writes the ConfigMap's graylane.yaml and rules.yaml to DIR/config
  and a dummy admin token where token_file points, for `graylane check`.
"""
import argparse
import pathlib
import re
import sys

import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as promop

CRD_MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): promop.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): promop.PrometheusRule,
}
CONFIG_MOUNT = "/etc/graylane/config"
errors = []


def fail(msg):
    errors.append(msg)


def need(cond, msg):
    if not cond:
        fail(msg)
    return cond


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text).strip())
    if not m:
        return 0 if str(text).strip() == "0" else None
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * {"s": 1, "m": 60, "h": 3600}[unit]


def schema_check(docs, versions):
    for d in docs:
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        model = CRD_MODELS.get((d.get("apiVersion"), d.get("kind")))
        try:
            if model is not None:
                model.model_validate(d, extra="forbid")
                how = "prometheus-operator CRD model, extra fields forbidden"
            else:
                for v in versions:
                    kubernetes_validate.validate(d, v, strict=True)
                how = f"Kubernetes {', '.join(versions)} schemas, strict"
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{name}: {e.message}")
            continue
        except Exception as e:  # jsonschema / pydantic errors
            fail(f"{name}: {e}")
            continue
        print(f"  ok  {name} ({how})")


def graylane_checks(docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    cms = by_kind.get("ConfigMap", [])
    if not need(len(cms) == 1, f"want exactly one ConfigMap, found {len(cms)}"):
        return None
    cm = cms[0]
    data = cm.get("data", {})
    if not need({"graylane.yaml", "rules.yaml"} <= set(data),
                "the ConfigMap must hold graylane.yaml and rules.yaml"):
        return None
    cfg = yaml.safe_load(data["graylane.yaml"])
    need(cfg.get("rules_file") == "rules.yaml",
         "graylane.yaml: rules_file must be `rules.yaml` (beside it in the same ConfigMap)")
    listeners = {l["name"]: int(str(l["bind"]).rsplit(":", 1)[1]) for l in cfg["listeners"]}
    admin_bind = str(cfg.get("admin", {}).get("bind", "127.0.0.1:9901"))
    need(not admin_bind.startswith("127."), "admin.bind on loopback: probes cannot reach it")
    admin_port = int(admin_bind.rsplit(":", 1)[1])
    drain = duration_s(cfg.get("timeouts", {}).get("drain", "30s"))

    deps = by_kind.get("Deployment", [])
    if not need(len(deps) == 1, f"want exactly one Deployment, found {len(deps)}"):
        return cm
    dep = deps[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    need(spec.get("replicas", 1) >= 2, "Deployment: replicas must be >= 2")
    need(spec["selector"]["matchLabels"].items() <= pod_labels.items(),
         "Deployment: selector does not match the pod labels")
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for lname, lport in listeners.items():
        need(ports.get(lname) == lport, f"container port {lname!r} must be {lport} (graylane.yaml)")
    need(ports.get("admin") == admin_port, f"container port 'admin' must be {admin_port}")
    rp, lp = c.get("readinessProbe", {}), c.get("livenessProbe", {})
    need(rp.get("httpGet", {}).get("path") == "/readyz" and rp["httpGet"].get("port") in ("admin", admin_port),
         "readinessProbe must GET /readyz on the admin port")
    need(lp.get("httpGet", {}).get("path") == "/healthz" and lp["httpGet"].get("port") in ("admin", admin_port),
         "livenessProbe must GET /healthz on the admin port")
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = pre.get("sleep", {}).get("seconds")
    if need(pre_s is not None, "preStop must be a `sleep` action (the image has no shell)"):
        need(pre_s >= 5, "preStop sleep under 5s: endpoints may still send to a closed listener")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if drain is not None:
            need(grace > pre_s + drain,
                 f"terminationGracePeriodSeconds {grace} must exceed preStop {pre_s}s + drain {drain}s")
    res = c.get("resources", {})
    for k in ("requests", "limits"):
        need({"cpu", "memory"} <= set(res.get(k, {})), f"resources.{k} needs cpu and memory")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccompProfile must be RuntimeDefault")
    need(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    need(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    need(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities must drop ALL")
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    need(anti.get("preferredDuringSchedulingIgnoredDuringExecution") or
         anti.get("requiredDuringSchedulingIgnoredDuringExecution"), "podAntiAffinity missing")
    cm_volumes = {v["name"] for v in pod.get("volumes", [])
                  if v.get("configMap", {}).get("name") == cm["metadata"]["name"]}
    need(len(cm_volumes) == 1, "the ConfigMap must be one volume")
    mounts = [m for m in c.get("volumeMounts", []) if m["name"] in cm_volumes]
    need(len(mounts) == 1 and "subPath" not in mounts[0] and "subPathExpr" not in mounts[0],
         "the ConfigMap must be mounted once, as a directory (a subPath mount never updates)")
    if mounts:
        need(mounts[0]["mountPath"] == CONFIG_MOUNT, f"the ConfigMap must be mounted at {CONFIG_MOUNT}")
        need(f"{CONFIG_MOUNT}/graylane.yaml" in c.get("args", []),
             f"args must pass --config {CONFIG_MOUNT}/graylane.yaml")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    served = set()
    for name, s in services.items():
        sel = s["spec"].get("selector", {})
        need(sel and sel.items() <= pod_labels.items(), f"Service {name}: selector does not select the pods")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            need(tp in ports or tp in ports.values(), f"Service {name}: targetPort {tp} is no container port")
            served.add(tp if isinstance(tp, str) else next((k for k, v in ports.items() if v == tp), tp))
    for lname in list(listeners) + ["admin"]:
        need(lname in served, f"no Service exposes port {lname!r}")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        need(pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
             "PodDisruptionBudget: selector does not select the pods")
    need(by_kind.get("PodDisruptionBudget"), "no PodDisruptionBudget")

    sms = by_kind.get("ServiceMonitor", [])
    need(sms, "no ServiceMonitor")
    for sm in sms:
        sel = sm["spec"]["selector"].get("matchLabels", {})
        hit = [s for s in services.values() if sel.items() <= s["metadata"].get("labels", {}).items()]
        if need(len(hit) == 1, f"ServiceMonitor selects {len(hit)} Services, want the admin one"):
            port_names = {p.get("name") for p in hit[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                need(ep.get("port") in port_names, f"ServiceMonitor port {ep.get('port')!r} not on {hit[0]['metadata']['name']}")
                need(ep.get("path", "/metrics") == "/metrics", "ServiceMonitor must scrape /metrics")
                tp = dict((p.get("name"), p.get("targetPort")) for p in hit[0]["spec"]["ports"]).get(ep.get("port"))
                need(tp in ("admin", admin_port), "ServiceMonitor must scrape the admin port")
    need(by_kind.get("PrometheusRule"), "no PrometheusRule")
    return cm


def extract(cm, out):
    cfg_dir = pathlib.Path(out) / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    for key in ("graylane.yaml", "rules.yaml"):
        (cfg_dir / key).write_text(cm["data"][key])
    token = yaml.safe_load(cm["data"]["graylane.yaml"]).get("admin", {}).get("token_file")
    if token:
        p = pathlib.Path(token)
        if p.is_absolute():
            raise SystemExit(f"token_file {token} is absolute: keep it relative so the check can supply one")
        tp = cfg_dir / p
        tp.parent.mkdir(parents=True, exist_ok=True)
        tp.write_text("check-only-dummy-token\n")
    print(f"  extracted graylane.yaml, rules.yaml{' and a dummy token' if token else ''} to {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    # 1.30: the oldest with the preStop `sleep` action on by default.
    ap.add_argument("--kube-versions", default="1.30.0")
    ap.add_argument("--extract-config")
    a = ap.parse_args()
    docs = [d for d in yaml.safe_load_all(open(a.rendered)) if d]
    schema_check(docs, a.kube_versions.split(","))
    cm = graylane_checks(docs)
    for e in errors:
        print(f"  FAIL {e}")
    if errors:
        return 1
    print(f"  ok  graylane's needs: probes, preStop, grace > drain, security, directory mount, ports, selectors")
    if a.extract_config and cm:
        extract(cm, a.extract_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
