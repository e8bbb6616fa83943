#!/usr/bin/env bash
# Azure SDK compatibility suite: the official Python clients (azure-keyvault-keys,
# -administration, -securitydomain) against a real local pool started by the tests themselves.
#
# Builds nothing: it needs target/debug/keystead-partition and target/debug/kubectl-hsm
# (`cargo build -p keystead-partition -p kubectl-hsm`) and .venv (`scripts/install-tools.sh`).
# Extra arguments go to pytest, e.g. `scripts/test-compat.sh -k rbac -x`.
# Exit status: pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=0
for bin in target/debug/keystead-partition target/debug/kubectl-hsm; do
    if [[ ! -x "$bin" ]]; then
        echo "test-compat: $bin is missing; run: cargo build -p keystead-partition -p kubectl-hsm" >&2
        missing=1
    fi
done
if [[ ! -x .venv/bin/python ]]; then
    echo "test-compat: .venv is missing; run: scripts/install-tools.sh" >&2
    missing=1
fi
if [[ "$missing" -ne 0 ]]; then
    exit 2
fi

.venv/bin/python -m pytest tests/compat -q -p no:cacheprovider "$@"
exit $?
