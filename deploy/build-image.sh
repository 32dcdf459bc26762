#!/bin/sh
# Builds berth's container image, deploy/Dockerfile, from a berth binary
# built on this machine: no base image and no network are needed.
#
#   deploy/build-image.sh [--tag NAME] [--binary PATH]
#
# Without --binary it runs `cargo build --release --locked` first and uses
# target/release/berth. The tag defaults to `berth`. The build context,
# assembled in a temporary directory, holds:
#
#   berth        the binary
#   rootfs/      the shared libraries it loads (as ldd lists them; none for
#                a static binary), at the paths it loads them from; the
#                CA certificates it trusts for upstreams
#                (/etc/ssl/certs/ca-certificates.crt, from $CA_BUNDLE,
#                default: this machine's, from Debian's ca-certificates);
#                and /etc/nsswitch.conf, so that names resolve from
#                /etc/hosts first, then DNS
#   berth.toml   deploy/berth.toml, installed as /etc/berth/berth.toml
#   data/        empty: /var/lib/berth, owned by the image's user
#
# $DOCKER names the client (default docker; podman builds it too).
set -eu

usage() {
  echo "usage: $0 [--tag NAME] [--binary PATH]" >&2
  exit 64
}

tag=berth
binary=
while [ $# -gt 0 ]; do
  case $1 in
  --tag)
    [ $# -ge 2 ] || usage
    tag=$2
    shift 2
    ;;
  --binary)
    [ $# -ge 2 ] || usage
    binary=$2
    shift 2
    ;;
  *) usage ;;
  esac
done

deploy=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$deploy")
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
docker=${DOCKER:-docker}

if [ -z "$binary" ]; then
  (cd "$repo" && cargo build --release --locked --bin berth)
  binary=$repo/target/release/berth
fi
if [ ! -x "$binary" ]; then
  echo "$0: $binary is not an executable" >&2
  exit 66
fi
if [ ! -f "$ca_bundle" ]; then
  echo "$0: no CA certificates at $ca_bundle (install ca-certificates, or set CA_BUNDLE)" >&2
  exit 66
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/etc/ssl/certs" "$context/data"
cp "$binary" "$context/berth"
cp "$deploy/berth.toml" "$context/berth.toml"
cp "$ca_bundle" "$context/rootfs/etc/ssl/certs/ca-certificates.crt"
# glibc's default without this file asks DNS before /etc/hosts (where
# `docker run --add-host` and Kubernetes' hostAliases put names).
printf 'hosts: files dns\n' >"$context/rootfs/etc/nsswitch.conf"
# `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the loader,
# `/lib64/ld-linux-x86-64.so.2 (0x...)`; symbolic links are resolved.
ldd "$binary" 2>/dev/null |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do
    mkdir -p "$context/rootfs$(dirname "$lib")"
    cp -L "$lib" "$context/rootfs$lib"
  done

"$docker" build -f "$deploy/Dockerfile" -t "$tag" "$context"
