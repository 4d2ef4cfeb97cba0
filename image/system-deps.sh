#!/usr/bin/env bash
# Debian packages `make test` needs beyond Python: the container tools for the image e2e test
# (podman, buildah, runc, mmdebstrap; tests/e2e) and promtool (Debian's `prometheus`) for the
# rule-pack tests (tests/integration/test_rule_pack.py). Installs only what is missing; needs
# root (apt-get). Without root it says what is missing, and those tests fail naming it.
set -euo pipefail
pkgs=()
for tool in podman buildah runc mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || pkgs+=("$tool")
done
command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
[ "${#pkgs[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${pkgs[*]} (install them with apt-get as root)" >&2
  exit 0
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
