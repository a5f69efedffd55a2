#!/usr/bin/env bash
# Builds Ferrite's one container image (every controller binary) as an OCI image layout, without a
# container engine and without a registry: this machine has neither, and no base image can be pulled.
# The rootfs is assembled from the binaries, the shared libraries ldd names (glibc, libgcc_s, libm and
# the loader, from Debian), Debian's CA bundle (ACME), and a passwd/group with the non-root user 65532;
# umoci (Debian package) writes the layer and the config. The Containerfile builds the same image where
# a container engine and a registry are at hand.
#
#   e2e/scripts/build-image.sh BIN_DIR OUT_LAYOUT [TAG]
#
# BIN_DIR holds ferrite-lb, ferrite-dns, ferrite-certs, ferrite-ingress (`make image` passes the release
# build); OUT_LAYOUT is replaced; TAG defaults to the chart's appVersion. Load it elsewhere with e.g.
# `skopeo copy oci:OUT_LAYOUT:TAG docker://ghcr.io/ferrite-dev/ferrite:TAG`.
set -euo pipefail
BINARIES=(ferrite-lb ferrite-dns ferrite-certs ferrite-ingress)
if [ $# -lt 2 ]; then echo "usage: $0 BIN_DIR OUT_LAYOUT [TAG]" >&2; exit 2; fi
bin_dir=$1 out=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${3:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/ferrite/Chart.yaml")}
[ -n "$tag" ] || { echo "no appVersion in charts/ferrite/Chart.yaml" >&2; exit 1; }
command -v umoci >/dev/null || { echo "umoci not found: run e2e/scripts/install-deps.sh" >&2; exit 1; }
for b in "${BINARIES[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "$bin_dir/$b not found: cargo build --release --workspace --bins" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot"
for b in "${BINARIES[@]}"; do install -m 0755 "$bin_dir/$b" "$rootfs/usr/local/bin/$b"; done
# The shared libraries at the paths the binaries look for them (the loader's path is absolute).
for lib in $(for b in "${BINARIES[@]}"; do ldd "$bin_dir/$b"; done \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chown 65532:65532 "$rootfs/home/nonroot"
chmod 1777 "$rootfs/tmp"

rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci unpack --image "$out:$tag" "$work/bundle" >/dev/null
cp -a "$rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$out:$tag" "$work/bundle"
umoci config --image "$out:$tag" \
  --config.user=65532:65532 \
  --config.workingdir=/home/nonroot \
  --config.env=PATH=/usr/local/bin:/usr/bin:/bin \
  --config.env=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.cmd=/usr/local/bin/ferrite-lb --config.cmd=--help \
  --config.label=org.opencontainers.image.title=ferrite \
  --config.label=org.opencontainers.image.version="$tag" \
  --config.label=org.opencontainers.image.source=https://github.com/ferrite-dev/ferrite \
  --config.label=org.opencontainers.image.licenses=Apache-2.0 \
  --os=linux --architecture="$(dpkg --print-architecture)"
umoci gc --layout "$out"
echo "built $out:$tag (${BINARIES[*]}; user 65532)" >&2
