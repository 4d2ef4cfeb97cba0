#!/usr/bin/env bash
# Build the runtime target of Dockerfile.sidecar with buildah, from a base image made locally
# from Debian's packages (mmdebstrap -> podman import): no registry is needed. The Dockerfile is
# used unchanged; only the PYTHON_IMAGE build-arg differs from a registry build.
#
# Both images are cached in the local container storage, tagged by a hash of their inputs
# (base: this recipe; image: the base, Dockerfile.sidecar and the build context), so a second
# run with the same inputs builds nothing. The last line of stdout is the image reference.
#
# Environment: IMAGE (repository, default localhost/trt-health-sidecar), BASE_SUITE (bookworm),
# DEBIAN_MIRROR, BUILD_CA (CA bundle bind-mounted into the RUN steps only, default the host's:
# the build downloads from PyPI through whatever TLS the host trusts; never part of the image),
# CONTAINERS_CONF (default image/containers.conf), REBUILD=1 (ignore the caches).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/image/containers.conf}"
IMAGE="${IMAGE:-localhost/trt-health-sidecar}"
SUITE="${BASE_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BUILD_CA="${BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}"

missing=()
for tool in buildah podman mmdebstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "image/build.sh: missing ${missing[*]} (Debian: apt-get install podman buildah runc mmdebstrap; .ci/run does)" >&2
  exit 127
fi

say() { echo "image/build.sh: $*" >&2; }

# ---- base: Debian minbase + Python (what python:3.x-slim provides to the Dockerfile) ---------
BASE_PACKAGES="python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
base_recipe="suite=$SUITE mirror=$MIRROR packages=$BASE_PACKAGES merged-usr nodoc v1"
base_key=$(printf '%s' "$base_recipe" | sha256sum | cut -c1-12)
BASE="localhost/trt-health-base:$SUITE-$base_key"
if [ -z "${REBUILD:-}" ] && podman image exists "$BASE"; then
  say "base $BASE (cached)"
else
  say "making base $BASE with mmdebstrap ($SUITE)"
  started=$SECONDS
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$BASE_PACKAGES" --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$SUITE" "$tmp/base.tar" "$MIRROR" >&2
  podman import --quiet --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$BASE" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
  say "base made in $((SECONDS - started)) s"
fi

# ---- the image: Dockerfile.sidecar, runtime target -----------------------------------------
base_id=$(podman image inspect --format '{{.Id}}' "$BASE")
context_key=$( {
  echo "base=$base_id"
  sha256sum Dockerfile.sidecar .dockerignore
  find pyproject.toml README.md sidecar -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-12)
TAG="$IMAGE:$context_key"
if [ -z "${REBUILD:-}" ] && podman image exists "$TAG"; then
  say "image $TAG (cached)"
else
  say "building $TAG"
  started=$SECONDS
  ca_mount=()
  [ -f "$BUILD_CA" ] && ca_mount=(--volume "$BUILD_CA:/etc/ssl/certs/ca-certificates.crt:ro")
  buildah bud --quiet --layers --runtime runc "${ca_mount[@]}" \
    -f Dockerfile.sidecar --target runtime --build-arg "PYTHON_IMAGE=$BASE" \
    -t "$TAG" -t "$IMAGE:latest" . >&2
  say "image built in $((SECONDS - started)) s"
fi
podman tag "$TAG" "$IMAGE:latest"
size=$(podman image inspect --format '{{.Size}}' "$TAG")
say "image $TAG: $((size / 1000000)) MB ($size bytes; base $(( $(podman image inspect --format '{{.Size}}' "$BASE") / 1000000 )) MB)"
echo "$TAG"
