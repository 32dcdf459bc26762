#!/bin/sh
# Write containerd's hosts.toml for the registries berth mirrors, with
# berth's real address in place of the placeholder http://berth.internal:5000.
#
#   install-hosts.sh [-r REGISTRY[,REGISTRY...]] BERTH_URL [CERTS_DIR]
#
#   install-hosts.sh http://berth.internal:5000             # a shared berth
#   install-hosts.sh http://127.0.0.1:5000                  # the DaemonSet's node-local berth
#   install-hosts.sh http://berth:5000 /tmp/berth-certs.d   # kind (see kind/kind-config.yaml)
#   install-hosts.sh -r docker.io,ghcr.io http://berth.internal:5000
#
# Without -r it writes all six (docker.io, ghcr.io, quay.io, registry.k8s.io,
# public.ecr.aws, mcr.microsoft.com), berth's built-in upstreams. A berth
# configured with fewer upstreams should get only those (-r, repeatable or
# comma-separated): for a registry berth does not mirror, containerd would
# ask berth, be refused, and fall back to the registry itself on every pull.
#
# CERTS_DIR defaults to /etc/containerd/certs.d, the directory containerd's
# CRI configuration names as config_path (see config.toml beside this
# script). Existing hosts.toml files of these registries are replaced; each
# is written to a temporary file and renamed, so containerd never reads half
# of one. containerd reads them on the next pull: no restart needed.
set -eu

PLACEHOLDER='http://berth.internal:5000'

usage() {
	echo "usage: $0 [-r REGISTRY[,REGISTRY...]] BERTH_URL [CERTS_DIR]   (BERTH_URL like http://berth.internal:5000)" >&2
	exit 64
}

only=
while getopts r: opt; do
	case $opt in
	r) only="$only $(echo "$OPTARG" | tr ',' ' ')" ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
	usage
fi
url=$1
certs_dir=${2:-/etc/containerd/certs.d}

# A scheme, a host (name, IPv4 or [IPv6]) and an optional port; nothing that
# sed or TOML would read specially.
case $url in
http://* | https://*) ;;
*) usage ;;
esac
case $url in
*[!A-Za-z0-9.:/\[\]_-]* | */) usage ;;
esac

templates=$(dirname "$0")/certs.d
[ -d "$templates" ] || {
	echo "$0: no templates at $templates" >&2
	exit 1
}

for registry in $only; do
	case $registry in
	*[!A-Za-z0-9.:_-]*) usage ;;
	esac
	[ -f "$templates/$registry/hosts.toml" ] || {
		known=
		for dir in "$templates"/*/; do
			known="$known $(basename "$dir")"
		done
		echo "$0: no hosts.toml template for $registry; there are:$known" >&2
		exit 64
	}
done

for template in "$templates"/*/hosts.toml; do
	registry=$(basename "$(dirname "$template")")
	if [ -n "$only" ]; then
		case " $only " in
		*" $registry "*) ;;
		*) continue ;;
		esac
	fi
	mkdir -p "$certs_dir/$registry"
	target=$certs_dir/$registry/hosts.toml
	sed "s|$PLACEHOLDER|$url|g" "$template" >"$target.tmp"
	chmod 0644 "$target.tmp"
	mv -f "$target.tmp" "$target"
	echo "$target -> $url"
done
