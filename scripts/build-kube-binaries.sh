#!/usr/bin/env bash
# Builds the testbed's real control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd) from the Go module proxy into a cache outside the checkout,
# keyed by versions, so clean clones and CI reuse it. Prints the cache folder last.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mod="$here/testbed/kube-binaries"
KUBE_VERSION=v1.35.4
ETCD_VERSION=v3.6.5
cache_root="${TORPOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/torpor}"
out="$cache_root/kube-binaries/kube-$KUBE_VERSION-etcd-$ETCD_VERSION"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd)

complete=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || complete=0; done
if [ "$complete" = 1 ]; then echo "$out"; exit 0; fi

if ! command -v go >/dev/null 2>&1; then
  echo "error: the testbed builds Kubernetes $KUBE_VERSION from source and needs Go >= 1.25 on PATH (install it from go.dev/dl or your distribution's golang package)" >&2
  exit 3
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$out.tmp"
echo "building Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION into $out" >&2
echo "(first build: about 15-30 minutes on 2 cores; cached afterwards)" >&2
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=35 -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
cd "$mod"
start=$(date +%s)
i=0
for b in "${bins[@]}"; do
  i=$((i + 1))
  if [ -x "$out.tmp/$b" ]; then continue; fi
  case "$b" in
    etcd) path=go.etcd.io/etcd/server/v3 ;;
    *) path=k8s.io/kubernetes/cmd/$b ;;
  esac
  echo "[$i/${#bins[@]}] go build $path ($(( $(date +%s) - start ))s elapsed)" >&2
  go build -trimpath -ldflags "$ldflags" -o "$out.tmp/$b.partial" "$path"
  mv "$out.tmp/$b.partial" "$out.tmp/$b"
done
rm -rf "$out"
mv "$out.tmp" "$out"
echo "built in $(( $(date +%s) - start ))s" >&2
echo "$out"
