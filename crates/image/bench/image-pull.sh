#!/usr/bin/env bash
# image-pull.sh: cold pull + unpack of each fixture image from the local registry fixture,
# agora-image (pull + copy-backend rootfs) beside `skopeo copy docker://… oci:…` +
# `umoci unpack` of the same image, same run. Prints median seconds and ratios.
set -euo pipefail
N=${N:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
FX=${AGORA_FIXTURES:-$ROOT/../shared/fixtures}
[ -f "$FX/registry.sh" ] || FX=/work/shared/fixtures
W=$(mktemp -d /tmp/agora-image-pullbench.XXXXXX)
export REGISTRY_STATE=$W/registry
trap 'bash "$FX/registry.sh" stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
for p in skopeo umoci; do
  command -v $p >/dev/null || apt-get install -y -qq $p >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $p >/dev/null; }
done
ADDR=$(bash "$FX/registry.sh" start)
bash "$FX/registry.sh" push "$W/images" >/dev/null
(cd "$ROOT" && cargo build -q --release -p agora-image --example pull)
BIN=$ROOT/target/release/examples/pull
median() { local v; v=$(cat); if grep -q fail <<<"$v"; then echo fail; else sort -n <<<"$v" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; fi; }
secs() { # prints seconds, or "fail" when the command failed
  local s e; s=$(date +%s.%N)
  if ! "$@" >/dev/null 2>&1; then echo fail; return; fi
  e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN{printf "%.4f\n", e-s}'
}
printf '%-22s %10s %14s %7s\n' image agora skopeo+umoci ratio
for img in busybox busybox-zstd multilayer httpd multiarch; do
  a=$(for i in $(seq 1 "$N"); do d="$W/a-$img-$i"; secs "$BIN" "$ADDR/$img:latest" "$d/store" "$d/prov"; rm -rf "$d"; done | median)
  s=$(for i in $(seq 1 "$N"); do d="$W/s-$img-$i"; mkdir -p "$d"
        secs sh -c "skopeo --insecure-policy copy -q --src-tls-verify=false docker://$ADDR/$img:latest oci:$d/oci:latest && umoci unpack --image $d/oci:latest $d/bundle"
        rm -rf "$d"; done | median)
  if [ "$a" = fail ] || [ "$s" = fail ]; then
    printf '%-22s %10s %14s %7s\n' "$img" "$a" "$s" "-"   # umoci 0.4 cannot unpack zstd layers
  else
    awk -v i="$img" -v a="$a" -v s="$s" 'BEGIN{printf "%-22s %10.3f %14.3f %6.2fx\n", i, a, s, a/s}'
  fi
done
