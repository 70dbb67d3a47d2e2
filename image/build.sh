#!/usr/bin/env bash
# `make image`: the meshfed container image as an OCI image archive, built without a registry or a
# container engine: a Debian base from the Debian mirror (image/base.sh, mmdebstrap), the pinned
# runtime dependencies from PyPI (image/requirements.txt) and the meshfed wheel of this checkout,
# assembled with umoci. The same image as the Containerfile builds (a user with a registry).
#
#   build/image/meshfed-VERSION.oci.tar   the archive (skopeo copy oci-archive:... docker://...)
#   build/image/oci/                      the same OCI layout, unpacked (umoci unpack, the image test)
#   build/image/digest                    the manifest digest (sha256:...)
#
# Layers: 1 Debian base (cached in ~/.cache/meshfed/image, keyed by image/base.sh), 2 the runtime
# dependencies in the virtualenv /opt/meshfed and the user nonroot (65532), 3 meshfed itself. Each
# layer is a tar sorted by name with numeric owners, mtimes clamped to SOURCE_DATE_EPOCH (the commit's
# time; the base uses the time of the last commit of image/base.sh), no atime/ctime, byte code with
# source hashes instead of timestamps (PEP 552) and no pip cache: two builds of one commit give the
# same digest. The working tree's tracked files are built (a dirty tree is reported; its image
# carries the commit's time but not the commit's content).
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${MESHFED_IMAGE_OUT:-$REPO/build/image}
CACHE=${MESHFED_IMAGE_CACHE:-$HOME/.cache/meshfed/image}
PY=${PY:-$REPO/.venv/bin/python}
PREFIX=/opt/meshfed
SITE=$PREFIX/lib/python3.11/site-packages
UIDGID=65532

T0=$SECONDS
step() { printf '==> [%s/6 %3ss] %s\n' "$1" "$((SECONDS - T0))" "$2"; }
die() { echo "image/build.sh: $*" >&2; exit 1; }

for tool in mmdebstrap umoci git; do
  command -v "$tool" >/dev/null || die "$tool missing (make image-deps installs it: apt-get install mmdebstrap umoci)"
done
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap --mode=root, numeric file owners in the layers)"
[ -x "$PY" ] || die "no $PY (make python-deps)"

cd "$REPO"
VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
COMMIT=$(git rev-parse HEAD)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
DIRTY=$(git status --porcelain --untracked-files=no)
echo "meshfed $VERSION, commit ${COMMIT:0:12}$([ -n "$DIRTY" ] && echo ' + uncommitted changes (not reproducible from the commit)'), SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH ($CREATED)"

mkdir -p "$OUT" "$CACHE"
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A layer tar of directory $1 into $2: sorted, numeric owners, mtimes clamped, no atime/ctime.
layer_tar() {
  tar --create --file "$2" --directory "$1" --sort=name --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --mtime="@$3" --clamp-mtime --no-acls --no-selinux --no-xattrs .
}
add_layer() { umoci raw add-layer --image "$REF" --history.created="$CREATED" --history.created_by="$2" "$1"; }

# ---- 1. the Debian base (cached) ------------------------------------------------------------------
BASE_KEY=$(sha256sum image/base.sh | cut -c1-16)
BASE_EPOCH=$(git log -1 --format=%ct -- image/base.sh 2>/dev/null)
BASE_EPOCH=${BASE_EPOCH:-$SOURCE_DATE_EPOCH}
BASE=$CACHE/base-$BASE_KEY-$BASE_EPOCH.tar
if [ -f "$BASE" ]; then
  step 1 "Debian base: cached $BASE"
else
  step 1 "Debian base: mmdebstrap bookworm (python3.11, ca-certificates) -> $BASE (once; ~1 min)"
  image/base.sh "$WORK/base.tar" "$BASE_EPOCH" 2>&1 | grep -E '^(I: (downloading|installing|success)|    source|E:|W:)' | sed 's/^/    /'
  [ "${PIPESTATUS[0]}" = 0 ] || die "image/base.sh failed"
  mv "$WORK/base.tar" "$BASE"
fi
mkdir "$WORK/base"
tar --extract --file "$BASE" --directory "$WORK/base" --numeric-owner --preserve-permissions
BASE_PY=$(chroot "$WORK/base" /usr/bin/python3.11 -c 'import platform; print(platform.python_version())')

# ---- 2. runtime dependencies: the virtualenv /opt/meshfed, the user nonroot -----------------------
step 2 "runtime layer: $(grep -c '^[A-Za-z]' image/requirements.txt) pinned wheels (image/requirements.txt, hashes checked) into $PREFIX (python $BASE_PY)"
RT=$WORK/runtime
mkdir -p "$RT$SITE" "$RT$PREFIX/bin" "$RT/etc" "$RT/home/nonroot"
# Wheels only, for the image's platform (Debian bookworm: CPython 3.11, glibc 2.36), never compiled
# here (--no-compile: byte code is written below, reproducibly); pip's download cache stays on the host.
PLATFORMS=()
for minor in $(seq 36 -1 17); do PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
PIP_TARGET=(--no-deps --no-compile --only-binary=:all: "${PLATFORMS[@]}" --platform manylinux2014_x86_64
            --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none --disable-pip-version-check)
"$PY" -m pip install --quiet --require-hashes -r image/requirements.txt --target "$RT$SITE" "${PIP_TARGET[@]}"
rm -rf "$RT$SITE/bin"
# The virtualenv of the image's own interpreter (what `python3.11 -m venv --without-pip` writes).
cat > "$RT$PREFIX/pyvenv.cfg" <<EOF
home = /usr/bin
include-system-site-packages = false
version = $BASE_PY
executable = /usr/bin/python3.11
command = /usr/bin/python3.11 -m venv --without-pip $PREFIX
EOF
ln -s /usr/bin/python3.11 "$RT$PREFIX/bin/python3.11"
ln -s python3.11 "$RT$PREFIX/bin/python3"
ln -s python3.11 "$RT$PREFIX/bin/python"
ln -s lib "$RT$PREFIX/lib64"
# The user the Deployment runs as (runAsUser/runAsGroup 65532, as in distroless images).
cp -p "$WORK/base/etc/passwd" "$WORK/base/etc/group" "$RT/etc/"
echo "nonroot:x:$UIDGID:$UIDGID:nonroot:/home/nonroot:/usr/sbin/nologin" >> "$RT/etc/passwd"
echo "nonroot:x:$UIDGID:" >> "$RT/etc/group"
chown "$UIDGID:$UIDGID" "$RT/home/nonroot"
chmod 0700 "$RT/home/nonroot"

# ---- 3. meshfed: the wheel of the working tree's tracked files ------------------------------------
step 3 "meshfed layer: wheel of the tracked files at ${COMMIT:0:12}"
APP=$WORK/app
mkdir -p "$WORK/src" "$APP$SITE" "$APP$PREFIX/bin"
git ls-files -z | tar --create --null --files-from=- --file=- | tar --extract --directory "$WORK/src"
# The build backend pinned in image/build-requirements.txt (not whatever setuptools .venv has).
"$PY" -m pip install --quiet --require-hashes -r image/build-requirements.txt --target "$WORK/backend" \
  --disable-pip-version-check
PYTHONPATH=$WORK/backend "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WORK/wheel" \
  "$WORK/src" >/dev/null
WHEEL=$(ls "$WORK"/wheel/meshfed-*.whl)
echo "    $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"
"$PY" -m pip install --quiet --no-deps --no-compile --target "$APP$SITE" --disable-pip-version-check "$WHEEL"
# pip's console scripts point at the build host's python; the image's point at the virtualenv.
# direct_url.json would record the temporary path of the wheel.
rm -rf "$APP$SITE/bin"
DIST=$(ls -d "$APP$SITE"/meshfed-*.dist-info)
rm -f "$DIST/direct_url.json"
sed -i -e '/\/direct_url.json,/d' -e '/^\.\.\/\.\.\/\.\.\/bin\//d' -e '/^bin\//d' "$DIST/RECORD"
"$PY" - "$DIST/entry_points.txt" "$APP$PREFIX/bin" <<'EOF'
import configparser, os, sys
eps = configparser.ConfigParser()
eps.read(sys.argv[1])
for name, ref in eps["console_scripts"].items():
    module, _, attr = ref.partition(":")
    path = os.path.join(sys.argv[2], name)
    with open(path, "w") as fh:
        fh.write(f"#!/opt/meshfed/bin/python\nimport sys\nfrom {module} import {attr}\n\nif __name__ == \"__main__\":\n"
                 f"    sys.exit({attr}())\n")
    os.chmod(path, 0o755)
    print(f"    entry point {path.split('/opt/meshfed/')[1]}: {ref}")
EOF

# Byte code for both Python layers, checked against the source's hash (no timestamps, PEP 552), with
# the image's paths in it; compiled by the image's interpreter version (3.11 magic number).
step 4 "byte code (checked-hash .pyc: no timestamps)"
for layer in "$RT" "$APP"; do
  "$PY" -m compileall -q -j 0 --invalidation-mode checked-hash -s "$layer" -p / "$layer$SITE" >/dev/null ||
    die "compileall failed in $layer"
done

# ---- 5. the OCI image ------------------------------------------------------------------------------
step 5 "OCI image (umoci): 3 layers, config (user $UIDGID, entry point $PREFIX/bin/meshfed)"
LAYOUT=$WORK/oci
REF=$LAYOUT:$VERSION
umoci init --layout "$LAYOUT"
umoci new --image "$REF"
layer_tar "$WORK/base" "$WORK/l1.tar" "$BASE_EPOCH"
layer_tar "$RT" "$WORK/l2.tar" "$SOURCE_DATE_EPOCH"
layer_tar "$APP" "$WORK/l3.tar" "$SOURCE_DATE_EPOCH"
add_layer "$WORK/l1.tar" "Debian bookworm base (image/base.sh): python3.11, ca-certificates"
add_layer "$WORK/l2.tar" "runtime dependencies (image/requirements.txt) in $PREFIX, user nonroot"
add_layer "$WORK/l3.tar" "meshfed $VERSION ($COMMIT)"
umoci config --image "$REF" --no-history --created "$CREATED" --author meshfed --os linux --architecture amd64 \
  --config.user "$UIDGID:$UIDGID" --config.workingdir / \
  --config.entrypoint "$PREFIX/bin/meshfed" \
  --config.env "PATH=$PREFIX/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --config.env PYTHONUNBUFFERED=1 --config.env HOME=/home/nonroot \
  --config.exposedports 8080/tcp \
  --config.label org.opencontainers.image.title=meshfed \
  --config.label org.opencontainers.image.version="$VERSION" \
  --config.label org.opencontainers.image.revision="$COMMIT" \
  --config.label org.opencontainers.image.created="$CREATED" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --config.label "org.opencontainers.image.description=meshfed controller (meshfed controller) and SDS server (meshfed sds)" \
  --manifest.annotation org.opencontainers.image.version="$VERSION" \
  --manifest.annotation org.opencontainers.image.revision="$COMMIT" \
  --manifest.annotation org.opencontainers.image.created="$CREATED"
umoci gc --layout "$LAYOUT"
# umoci leaves the blob files' own times as written; the archive clamps them, and its member order is sorted.
ARCHIVE=$OUT/meshfed-$VERSION.oci.tar
tar --create --file "$WORK/image.oci.tar" --directory "$LAYOUT" --sort=name --numeric-owner --owner=0 --group=0 \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  --mtime="@$SOURCE_DATE_EPOCH" .
rm -rf "$OUT/oci"
mv "$LAYOUT" "$OUT/oci"
mv "$WORK/image.oci.tar" "$ARCHIVE"

# ---- 6. what was built --------------------------------------------------------------------------------
step 6 "done"
"$PY" - "$OUT/oci" "$ARCHIVE" "$VERSION" <<'EOF'
import json, os, sys
layout, archive, version = sys.argv[1:]
def blob(digest):
    algo, hexa = digest.split(":")
    return os.path.join(layout, "blobs", algo, hexa)
(desc,) = json.load(open(os.path.join(layout, "index.json")))["manifests"]
manifest = json.load(open(blob(desc["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))
compressed = sum(layer["size"] for layer in manifest["layers"])
sizes = [f"{layer['size'] / 2**20:.1f}" for layer in manifest["layers"]]
open(os.path.join(os.path.dirname(archive), "digest"), "w").write(desc["digest"] + "\n")
print(f"    image     meshfed:{version}  ({archive})")
print(f"    digest    {desc['digest']}  (manifest; image id {manifest['config']['digest']})")
print(f"    size      {compressed / 2**20:.1f} MiB compressed in {len(manifest['layers'])} layers "
      f"({', '.join(sizes)} MiB); "
      f"archive {os.path.getsize(archive) / 2**20:.1f} MiB")
print(f"    diff ids  {' '.join(d[:19] for d in config['rootfs']['diff_ids'])}")
EOF
for f in l1 l2 l3; do printf '%s ' "$(du -m "$WORK/$f.tar" | cut -f1)"; done | awk '{printf "    unpacked  %d MiB (base %d, runtime %d, meshfed %d MiB)\n", $1+$2+$3, $1, $2, $3}'
echo "    push:     skopeo copy oci-archive:$ARCHIVE docker://REGISTRY/meshfed:$VERSION"
echo "    built in $((SECONDS - T0)) s"
