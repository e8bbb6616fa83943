#!/usr/bin/env bash
# Offline checks of the Helm chart, the generated CRDs and the example resources.
# Each check is a named test; the last line is `chart: N passed, M failed` and the exit status
# is non-zero when any failed. Tools come from .tools/bin and .venv (scripts/install-tools.sh,
# run first unless KEYSTEAD_SKIP_INSTALL=1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

if [ "${KEYSTEAD_SKIP_INSTALL:-0}" != 1 ]; then
  bash scripts/install-tools.sh >/dev/null
fi

HELM="$ROOT/.tools/bin/helm"
VENV="$ROOT/.venv/bin"
CHART="$ROOT/charts/keystead"
CUSTOM_VALUES="$CHART/ci/custom-values.yaml"
KUBE_VERSIONS=(1.30 1.37)
for tool in "$HELM" "$VENV/kubernetes-validate" "$VENV/yamllint" "$VENV/python"; do
  [ -x "$tool" ] || {
    echo "missing $tool; run scripts/install-tools.sh" >&2
    exit 1
  }
done

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# helm keeps its cache and config out of $HOME, inside the temporary directory.
export HELM_CACHE_HOME="$OUT/helm-cache" HELM_CONFIG_HOME="$OUT/helm-config" HELM_DATA_HOME="$OUT/helm-data"

PASSED=0
FAILED=0
FAILED_NAMES=()

# run_test NAME COMMAND...: runs the command, shows its output only when it fails.
# Note: inside `if`, bash ignores `set -e` in the called functions, so every step of a check
# function below ends in `|| return 1` (or is its last command).
run_test() {
  local name="$1"
  shift
  local log="$OUT/log.$((PASSED + FAILED))"
  if "$@" >"$log" 2>&1; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    echo "FAIL $name"
    sed 's/^/       /' "$log" | tail -n 60
  fi
}

# --- the checks ------------------------------------------------------------------------

lint() { "$HELM" lint --strict "$CHART" "$@"; }

render() { # render OUTFILE [helm args]
  local out="$1"
  shift
  "$HELM" template keystead "$CHART" --namespace keystead-system "$@" >"$out" || return 1
  [ -s "$out" ] || {
    echo "helm template rendered nothing"
    return 1
  }
}

# Validate rendered objects; custom resources (ServiceMonitor) have no bundled schema and are
# only warned about. Fails on any error, and when an expected kind is missing.
validate_rendered() { # FILE VERSION EXPECTED-KINDS...
  local file="$1" version="$2"
  shift 2
  "$VENV/kubernetes-validate" --strict --quiet -k "$version" "$file" || return 1
  for kind in "$@"; do
    grep -q "^kind: $kind$" "$file" || {
      echo "expected a $kind in $file"
      return 1
    }
  done
}

# The restricted Pod Security Standard essentials, read from the rendered Deployment.
check_pod_security() { # FILE
  "$VENV/python" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deps = [d for d in docs if d["kind"] == "Deployment"]
assert len(deps) == 1, f"expected one Deployment, found {len(deps)}"
pod = deps[0]["spec"]["template"]["spec"]
psc = pod.get("securityContext", {})
problems = []
if psc.get("runAsNonRoot") is not True: problems.append("pod runAsNonRoot is not true")
if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault": problems.append("pod seccompProfile is not RuntimeDefault")
for c in pod["containers"]:
    sc = c.get("securityContext", {})
    if sc.get("runAsUser") != 65532: problems.append(f"{c['name']}: runAsUser is not 65532")
    if sc.get("readOnlyRootFilesystem") is not True: problems.append(f"{c['name']}: root filesystem is writable")
    if sc.get("allowPrivilegeEscalation") is not False: problems.append(f"{c['name']}: allowPrivilegeEscalation is not false")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]: problems.append(f"{c['name']}: capabilities are not drop [ALL]")
    if sc.get("privileged"): problems.append(f"{c['name']}: privileged")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        if c.get(probe, {}).get("httpGet", {}).get("path") != path: problems.append(f"{c['name']}: {probe} is not GET {path}")
    if "resources" not in c: problems.append(f"{c['name']}: no resources")
if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"): problems.append("host namespaces used")
if problems:
    print("\n".join(problems)); sys.exit(1)
PY
}

# No wildcard verbs or resources, no RBAC-object or escalate/bind/impersonate rights.
check_rbac() { # FILE
  "$VENV/python" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
problems = []
for d in docs:
    if d["kind"] not in ("ClusterRole", "Role"): continue
    for r in d.get("rules", []):
        if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
            problems.append(f"{d['kind']} {d['metadata']['name']}: wildcard in {r}")
        if set(r.get("verbs", [])) & {"escalate", "bind", "impersonate"}:
            problems.append(f"{d['kind']} {d['metadata']['name']}: escalation verb in {r}")
        if "rbac.authorization.k8s.io" in r.get("apiGroups", []):
            problems.append(f"{d['kind']} {d['metadata']['name']}: rights on RBAC objects")
        if "serviceaccounts/token" in r.get("resources", []) and (d["kind"] != "Role" or not r.get("resourceNames")):
            problems.append(f"{d['kind']} {d['metadata']['name']}: token creation not limited to one ServiceAccount")
        if "pods" in r.get("resources", []) and {"create", "update"} & set(r.get("verbs", [])):
            problems.append(f"{d['kind']} {d['metadata']['name']}: may create pods directly")
if problems:
    print("\n".join(problems)); sys.exit(1)
PY
}

# The chart's copy of the CRDs must be the generated ones, byte for byte.
check_crd_copy() {
  local a b
  a="$(cd "$ROOT/crds" && ls)"
  b="$(cd "$CHART/crds" && ls)"
  if [ "$a" != "$b" ]; then
    echo "crds/ and charts/keystead/crds/ hold different files:"
    diff <(echo "$a") <(echo "$b") || true
    echo "regenerate: cargo run -p keystead-operator -- crdgen --out crds --out charts/keystead/crds"
    return 1
  fi
  diff -r "$ROOT/crds" "$CHART/crds" || {
    echo "charts/keystead/crds/ drifted from crds/; regenerate with:"
    echo "  cargo run -p keystead-operator -- crdgen --out crds --out charts/keystead/crds"
    return 1
  }
}

yamllint_examples() {
  "$VENV/yamllint" --strict -d "{extends: default, rules: {line-length: {max: 120}, document-start: disable, indentation: {indent-sequences: consistent}}}" \
    "$ROOT/docs/examples" "$CUSTOM_VALUES" "$CHART/values.yaml" "$CHART/Chart.yaml"
}

check_values_schema_rejects_unknown() {
  if "$HELM" template keystead "$CHART" --set no.such.value=1 >/dev/null 2>&1; then
    echo "values.schema.json accepted an unknown value (no.such.value)"
    return 1
  fi
}

echo "== chart: $CHART"
run_test "helm lint --strict (default values)" lint
run_test "helm lint --strict (ci/custom-values.yaml)" lint -f "$CUSTOM_VALUES"
run_test "helm template (default values)" render "$OUT/default.yaml"
run_test "helm template (ci/custom-values.yaml)" render "$OUT/custom.yaml" -f "$CUSTOM_VALUES"
run_test "values.schema.json rejects unknown values" check_values_schema_rejects_unknown
for v in "${KUBE_VERSIONS[@]}"; do
  run_test "kubernetes-validate $v strict (default values)" \
    validate_rendered "$OUT/default.yaml" "$v" Deployment ClusterRole Role ServiceAccount Service
  run_test "kubernetes-validate $v strict (custom values)" \
    validate_rendered "$OUT/custom.yaml" "$v" Deployment NetworkPolicy ServiceMonitor ValidatingAdmissionPolicy
  run_test "kubernetes-validate $v strict (crds/*.yaml as CustomResourceDefinitions)" \
    "$VENV/kubernetes-validate" --strict --quiet -k "$v" "$ROOT"/crds/*.yaml
done
run_test "restricted pod security (default values)" check_pod_security "$OUT/default.yaml"
run_test "restricted pod security (custom values)" check_pod_security "$OUT/custom.yaml"
run_test "least-privilege RBAC (no wildcards, no escalation)" check_rbac "$OUT/default.yaml"
run_test "charts/keystead/crds is byte-identical to crds" check_crd_copy
run_test "yamllint examples and values" yamllint_examples
run_test "examples valid / invalid against the CRD schemas (validate_examples.py)" \
  "$VENV/python" scripts/validate_examples.py
run_test "CEL rules and transitions (test_cel_rules.py)" \
  "$VENV/python" -m pytest -q -p no:cacheprovider scripts/test_cel_rules.py

if [ "$FAILED" -gt 0 ]; then
  echo "failed: ${FAILED_NAMES[*]}"
fi
echo "chart: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
