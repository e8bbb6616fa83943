#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, without containers (docs/dev-cluster.md):
#
#   scripts/dev-cluster.sh up DIR     build (once) and start etcd, kube-apiserver,
#                                     kube-controller-manager and kube-scheduler on loopback,
#                                     the node agent with three Nodes in three zones, then
#                                     `helm install` the chart; writes DIR/kubeconfig (admin)
#   scripts/dev-cluster.sh down DIR   stop everything `up` started in DIR (DIR is kept for
#                                     inspection; the next `up DIR` starts afresh)
#   scripts/dev-cluster.sh env DIR    print the cluster's settings (KEY=VALUE)
#   scripts/dev-cluster.sh restart-apiserver DIR   stop and start only kube-apiserver, with
#                                     the same flags, and wait until it is live (not ready)
#
# Settings (environment): KEYSTEAD_DEV_NET=N (0..63) puts pods on 100.(64+N).0.0/16 (added to
# the loopback interface, one /32 per pod) and Services on 127.(100+N).0.0/16 (default: random
# N, so clusters on one machine do not collide);
# KEYSTEAD_BIN_DIR: where keystead-operator, keystead-partition and keystead-node-agent are
# (default: built with cargo into target/debug); KEYSTEAD_DEV_ENCRYPTION_CONFIG: an
# EncryptionConfiguration for kube-apiserver (reloaded automatically; docs/kms-plugin.md).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
DIR="${2:-}"
[ -n "$cmd" ] && [ -n "$DIR" ] || {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
TOOLS="$ROOT/.tools/bin"
log() { echo "dev-cluster: $*" >&2; }
die() {
  echo "dev-cluster: ERROR: $*" >&2
  exit 1
}

# Wait until "$@" succeeds, for at most $1 seconds (a deadline, checked every 0.5 s).
wait_for() {
  local limit="$1" what="$2"
  shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || {
      log "not reached within ${limit}s: $what"
      return 1
    }
    sleep 0.5
  done
}

stop_pid() {
  local name="$1" pidfile="$DIR/run/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "stopped $name"
}

down() {
  # The node agent first: it stops the containers it runs.
  for p in node-agent kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_pid "$p"
  done
  # Pod addresses the agent could not release (it was killed): off the loopback interface.
  if [ -f "$DIR/agent/addresses.json" ]; then
    python3 -c 'import json,sys; print("\n".join(json.load(open(sys.argv[1])).values()))' \
      "$DIR/agent/addresses.json" | while read -r ip; do
      ip addr del "$ip/32" dev lo 2>/dev/null || true
    done
  fi
}

if [ "$cmd" = down ]; then
  down
  exit 0
fi
if [ "$cmd" = env ]; then
  cat "$DIR/cluster.env"
  exit 0
fi
if [ "$cmd" = restart-apiserver ]; then
  # The command line `up` recorded (NUL-separated); logs are appended to the same file.
  [ -f "$DIR/run/kube-apiserver.cmd" ] || die "no kube-apiserver command in $DIR/run (is the cluster up?)"
  mapfile -d '' APISERVER_CMD <"$DIR/run/kube-apiserver.cmd"
  stop_pid kube-apiserver
  setsid "${APISERVER_CMD[@]}" >>"$DIR/logs/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/kube-apiserver.pid"
  # Live, not ready: with its KMS plugin down the API server is not ready at all (its cache
  # of encrypted resources cannot sync); the caller waits for /readyz if it wants it.
  wait_for 90 "kube-apiserver live" "$TOOLS/kubectl" --kubeconfig "$DIR/kubeconfig" get --raw /livez
  log "kube-apiserver restarted"
  exit 0
fi
[ "$cmd" = up ] || die "unknown command $cmd (up, down, env, restart-apiserver)"
if ls "$DIR"/run/*.pid >/dev/null 2>&1; then
  die "$DIR already has a running cluster (scripts/dev-cluster.sh down $DIR first)"
fi
# A stopped cluster's state (kept by `down` for inspection) is not resumed: `up` starts a
# new cluster, with new ports and certificates, so the old state goes.
if [ -e "$DIR/cluster.env" ] || [ -d "$DIR/etcd" ]; then
  log "removing the state of the stopped cluster in $DIR (up starts a new one)"
  rm -rf "$DIR/etcd" "$DIR/agent" "$DIR/run" "$DIR/logs" "$DIR/pki" "$DIR/cluster.env" \
    "$DIR"/*.kubeconfig "$DIR/kubeconfig" "$DIR/audit-policy.yaml"
fi

# --- binaries ----------------------------------------------------------------------------
bash "$ROOT/scripts/install-tools.sh" >/dev/null
CP="$(bash "$ROOT/e2e/control-plane/build.sh")"
if [ -z "${KEYSTEAD_BIN_DIR:-}" ]; then
  log "building the workspace binaries (cargo build)"
  (cd "$ROOT" && cargo build -q -p keystead-operator -p keystead-partition -p keystead-node-agent --bins)
  KEYSTEAD_BIN_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
fi
for b in keystead-operator keystead-partition keystead-node-agent; do
  [ -x "$KEYSTEAD_BIN_DIR/$b" ] || die "$KEYSTEAD_BIN_DIR/$b is missing"
done

# --- addresses and ports -----------------------------------------------------------------
NET="${KEYSTEAD_DEV_NET:-$((RANDOM % 64))}"
POD_NET="100.$((64 + NET))"
SVC_NET=$((100 + NET))
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ETCD_PORT="$(free_port)"
ETCD_PEER_PORT="$(free_port)"
API_PORT="$(free_port)"
API="https://127.0.0.1:$API_PORT"
SERVICE_CIDR="127.$SVC_NET.0.0/16"
API_SERVICE_IP="127.$SVC_NET.0.1"
mkdir -p "$DIR/run" "$DIR/logs" "$DIR/pki"
cat >"$DIR/cluster.env" <<EOF
KEYSTEAD_DEV_CLUSTER=$DIR
KUBECONFIG=$DIR/kubeconfig
API_SERVER=$API
POD_NETWORK=$POD_NET
SERVICE_CIDR=$SERVICE_CIDR
ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
CONTROL_PLANE_BIN=$CP
AUDIT_LOG=$DIR/logs/audit.log
EOF

# --- PKI (ECDSA P-256; the CA key stays in DIR/pki, mode 600) ----------------------------
PKI="$DIR/pki"
ossl() { openssl "$@" 2>/dev/null; }
if [ ! -f "$PKI/ca.crt" ]; then
  ossl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key"
  ossl req -x509 -new -key "$PKI/ca.key" -subj "/CN=keystead-dev-cluster-ca" -days 3650 -out "$PKI/ca.crt"
  ossl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key"
  ossl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
fi
cert() { # name subject [san]
  local name="$1" subj="$2" san="${3:-}"
  ossl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key"
  ossl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  local ext="$PKI/$name.ext"
  if [ -n "$san" ]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -extfile "$ext" -out "$PKI/$name.crt"
  rm -f "$PKI/$name.csr" "$ext"
}
cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:$API_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=kubernetes-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
chmod 600 "$PKI"/*.key

kubeconfig() { # file cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: keystead-dev
  cluster:
    server: $API
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: keystead-dev
  context:
    cluster: keystead-dev
    user: $2
current-context: keystead-dev
EOF
  chmod 600 "$1"
}
kubeconfig "$DIR/kubeconfig" admin
kubeconfig "$DIR/controller-manager.kubeconfig" controller-manager
kubeconfig "$DIR/scheduler.kubeconfig" scheduler

start() { # name binary args...
  local name="$1"
  shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/$name.pid"
}
trap 'st=$?; if [ $st -ne 0 ]; then log "up failed; stopping what started (logs in $DIR/logs)"; down; fi' EXIT

# --- etcd --------------------------------------------------------------------------------
# --unsafe-no-fsync: a throw-away test cluster on a shared disk; never for data one keeps.
start etcd "$CP/etcd" --name dev --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "dev=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync \
  --log-level warn --quota-backend-bytes 1073741824
wait_for 30 "etcd answers" curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver ----------------------------------------------------------------------
cat >"$DIR/audit-policy.yaml" <<'EOF'
# Reads are not recorded; every change is, with its user and object (no bodies).
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    verbs: [get, list, watch]
  - level: Metadata
EOF
ENCRYPTION_ARGS=()
if [ -n "${KEYSTEAD_DEV_ENCRYPTION_CONFIG:-}" ]; then
  ENCRYPTION_ARGS=(--encryption-provider-config "$KEYSTEAD_DEV_ENCRYPTION_CONFIG" --encryption-provider-config-automatic-reload=true)
fi
APISERVER_CMD=("$CP/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --service-account-issuer "$API" --service-account-jwks-uri "$API/openid/v1/jwks" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --authorization-mode RBAC --endpoint-reconciler-type none \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --audit-log-path "$DIR/logs/audit.log" --audit-policy-file "$DIR/audit-policy.yaml" \
  --audit-log-maxsize 200 --audit-log-maxbackup 1 \
  --allow-privileged=true --profiling=false \
  "${ENCRYPTION_ARGS[@]}")
printf '%s\0' "${APISERVER_CMD[@]}" >"$DIR/run/kube-apiserver.cmd"
start kube-apiserver "${APISERVER_CMD[@]}"
KUBECTL=("$TOOLS/kubectl" --kubeconfig "$DIR/kubeconfig")
wait_for 90 "kube-apiserver ready" "${KUBECTL[@]}" get --raw /readyz

# --- controller-manager and scheduler ----------------------------------------------------
start kube-controller-manager "$CP/kube-controller-manager" \
  --kubeconfig "$DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --use-service-account-credentials=true --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0 --profiling=false
start kube-scheduler "$CP/kube-scheduler" \
  --kubeconfig "$DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 --profiling=false

# --- the node agent and three Nodes in three zones ---------------------------------------
# keystead.test/two-racks puts the three Nodes in two domains (r1: a and c, r2: b), for the
# test that asks for three partitions in two topology domains.
start node-agent "$KEYSTEAD_BIN_DIR/keystead-node-agent" \
  --kubeconfig "$DIR/kubeconfig" --dir "$DIR/agent" --pod-network "$POD_NET" \
  --node node-a=zone-a,keystead.test/two-racks=r1 \
  --node node-b=zone-b,keystead.test/two-racks=r2 \
  --node node-c=zone-c,keystead.test/two-racks=r1 \
  --image "keystead-operator=$KEYSTEAD_BIN_DIR/keystead-operator" \
  --image "keystead-partition=$KEYSTEAD_BIN_DIR/keystead-partition"
wait_for 60 "three Ready Nodes" bash -c \
  "[ \"\$('${TOOLS}/kubectl' --kubeconfig '$DIR/kubeconfig' get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}' | grep -c True)\" = 3 ]"
"${KUBECTL[@]}" apply -f - >/dev/null <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  # The name kind gives its default class, so manifests written for kind work here too.
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: keystead.dev/local-directory
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
EOF
# The default ServiceAccount exists once the controller-manager runs (pods need it).
wait_for 60 "the default ServiceAccount" "${KUBECTL[@]}" -n default get serviceaccount default

# --- the chart (CRDs and operator) -------------------------------------------------------
log "helm install keystead (namespace keystead-system)"
"$TOOLS/helm" --kubeconfig "$DIR/kubeconfig" install keystead "$ROOT/charts/keystead" \
  --namespace keystead-system --create-namespace \
  --set image.repository=localhost/keystead-operator --set image.tag=dev \
  --set-json 'extraEnv=[{"name":"KEYSTEAD_SERVICE_ACCOUNT_ISSUER","value":"'"$API"'"},{"name":"KEYSTEAD_ALLOW_LOOPBACK_STORAGE_ENDPOINTS","value":"true"}]' \
  --wait --timeout 180s >"$DIR/logs/helm-install.log" 2>&1 ||
  die "helm install failed: $(tail -5 "$DIR/logs/helm-install.log")"
# What docs/examples/managedhsm.yaml needs besides the pools: their namespaces, the shared
# backup claim of contoso-hsm and the sealing-key Secret of dev-hsm (32 random bytes).
"${KUBECTL[@]}" create namespace keystead-pools >/dev/null
"${KUBECTL[@]}" create namespace keystead-dev >/dev/null
"${KUBECTL[@]}" -n keystead-pools apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: hsm-backups
spec:
  accessModes: [ReadWriteMany]
  resources:
    requests:
      storage: 1Gi
EOF
head -c 32 /dev/urandom | "${KUBECTL[@]}" -n keystead-dev create secret generic \
  dev-hsm-sealing-key --from-file=sealing-key=/dev/stdin >/dev/null
trap - EXIT
log "ready: export KUBECONFIG=$DIR/kubeconfig   (stop: scripts/dev-cluster.sh down $DIR)"
echo "$DIR/kubeconfig"
