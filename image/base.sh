#!/usr/bin/env bash
# The image's base layer: a minimal Debian bookworm root filesystem (mmdebstrap, the Essential
# packages only: no apt) with Debian's python3.11, ca-certificates, netbase and libstdc++6
# (grpcio's wheel links it), written as a tarball.
#   image/base.sh OUT.tar EPOCH
# Reproducible for the same mirror content: mmdebstrap honours SOURCE_DATE_EPOCH (fixed mtimes, no
# logs, no caches, no machine-id); /etc/resolv.conf and /etc/hostname (copied from the host) are
# dropped. The mirrors are the ones this machine's apt uses (bookworm, -updates, -security), or
# MESHFED_DEBIAN_SOURCES ("deb URI SUITE main" lines separated by '|').
# image/build.sh caches the result keyed by this file's content, so edit the package set here only.
set -euo pipefail
out=$1 epoch=$2
PACKAGES=python3.11,ca-certificates,netbase,libstdc++6

if [ -n "${MESHFED_DEBIAN_SOURCES:-}" ]; then
  IFS='|' read -r -a sources <<<"$MESHFED_DEBIAN_SOURCES"
else
  mapfile -t sources < <(apt-get indextargets --format '$(IDENTIFIER) $(COMPONENT) $(RELEASE) $(REPO_URI)' |
    awk '$1 == "Packages" && $2 == "main" && $3 ~ /^bookworm(-updates|-security)?$/ {print "deb " $4 " " $3 " main"}' |
    sort -u)
fi
[ "${#sources[@]}" -gt 0 ] || { echo "image/base.sh: no Debian bookworm source in apt's configuration" \
  "(set MESHFED_DEBIAN_SOURCES='deb URI bookworm main|...')" >&2; exit 1; }
printf '    source: %s\n' "${sources[@]}"

# Documentation, manual pages and translations are not installed (copyright files are kept).
SOURCE_DATE_EPOCH=$epoch mmdebstrap --variant=essential --mode=root --format=tar \
  --include="$PACKAGES" \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
  --customize-hook='rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
  bookworm "$out" "${sources[@]}"
