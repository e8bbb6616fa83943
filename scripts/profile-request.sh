#!/usr/bin/env bash
# Instruction counts per request of a local pool's partitions (callgrind), per operation —
# repeatable on a loaded machine, unlike timings. Not part of the test suite; see
# docs/benchmarks.md ("Where a request's instructions go").
#
#   scripts/profile-request.sh OUT [OP...]     OP: es256-sign (default), rs256-sign,
#                                              rsa-oaep-256-wrap, rsa-oaep-256-encrypt, get-key
#
# 1. OUT/pool: a local pool activated with the benchmark keys (made once, natively).
# 2. The pool is started again under valgrind --tool=callgrind (every partition, with
#    instrumentation off); `keystead-bench calls` warms 64 keep-alive clients up, switches
#    instrumentation on in every partition, sends PROFILE_REQUESTS requests (default 2000)
#    to the Raft leader, dumps the counters (OUT/callgrind.<pid>.<n>) and switches it off again.
# 3. OUT/<op>.txt: instructions per request per partition, and the inclusive cost per
#    request of the request path's stages (callgrind_annotate --inclusive=yes).
#
# Environment: CARGO_TARGET_DIR (binaries in its release/), PROFILE_REQUESTS,
# PROFILE_CLIENTS (64). Kernel time (loopback TCP, epoll) is not counted by callgrind.
#
# PROFILE_NATIVE=1: no valgrind; the pool pinned to CPU 1 and the clients to CPU 0 (as the
# pinned rows of scripts/bench.sh), and `calls` prints the pool's CPU time (user + system,
# from /proc) per request — kernel time included, and steadier than a rate on a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${PARTITION_BIN:-$TARGET/release/keystead-partition}
BENCH=${BENCH_BIN:-$TARGET/release/keystead-bench}
OUT=$(realpath -m "${1:?usage: scripts/profile-request.sh OUT [OP...]}")
shift
OPS=("$@")
[ ${#OPS[@]} -gt 0 ] || OPS=(es256-sign)
N=${PROFILE_REQUESTS:-2000}
CLIENTS=${PROFILE_CLIENTS:-64}
POOL="$OUT/pool"
mkdir -p "$OUT"

if [ ! -f "$POOL/pool.json" ]; then
  echo "== a pool with the benchmark keys in $POOL"
  "$BENCH" load --dir "$POOL" --start "$BIN" --ops es256-sign --clients 2 \
    --warmup 100ms --duration 1s >"$OUT/setup.log" 2>&1 || { tail -20 "$OUT/setup.log"; exit 1; }
fi

if [ "${PROFILE_NATIVE:-0}" = 1 ]; then
  taskset -c 1 "$BIN" local --dir "$POOL" >"$OUT/runner.log" 2>&1 &
  RUNNER=$!
  trap 'kill -TERM $RUNNER 2>/dev/null; wait $RUNNER 2>/dev/null' EXIT
  for op in "${OPS[@]}"; do
    taskset -c 0 "$BENCH" calls --dir "$POOL" --op "$op" --clients "$CLIENTS" --requests "$N" \
      | tee -a "$OUT/native.txt"
  done
  exit 0
fi

echo "== the pool under callgrind (instrumentation off until the requests are sent)"
valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
  --callgrind-out-file="$OUT/callgrind.%p" "$BIN" local --dir "$POOL" >"$OUT/runner.log" 2>&1 &
RUNNER=$!
stop() {
  kill -TERM "$RUNNER" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$RUNNER" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$RUNNER" 2>/dev/null || true
}
trap stop EXIT

partitions() {
  for p in p0 p1 p2; do
    pgrep -f -- "serve --config $POOL/$p/config.json" | head -1
  done
}
# What `calls` runs before and after the counted requests: HOOK on | HOOK off LABEL.
HOOK="$OUT/hook.sh"
{
  echo '#!/usr/bin/env bash'
  echo 'set -e'
  echo "for p in \$(for n in p0 p1 p2; do pgrep -f -- \"serve --config $POOL/\$n/config.json\" | head -1; done); do"
  echo '  if [ "$1" = on ]; then callgrind_control -i on $p >/dev/null; callgrind_control -z $p >/dev/null'
  echo '  else callgrind_control --dump="$2" $p >/dev/null; callgrind_control -i off $p >/dev/null; fi'
  echo 'done'
} >"$HOOK"
chmod +x "$HOOK"

for op in "${OPS[@]}"; do
  echo "== $op: $N requests to the leader over $CLIENTS clients"
  rm -f "$OUT"/callgrind.*.[0-9]*
  "$BENCH" calls --dir "$POOL" --op "$op" --clients "$CLIENTS" --requests "$N" \
    --before "$HOOK on" --after "$HOOK off $op"
  {
    echo "# $op: $N requests to the leader, $CLIENTS clients, $(basename "$BIN") of commit $(git rev-parse --short HEAD)"
    i=0
    for pid in $(partitions); do
      f=$(ls -t "$OUT"/callgrind."$pid".[0-9]* 2>/dev/null | head -1)
      [ -n "$f" ] || { echo "p$i: no dump"; i=$((i + 1)); continue; }
      total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
      echo "p$i: $((total / N)) instructions per request (total $total)"
      cp "$f" "$OUT/$op.p$i.callgrind"
      i=$((i + 1))
    done
  } | tee "$OUT/$op.txt"
done
