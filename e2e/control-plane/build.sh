#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
# from the Go module proxy into .tools/k8s-<version>/, once per pin: a second call with the same
# go.mod/go.sum is a no-op. Prints the directory holding the binaries on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
K8S_VERSION="$(awk '$1=="k8s.io/kubernetes"{print $2}' "$here/go.mod")"
ETCD_VERSION="$(grep -o 'go.etcd.io/etcd/server/v3 v[0-9.]*' "$here/go.mod" | cut -d' ' -f2)"
# The cache key: the pin and everything the build reads from this module.
key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$here"/cmd/*/*.go | sha256sum | cut -c1-12)"
out="$root/.tools/k8s-$K8S_VERSION-$key"
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler)

have_all() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }
if have_all; then echo "$out"; exit 0; fi

mkdir -p "$out.partial"
cd "$here"
export GOFLAGS="-mod=mod" CGO_ENABLED=0
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor \
  -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z \
  -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
start=$(date +%s)
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  echo "building $b $K8S_VERSION" >&2
  go build -trimpath -ldflags "$ldflags" -o "$out.partial/$b" "k8s.io/kubernetes/cmd/$b"
done
echo "building etcd $ETCD_VERSION" >&2
go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" ./cmd/etcd
rm -rf "$out"; mv "$out.partial" "$out"
echo "control plane built in $(( $(date +%s) - start )) s into $out" >&2
echo "$out"
