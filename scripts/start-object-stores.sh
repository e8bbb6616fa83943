#!/usr/bin/env bash
# Starts (or stops) the object stores the backup tests use, on loopback only:
#   Azurite (Azure Blob emulator, npm azurite, installed by scripts/install-tools.sh into
#   .tools/azurite) and moto (S3-compatible, PyPI moto[server], in .venv).
#
#   scripts/start-object-stores.sh [start]   start both if not running (idempotent), wait
#                                            until they answer (deadline 60 s), create the
#                                            test container and bucket, print env vars
#   scripts/start-object-stores.sh stop      stop the servers this script started
#
# Printed (KEY=VALUE, eval-able):
#   KEYSTEAD_TEST_AZURITE_URL   http://127.0.0.1:<port>/devstoreaccount1/<container>
#   KEYSTEAD_TEST_S3_ENDPOINT   http://127.0.0.1:<port>
#   KEYSTEAD_TEST_S3_BUCKET     the bucket name
# Ports: KEYSTEAD_AZURITE_PORT (default 10010), KEYSTEAD_S3_PORT (default 10020).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
RUN="$ROOT/.tools/object-stores"
AZ_PORT="${KEYSTEAD_AZURITE_PORT:-10010}"
S3_PORT="${KEYSTEAD_S3_PORT:-10020}"
CONTAINER="keystead-backups"
BUCKET="keystead-backups"
ACCOUNT="devstoreaccount1"
# The emulator's published development key (not a secret).
AZ_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE="$ROOT/.tools/azurite/node_modules/.bin/azurite-blob"
MOTO="$ROOT/.venv/bin/moto_server"
PY="$ROOT/.venv/bin/python" # only the standard library is used below
[ -x "$PY" ] || PY="$(command -v python3)"

log() { echo "object-stores: $*" >&2; }
die() {
  echo "object-stores: ERROR: $*" >&2
  exit 1
}

mkdir -p "$RUN"
exec 8>"$RUN/.lock"
flock 8

stop_one() { # name
  local pidfile="$RUN/$1.pid"
  if [ -f "$pidfile" ]; then
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      log "stopped $1 (pid $pid)"
    fi
    rm -f "$pidfile"
  fi
}

if [ "${1:-start}" = "stop" ]; then
  stop_one azurite
  stop_one moto
  exit 0
fi
[ "${1:-start}" = "start" ] || die "usage: $0 [start|stop]"

answers() { # url
  curl -s -o /dev/null --max-time 2 "$1"
}

wait_for() { # name url
  local deadline=$((SECONDS + 60))
  until answers "$2"; do
    [ $SECONDS -lt $deadline ] || die "$1 did not answer at $2 within 60 s (see $RUN/$1.log)"
    sleep 0.2
  done
}

start_azurite() {
  if answers "http://127.0.0.1:$AZ_PORT/"; then
    log "azurite already answers on 127.0.0.1:$AZ_PORT"
    return
  fi
  [ -x "$AZURITE" ] || die "azurite is not installed in .tools/azurite; run scripts/install-tools.sh"
  setsid "$AZURITE" --blobHost 127.0.0.1 --blobPort "$AZ_PORT"\
    --silent --skipApiVersionCheck --inMemoryPersistence >"$RUN/azurite.log" 2>&1 8>&- &
  echo $! >"$RUN/azurite.pid"
  wait_for azurite "http://127.0.0.1:$AZ_PORT/"
  log "azurite started on 127.0.0.1:$AZ_PORT (pid $(cat "$RUN/azurite.pid"))"
}

start_moto() {
  if answers "http://127.0.0.1:$S3_PORT/moto-api/"; then
    log "moto already answers on 127.0.0.1:$S3_PORT"
    return
  fi
  [ -x "$MOTO" ] || die "moto_server is not installed in .venv; run scripts/install-tools.sh"
  setsid "$MOTO" -H 127.0.0.1 -p "$S3_PORT" >"$RUN/moto.log" 2>&1 8>&- &
  echo $! >"$RUN/moto.pid"
  wait_for moto "http://127.0.0.1:$S3_PORT/moto-api/"
  log "moto started on 127.0.0.1:$S3_PORT (pid $(cat "$RUN/moto.pid"))"
}

start_azurite
start_moto

# The container (Shared Key signed with the emulator key) and the bucket; both idempotent.
"$PY" - "$AZ_PORT" "$ACCOUNT" "$AZ_KEY" "$CONTAINER" "$S3_PORT" "$BUCKET" <<'PYEOF'
import base64, hashlib, hmac, sys, urllib.request, urllib.error
from email.utils import formatdate
az_port, account, key, container, s3_port, bucket = sys.argv[1:]
date = formatdate(usegmt=True)
version = "2021-08-06"
path = f"/{account}/{container}"
sts = "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n/{account}{path}\nrestype:container"
sig = base64.b64encode(hmac.new(base64.b64decode(key), sts.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"http://127.0.0.1:{az_port}{path}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{sig}", "Content-Length": "0"})
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"cannot create the Azurite container: HTTP {e.code} {e.read()[:300]!r}")
req = urllib.request.Request(f"http://127.0.0.1:{s3_port}/{bucket}", method="PUT", data=b"")
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"cannot create the S3 bucket: HTTP {e.code} {e.read()[:300]!r}")
PYEOF

echo "KEYSTEAD_TEST_AZURITE_URL=http://127.0.0.1:$AZ_PORT/$ACCOUNT/$CONTAINER"
echo "KEYSTEAD_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
echo "KEYSTEAD_TEST_S3_BUCKET=$BUCKET"
