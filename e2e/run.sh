#!/usr/bin/env bash
# One command for the kind end-to-end suite:
#   e2e/run.sh            create the cluster, build and load the images, install the chart, run the suite
#   e2e/run.sh --keep     keep the cluster (and every test namespace) afterwards
# Needs: docker (a running engine), kind, kubectl, helm, cargo. Not part of scripts/test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KEYSTEAD_E2E_CLUSTER:-keystead-e2e}"
TAG="${KEYSTEAD_E2E_TAG:-e2e}"
OPERATOR_IMAGE="ghcr.io/keystead/keystead-operator:${TAG}"
PARTITION_IMAGE="ghcr.io/keystead/keystead-partition:${TAG}"
# A second tag of the same partition image: the upgrade test rolls the pool onto it.
PARTITION_IMAGE_NEXT="ghcr.io/keystead/keystead-partition:${TAG}-next"
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e: no Docker engine is running" >&2; exit 2; }

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "e2e: failed (exit $rc); operator logs:" >&2
    kubectl logs -n keystead-system -l app.kubernetes.io/name=keystead --tail=300 >&2 || true
  fi
  if [[ $KEEP -eq 0 ]]; then
    kind delete cluster --name "$CLUSTER" || true
  else
    echo "e2e: cluster $CLUSTER kept (kind delete cluster --name $CLUSTER)"
  fi
}
trap cleanup EXIT

echo "e2e: creating kind cluster $CLUSTER (three zones)"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config "$ROOT/e2e/manifests/kind.yaml" --name "$CLUSTER" --wait 180s

echo "e2e: building images"
docker build -f "$ROOT/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$ROOT"
docker build -f "$ROOT/partition-image/Dockerfile" -t "$PARTITION_IMAGE" "$ROOT"
docker build -f "$ROOT/kms-plugin/Dockerfile" -t "keystead-kms-plugin:$TAG" "$ROOT"
docker tag "$PARTITION_IMAGE" "$PARTITION_IMAGE_NEXT"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$PARTITION_IMAGE" "$PARTITION_IMAGE_NEXT"

echo "e2e: installing the chart"
helm upgrade --install keystead "$ROOT/charts/keystead" \
  --namespace keystead-system --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=Never \
  --wait --timeout 5m
kubectl wait --for=condition=Established crd/managedhsms.keystead.io --timeout=60s

echo "e2e: building kubectl-hsm and running the suite"
cargo build -p kubectl-hsm
export KUBECTL_HSM="$ROOT/target/debug/kubectl-hsm"
export KEYSTEAD_E2E_PARTITION_IMAGE="$PARTITION_IMAGE"
export KEYSTEAD_E2E_PARTITION_IMAGE_NEXT="$PARTITION_IMAGE_NEXT"
[[ $KEEP -eq 1 ]] && export KEYSTEAD_E2E_KEEP=1
cargo test -p keystead-e2e -- --ignored --test-threads=1
