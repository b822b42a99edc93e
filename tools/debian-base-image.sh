#!/bin/sh
# A base image for the Dockerfile made from Debian's packages (debootstrap), for a machine
# that reaches Debian's archive and PyPI but no container registry:
#
#   tools/debian-base-image.sh [TAG] [CA_BUNDLE]
#   docker build --build-arg BASE_IMAGE=TAG \
#                --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt .
#
# TAG defaults to movement-cds-base:bookworm. CA_BUNDLE (optional): a certificate bundle to
# use in the image instead of Debian's, e.g. this machine's when its HTTPS goes through an
# inspecting proxy. Debian bookworm's python3 is 3.11. Needs root, debootstrap (installed
# from the system packages when missing) and a running Docker engine.
set -eu
tag=${1:-movement-cds-base:bookworm}
ca=${2:-}
command -v debootstrap >/dev/null 2>&1 || apt-get install -y -qq debootstrap
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root"
if [ -n "$ca" ]; then cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"; fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$tag"
echo "base image: $tag"
