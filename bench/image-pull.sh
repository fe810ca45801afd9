#!/usr/bin/env bash
# image-pull.sh: cold pull + unpack of each fixture image from the local registry fixture,
# agora-image (pull + copy-backend rootfs) beside `skopeo copy docker://… oci:…` +
# `umoci unpack` of the same image, same run. Prints median seconds and ratios.
set -euo pipefail
N=${N:-3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
FX=${AGORA_FIXTURES:-$ROOT/../shared/fixtures}
[ -f "$FX/registry.sh" ] || FX=/work/shared/fixtures
W=$(mktemp -d "${BENCH_DIR:-/tmp}/agora-image-pullbench.XXXXXX")
export REGISTRY_STATE=$W/registry
trap 'bash "$FX/registry.sh" stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
for p in skopeo umoci; do
  command -v $p >/dev/null || apt-get install -y -qq $p >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $p >/dev/null; }
done
ADDR=$(bash "$FX/registry.sh" start)
bash "$FX/registry.sh" push "$W/images" >/dev/null
(cd "$ROOT" && cargo build -q --release -p agora-image --example pull --example unpack_layer)
BIN=$ROOT/target/release/examples/pull
UNPACK=$ROOT/target/release/examples/unpack_layer
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

# Pipelining: one large layer of many small files (a tar of /usr/lib/python3.*, gzip -6)
# pushed as image `big`. agora-image's pull (download + decompress + verify + unpack, no
# rootfs; timed inside the process, in a store already open as an agent's is, so without
# process start and loading the TLS roots, which the curl and gzip runs pay) beside its parts alone: downloading the blob (curl to /dev/null) and
# decompressing it (gzip -dc to /dev/null, and agora-image's own decoder + diff_id hash alone,
# the pipeline's decompression stage). Goal: pull <= 1.1x max(download, decompress).
# BENCH_DIR=/dev/shm puts the registry, store and outputs on tmpfs: this VM's disk makes
# file creation vary 0.1-1.3 s between runs, which then swamps everything else.
SRC=$(ls -d /usr/lib/python3.* 2>/dev/null | head -1)
if [ -n "$SRC" ]; then
  B=$W/big; mkdir -p "$B/blobs/sha256"
  tar -C / -cf "$W/big.tar" "${SRC#/}"
  gzip -6 -n -c "$W/big.tar" >"$W/big.tar.gz"
  python3 - "$W" <<'PY'
import hashlib, json, os, shutil, sys
w = sys.argv[1]; b = w + "/big"
def put(data):
    d = hashlib.sha256(data).hexdigest(); open(f"{b}/blobs/sha256/{d}", "wb").write(data); return d, len(data)
diff = hashlib.sha256(open(w + "/big.tar", "rb").read()).hexdigest()
gz = open(w + "/big.tar.gz", "rb").read()
ld, ls = put(gz)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff]}}).encode()
cd, cs = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + ld, "size": ls}]}).encode()
md, ms = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]},
    open(b + "/index.json", "w"))
open(b + "/oci-layout", "w").write('{"imageLayoutVersion": "1.0.0"}')
open(w + "/big.digest", "w").write(ld)
PY
  skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$B:latest" "docker://$ADDR/big:latest"
  LD=$(cat "$W/big.digest")
  declare -A P
  for i in $(seq 1 "$N"); do   # interleaved
    d="$W/big-$i"   # dirty data of the previous run written back first (as image-unpack.sh)
    sync; out=$(AGORA_BENCH_NO_PROVISION=1 "$BIN" "$ADDR/big:latest" "$d/store" "$d/prov" 2>/dev/null || echo fail)
    P[agora]+="$(sed -n 's/.* pull=//p' <<<"$out" | grep . || echo fail) "; rm -rf "$d"
    sync; P[download]+="$(secs curl -sf -o /dev/null "http://$ADDR/v2/big/blobs/sha256:$LD") "
    sync; P[decompress]+="$(secs sh -c 'gzip -dc "$0" >/dev/null' "$W/big.tar.gz") "
    sync; P[ourdecomp]+="$(secs "$UNPACK" --decompress-only "$W/big.tar.gz") "
    mkdir -p "$W/x"; sync; P[tar]+="$(secs tar -xzf "$W/big.tar.gz" -C "$W/x") "; rm -rf "$W/x"
    mkdir -p "$W/x"; sync; P[extract]+="$(secs tar -xf "$W/big.tar" -C "$W/x") "; rm -rf "$W/x"
  done
  pm() { tr ' ' '\n' <<<"${P[$1]}" | grep . | median; }
  echo
  echo "large layer: $SRC, $(du -h "$W/big.tar.gz" | cut -f1) gzip, $(tar -tf "$W/big.tar" | wc -l) entries"
  awk -v a="$(pm agora)" -v d="$(pm download)" -v z="$(pm decompress)" -v t="$(pm tar)" -v x="$(pm extract)" -v o="$(pm ourdecomp)" 'BEGIN {
    m = d > z ? d : z; m3 = m > x ? m : x; mo = d > o ? d : o
    printf "%-34s %8.3f s\n", "download alone (curl)", d
    printf "%-34s %8.3f s\n", "decompress alone (gzip -dc)", z
    printf "%-34s %8.3f s\n", "decompress alone (agora decoder)", o
    printf "%-34s %8.3f s\n", "write the files alone (tar -xf)", x
    printf "%-34s %8.3f s\n", "tar -xzf of the blob", t
    printf "%-34s %8.3f s  = %.2fx max(download, decompress) (goal <= 1.1)\n", "agora-image pull (open store)", a, a / m
    printf "%-34s %8s    = %.2fx max(download, agora decoder alone) (goal <= 1.1)\n", "", "", a / mo
    printf "%-34s %8s    = %.2fx max(download, decompress, write); %.2fx tar -xzf\n", "", "", a / m3, a / t }'
fi
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), runs: $N (median), $(nproc) CPUs, work dir on $(df --output=fstype "$W" | tail -1)"
