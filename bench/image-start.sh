#!/usr/bin/env bash
# Image container start: Agora's agent (linux launcher, default isolation, overlay backend)
# pulling and starting each fixture image, beside `skopeo copy` + `umoci unpack` of the same
# image from the same registry, in the same run; and the warm start (image in the store)
# beside the image-less container start on the same agent.
#
#   bench/image-start.sh [N=50]      (run as root on a quiet machine: uptime load < 1.5)
#
# Cold: before each launch the agent's store is emptied (PRUNE_IMAGES), then one /bin/true
# task in the image: ACCEPT -> TASK_RUNNING as the framework sees it (pull, unpack, rootfs,
# container start). Peer: skopeo copy docker://... oci:... && umoci unpack (no start at all).
# Warm: N launches of /bin/true in busybox (already in the store) and N without an image,
# interleaved in batches; ACCEPT -> TASK_RUNNING p50.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
ROOT=$(pwd)
FX=${AGORA_FIXTURES:-$ROOT/../shared/fixtures}
[ -f "$FX/registry.sh" ] || FX=/work/shared/fixtures
W=$(mktemp -d /var/tmp/agora-image-startbench.XXXXXX)
export REGISTRY_STATE=$W/registry
MPID= APID=
cleanup() {
  [ -n "$APID" ] && kill "$APID" 2>/dev/null && wait "$APID" 2>/dev/null || true
  [ -n "$MPID" ] && kill "$MPID" 2>/dev/null && wait "$MPID" 2>/dev/null || true
  bash "$FX/registry.sh" stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
for p in skopeo umoci; do
  command -v $p >/dev/null || apt-get install -y -qq $p >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $p >/dev/null; }
done
bash "$FX/make-images.sh" "$W/images"
ADDR=$(bash "$FX/registry.sh" start)
bash "$FX/registry.sh" push "$W/images" >/dev/null
cargo build --release -q -p agora
cargo build --release -q -p agora-client --example launch_bench
BIN=target/release/agora
BENCH=target/release/examples/launch_bench
"$BIN" master --port 0 --work-dir "$W/m" >"$W/master.log" 2>&1 &
MPID=$!
for _ in $(seq 100); do grep -q 'listening on' "$W/master.log" && break; sleep 0.05; done
MASTER=$(grep -o 'listening on .*' "$W/master.log" | awk '{print $3}')
"$BIN" agent --master "$MASTER" --port 0 --work-dir "$W/a" --resources 'cpus:2;mem:4096;disk:1000' \
  --docker-registry "http://$ADDR" >"$W/agent.log" 2>&1 &
APID=$!
for _ in $(seq 100); do grep -q 'listening on' "$W/agent.log" && break; sleep 0.05; done
AGENT=$(grep -o 'listening on .*' "$W/agent.log" | awk '{print $3}')
sleep 1
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
secs() {
  local s e; s=$(date +%s.%N)
  if ! "$@" >/dev/null 2>&1; then echo fail; return; fi
  e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN{printf "%.4f\n", e-s}'
}
ms_p50() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["framework_accept_to_running_ms_p50"])'; }
echo "| image | agora cold start (ms, p50) | skopeo copy + umoci unpack (ms, p50) | ratio |"
echo "|---|---|---|---|"
K=$(( N < 10 ? N : 10 ))
for img in busybox busybox-zstd multilayer httpd multiarch; do
  a=$("$BENCH" "$MASTER" "$AGENT" "$K" "$img" cold | ms_p50)
  s=$(for i in $(seq 1 "$K"); do d="$W/s-$img-$i"; mkdir -p "$d"
        secs sh -c "skopeo --insecure-policy copy -q --src-tls-verify=false docker://$ADDR/$img:latest oci:$d/oci:latest && umoci unpack --image $d/oci:latest $d/bundle"
        rm -rf "$d"; done | median)
  if [ "$s" = fail ]; then
    printf '| %s | %.1f | fails (umoci 0.4 cannot unpack zstd layers) | - |\n' "$img" "$a"
  else
    awk -v i="$img" -v a="$a" -v s="$s" 'BEGIN{printf "| %s | %.1f | %.1f | %.2fx |\n", i, a, s*1000, a/(s*1000)}'
  fi
done
# Warm: busybox stays in the store; interleave batches with the image-less start.
"$BENCH" "$MASTER" "$AGENT" 1 busybox warm >/dev/null
declare -A WARM
B=$(( N / 10 > 0 ? N / 10 : 1 ))
for _ in 1 2 3 4 5 6 7 8 9 10; do
  WARM[img]+="$("$BENCH" "$MASTER" "$AGENT" "$B" busybox warm | ms_p50) "
  WARM[none]+="$("$BENCH" "$MASTER" "$AGENT" "$B" - warm | ms_p50) "
done
wi=$(tr ' ' '\n' <<<"${WARM[img]}" | grep . | median); wn=$(tr ' ' '\n' <<<"${WARM[none]}" | grep . | median)
echo
echo "| warm start, ACCEPT -> TASK_RUNNING, median of 10 interleaved batches' p50 ($((B * 10)) launches each) | ms | ratio |"
echo "|---|---|---|"
awk -v i="$wi" -v n="$wn" 'BEGIN{printf "| no image | %.1f | 1.00x |\n| busybox, cached (overlay rootfs) | %.1f | %.2fx (goal <= 1.2) |\n", n, i, i/n}'
echo
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
