#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from Debian bookworm's `kubernetes` source package
# (1.20.5+really1.20.2, vendor/ included) and caches them in $FERRITE_CACHE/kube-<version>/.
# About 5 minutes on 2 cores, done once per machine. KUBE_APISERVER=/path skips the build.
set -euo pipefail

CACHE="${FERRITE_CACHE:-$HOME/.cache/ferrite}"
VERSION="1.20.5+really1.20.2"
# -r2: built with reflect2 1.0.2 (see below). Must match KUBE_BUILD in e2e/src/kubebox.rs.
OUT="$CACHE/kube-$VERSION-r2"
log() { printf '[build-kube] %s\n' "$*" >&2; }

if [ -n "${KUBE_APISERVER:-}" ]; then log "KUBE_APISERVER=$KUBE_APISERVER given; not building"; exit 0; fi
if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-controller-manager" ]; then exit 0; fi
# One build at a time per cache (a second `make test` waits instead of deleting the first one's tree).
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-kube.lock"
flock 9
if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/kube-controller-manager" ]; then exit 0; fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! grep -rqs "deb-src.*bookworm\|Types: deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  log "adding a deb-src line for bookworm"
  # deb822 form with the same Signed-By as Debian's own entry: apt refuses two entries for one
  # repository that disagree on Signed-By.
  key=/usr/share/keyrings/debian-archive-keyring.gpg
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n%s\n' \
    "$( [ -f "$key" ] && echo "Signed-By: $key" )" | $SUDO tee /etc/apt/sources.list.d/ferrite-src.sources >/dev/null
  $SUDO apt-get update -qq
fi

work="$CACHE/kube-src"
rm -rf "$work"; mkdir -p "$work"
cd "$work"
log "downloading the kubernetes source package (large)"
apt-get source --download-only "kubernetes=$VERSION" >/dev/null 2>&1 || apt-get source --download-only kubernetes >/dev/null
log "unpacking"
orig=$(ls kubernetes_*.orig.tar.* | head -n1)
mkdir src && tar xf "$orig" -C src --strip-components=1
cd src
# Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, which crashes ("unexpected fault address", in
# mapiterinit) when built with Go >= 1.18, as soon as the API server encodes a map of a custom resource.
# Debian's Go is 1.19, so swap in reflect2 1.0.2 from Debian's own package, which fixes exactly that.
r2=/usr/share/gocode/src/github.com/modern-go/reflect2
if [ ! -d "$r2" ]; then
  $SUDO apt-get install -y -qq --no-install-recommends golang-github-modern-go-reflect2-dev >/dev/null
fi
rm -rf vendor/github.com/modern-go/reflect2
cp -r "$r2" vendor/github.com/modern-go/reflect2
mkdir -p .go/src/k8s.io && ln -s ../../.. .go/src/k8s.io/kubernetes
log "building kube-apiserver and kube-controller-manager (about 5 minutes on 2 cores)"
start=$(date +%s)
( while sleep 30; do log "still building... $(( $(date +%s) - start ))s"; done ) & ticker=$!
trap 'kill $ticker 2>/dev/null || true' EXIT
cd .go/src/k8s.io/kubernetes
env GOPATH="$work/src/.go" GO111MODULE=off GOFLAGS= CGO_ENABLED=0 \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/build.log" 2>&1 || {
    log "build failed; last lines of $work/build.log:"; tail -n 40 "$work/build.log" >&2; exit 1; }
kill $ticker 2>/dev/null || true
mkdir -p "$OUT"
install -m 0755 _output/bin/kube-apiserver _output/bin/kube-controller-manager "$OUT/"
log "built in $(( $(date +%s) - start ))s: $OUT"
cd "$CACHE"; rm -rf "$work"
