#!/usr/bin/env bash
# Installs what building and testing Agora needs on Debian bookworm (run as root).
# Idempotent and quiet when everything is already there.
set -euo pipefail
pkgs=(gcc libc6-dev pkg-config procps iproute2 ca-certificates python3 util-linux xfsprogs containernetworking-plugins iptables curl jq busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -y -qq install --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get -qq update >/dev/null && apt-get -y -qq install --no-install-recommends "${missing[@]}" >/dev/null; }
fi
if ! command -v cargo >/dev/null 2>&1; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && export PATH="$d:$PATH"
  done
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: no Rust toolchain found (cargo); this machine kind ships one via rustup" >&2
  exit 1
fi
