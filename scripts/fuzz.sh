#!/usr/bin/env bash
# Builds every cargo-fuzz target of fuzz/ once, replays the kept crashes (fuzz/regressions),
# then fuzzes each target for KEYSTEAD_FUZZ_SECONDS (default 20: the smoke run of the default
# test command). Fails when a target crashes (a panic, a failed invariant, a timeout or an
# out-of-memory): the crashing input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                              smoke run, every target
#   KEYSTEAD_FUZZ_SECONDS=600 scripts/fuzz.sh    the long run (opt-in)
#   scripts/fuzz.sh route sd_file                only these targets
#   KEYSTEAD_FUZZ_SEED=0 scripts/fuzz.sh         a random libFuzzer seed (default 1: the smoke
#                                                run mutates the same way on every machine)
#
# Toolchain: the stable one, with RUSTC_BOOTSTRAP=1 for the -Z flags cargo-fuzz passes to
# rustc (no nightly toolchain can be installed on these machines). Built with
# `--sanitizer none` and debug assertions: the project forbids `unsafe`, so the findings are
# panics, overflows and broken invariants, which need no AddressSanitizer; without it the
# build is faster and every target runs about twice as many inputs (docs/reliability.md).
# New inputs found by a run go to fuzz/target/corpus/<target> (git-ignored, kept between
# runs); the committed seeds in fuzz/corpus/<target> are only read.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

SECONDS_PER_TARGET="${KEYSTEAD_FUZZ_SECONDS:-20}"
TRIPLE="x86_64-unknown-linux-gnu"
# An explicit target directory: fuzz/ is a workspace of its own, and an inherited
# CARGO_TARGET_DIR must not mix fuzzing builds into the normal ones.
TARGET_DIR="$ROOT/fuzz/target"
BIN_DIR="$TARGET_DIR/$TRIPLE/release"
RUN_CORPUS="$TARGET_DIR/corpus"
LOG_DIR="$TARGET_DIR/logs"

log() { echo "fuzz: $*"; }

if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz 0.13.2"; then
  bash scripts/install-tools.sh
fi

mapfile -t ALL < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^keystead-fuzz$')
if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  TARGETS=("${ALL[@]}")
fi

log "building ${#TARGETS[@]} targets (release, debug assertions, --sanitizer none)"
start=$(date +%s)
RUSTC_BOOTSTRAP=1 cargo fuzz build -O --debug-assertions --sanitizer none \
  --target-dir "$TARGET_DIR"
log "build took $(($(date +%s) - start)) s"

mkdir -p "$RUN_CORPUS" "$LOG_DIR"
# Files the targets write (data directories of raft_disk, the issuer key copy): on tmpfs when
# there is one, removed when this script ends.
SCRATCH="$(mktemp -d /dev/shm/keystead-fuzz.XXXXXX 2>/dev/null || mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
export KEYSTEAD_FUZZ_SCRATCH="$SCRATCH"
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  bin="$BIN_DIR/$t"
  [ -x "$bin" ] || {
    echo "fuzz: ERROR: no binary for target '$t' (known: ${ALL[*]})" >&2
    exit 1
  }
  mkdir -p "fuzz/artifacts/$t" "$RUN_CORPUS/$t"
  # Kept crashes first: each input once (-runs=0 executes the given corpus and stops).
  if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls -A "fuzz/regressions/$t")" ]; then
    if ! "$bin" -runs=0 "fuzz/regressions/$t" >"$LOG_DIR/$t.regressions.log" 2>&1; then
      echo "fuzz: REGRESSION: target $t crashes again on a kept input; see $LOG_DIR/$t.regressions.log" >&2
      tail -30 "$LOG_DIR/$t.regressions.log" >&2
      failed+=("$t (regression)")
      continue
    fi
  fi
  log "running $t for ${SECONDS_PER_TARGET} s"
  if "$bin" "$RUN_CORPUS/$t" "fuzz/corpus/$t" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
    -dict=fuzz/json.dict -seed="${KEYSTEAD_FUZZ_SEED:-1}" \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$LOG_DIR/$t.log" 2>&1; then
    # The last status line: "#N DONE cov: C ft: F corp: ... exec/s: E ...".
    line="$(grep -E '^#[0-9]+' "$LOG_DIR/$t.log" | tail -1)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG_DIR/$t.log")"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$line")"
    eps="$(sed -n 's/.* exec\/s: \([0-9]*\).*/\1/p' <<<"$line")"
    summary+=("$(printf '%-18s %10s %8s %8s %8s' "$t" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}")")
  else
    echo "fuzz: CRASH: target $t failed; the input is in fuzz/artifacts/$t/; log $LOG_DIR/$t.log" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$LOG_DIR/$t.log" | head -20 >&2 || true
    failed+=("$t")
  fi
done

echo "fuzz: $(printf '%-18s %10s %8s %8s %8s' target execs exec/s cov ft)"
for s in "${summary[@]}"; do echo "fuzz: $s"; done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  echo "fuzz: reproduce with fuzz/target/$TRIPLE/release/<target> <input>; keep the fixed input in fuzz/regressions/<target>/" >&2
  exit 1
fi
echo "fuzz: all ${#TARGETS[@]} targets passed"
