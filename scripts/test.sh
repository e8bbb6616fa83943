#!/usr/bin/env bash
# The whole default test suite. Slow tiers are opt-in:
#   KEYSTEAD_LONG_REGION_FAULTS=N  the long randomized fault run across two regions (N faults)
#   KEYSTEAD_LONG_FAULTS=1  the long randomized fault run, every history checked for
#                           linearizability (hours; see docs/reliability.md)
#   KEYSTEAD_FUZZ_SECONDS=600 scripts/fuzz.sh   the long fuzzing run (the smoke run is below)
#   e2e/run.sh              the kind end-to-end suite (needs Docker and kind)
# The e2e tests on a real control plane (e2e/tests/{cluster,operator,backups}.rs) are part of the default run:
# this script starts the dev cluster (scripts/dev-cluster.sh) and stops it at the end.
# e2e/tests/kms.rs starts a dev cluster of its own (its API server uses the KMS plugin), and
# e2e/tests/regions.rs two (two regions, two operators), with the binaries
# `cargo build --workspace --bins` builds below (keystead-kms-plugin among them).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh

# Object stores for the backup tests (Azurite and an S3-compatible server, loopback only);
# the tests also start them on demand. Stopped when this script ends.
bash scripts/start-object-stores.sh >/dev/null
trap 'bash scripts/start-object-stores.sh stop' EXIT

echo "== build (one profile: the workspace, its tests and binaries)"
cargo nextest run --workspace --no-run
# Binaries no test of their own package needs (the node agent) are built here too.
cargo build --workspace --bins

echo "== the real control plane (scripts/dev-cluster.sh; docs/dev-cluster.md)"
# kube-apiserver, kube-controller-manager, kube-scheduler and etcd built from the Kubernetes
# Go modules (cached in .tools/ by version), the node agent with three Nodes, the chart
# installed with helm. The e2e tests (e2e/tests/{cluster,operator,backups}.rs) run on it, each in a namespace.
DEV_CLUSTER="$(pwd)/target/dev-cluster"
bash scripts/dev-cluster.sh down "$DEV_CLUSTER" >/dev/null 2>&1 || true
rm -rf "$DEV_CLUSTER"
KEYSTEAD_BIN_DIR="$(pwd)/target/debug" bash scripts/dev-cluster.sh up "$DEV_CLUSTER" >/dev/null
export KEYSTEAD_DEV_CLUSTER="$DEV_CLUSTER"
trap 'bash scripts/dev-cluster.sh down "$DEV_CLUSTER" >/dev/null 2>&1; bash scripts/start-object-stores.sh stop' EXIT

echo "== Rust tests (unit, property, integration on real processes, e2e on the dev cluster)"
cargo nextest run --workspace --no-fail-fast --failure-output final

if [ "${KEYSTEAD_LONG_FAULTS:-}" = "1" ]; then
  echo "== long randomized fault run, every history checked (KEYSTEAD_LONG_FAULTS=1)"
  cargo nextest run -p keystead-partition --test linearizability --run-ignored only --no-capture
fi

if [ -n "${KEYSTEAD_LONG_REGION_FAULTS:-}" ]; then
  echo "== long randomized region fault run: ${KEYSTEAD_LONG_REGION_FAULTS} faults (KEYSTEAD_LONG_REGION_FAULTS)"
  cargo nextest run -p keystead-partition --test regions_faults --run-ignored only --no-capture
fi

echo "== chart, CRD and example validation"
bash scripts/test-chart.sh

echo "== Azure SDK compatibility (official Python packages against a local pool)"
bash scripts/test-compat.sh

echo "== fuzz smoke"
# Every cargo-fuzz target for KEYSTEAD_FUZZ_SECONDS (default 20) each, and the kept crashes.
bash scripts/fuzz.sh
