#!/usr/bin/env bash
# The whole default test suite. Slow tiers are opt-in:
#   KEYSTEAD_LONG_FAULTS=1  the long randomized fault-injection run (see docs/reliability.md)
#   e2e/run.sh              the kind end-to-end suite (needs Docker and kind)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh

echo "== Rust tests (unit, property, integration on real processes)"
cargo nextest run --workspace --no-fail-fast --failure-output final

echo "== chart, CRD and example validation"
bash scripts/test-chart.sh

echo "== Azure SDK compatibility (official Python packages against a local pool)"
bash scripts/test-compat.sh
