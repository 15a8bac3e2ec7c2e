#!/usr/bin/env python3
"""Checks deploy/kubernetes/: every manifest validates against Kubernetes' schemas
(kubernetes-validate, strict), the kustomization lists every manifest, and the
PrometheusRule holds exactly the groups of deploy/prometheus/hangwatch.rules.yml.
Exit status 1 with a line per problem."""
import glob
import os
import sys

import kubernetes_validate
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import importlib

gen = importlib.import_module("generate-prometheusrule")

ROOT = gen.ROOT
K8S = os.path.join(ROOT, "deploy/kubernetes")
problems = []
checked = 0
# The examples (merged by users into their own objects) validate too.
for path in sorted(glob.glob(os.path.join(K8S, "*.yaml")) + glob.glob(os.path.join(K8S, "examples", "*.yaml"))):
    name = os.path.relpath(path, K8S)
    if name == "kustomization.yaml":
        continue
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            kind = doc.get("kind")
            if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                # The Prometheus Operator's kinds: not in Kubernetes' schemas.
                if not doc.get("spec"):
                    problems.append(f"{name}: {kind} without spec")
                continue
            try:
                kubernetes_validate.validate(doc, "1.30.0", strict=True)
                checked += 1
            except Exception as e:  # the library's errors carry the path and reason
                first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                problems.append(f"{name}: {kind}: {first}")
with open(os.path.join(K8S, "kustomization.yaml")) as f:
    kustomization = yaml.safe_load(f)
listed = set(kustomization["resources"])
# The image scripts/package.sh builds is the one the DaemonSet and the kustomization name.
import tomllib  # noqa: E402
with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
    version = tomllib.load(f)["workspace"]["package"]["version"]
built = f"ghcr.io/hangwatch/hangwatch:{version}"
with open(os.path.join(K8S, "daemonset.yaml")) as f:
    ds = yaml.safe_load(f)
images = [c["image"] for c in ds["spec"]["template"]["spec"]["containers"]]
if images != [built]:
    problems.append(f"daemonset.yaml runs {images}, scripts/package.sh builds {built}")
named = [(i.get("name"), i.get("newTag")) for i in kustomization.get("images", [])]
if named != [tuple(built.rsplit(":", 1))]:
    problems.append(f"kustomization.yaml images {named} != the built {built}")
present = {os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))} - {"kustomization.yaml"}
if listed != present:
    problems.append(f"kustomization resources {sorted(listed)} != files {sorted(present)}")
with open(os.path.join(K8S, "prometheusrule.yaml")) as f:
    if yaml.safe_load(f) != gen.rule():
        problems.append("prometheusrule.yaml differs from deploy/prometheus/hangwatch.rules.yml: run scripts/generate-prometheusrule.py")
for p in problems:
    print(p)
print(f"{checked} Kubernetes objects valid (strict), {len(problems)} problems")
sys.exit(1 if problems else 0)
