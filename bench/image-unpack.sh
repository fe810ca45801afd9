#!/usr/bin/env bash
# image-unpack.sh: layer unpack of a many-small-files layer (a tar of /usr/lib/python3.*),
# agora-image (gzip and zstd) beside GNU `tar -xzf` of the same layer, same run.
# Prints median seconds of N runs and ratios. Run on a quiet machine (uptime load < 1).
# BENCH_DIR=/dev/shm works on tmpfs: on this VM's disk, creating the files (which every
# variant does alike) varies 0.1-1.3 s between runs and swamps the decompression it compares.
set -euo pipefail
N=${N:-5}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
W=$(mktemp -d "${BENCH_DIR:-/tmp}/agora-image-bench.XXXXXX")
trap 'rm -rf "$W"' EXIT
SRC=$(ls -d /usr/lib/python3.* 2>/dev/null | head -1)
[ -n "$SRC" ] || { echo "no /usr/lib/python3.* to make a layer of" >&2; exit 1; }
command -v zstd >/dev/null || apt-get install -y -qq zstd >/dev/null
(cd "$ROOT" && cargo build -q --release -p agora-image --example unpack_layer)
BIN=$ROOT/target/release/examples/unpack_layer
tar -C / -cf "$W/layer.tar" "${SRC#/}"
gzip -6 -n -c "$W/layer.tar" >"$W/layer.tar.gz"
zstd -q -3 -c "$W/layer.tar" >"$W/layer.tar.zst"
FILES=$(tar -tf "$W/layer.tar" | wc -l)
echo "layer: $SRC, $FILES entries, $(du -h "$W/layer.tar" | cut -f1) tar, $(du -h "$W/layer.tar.gz" | cut -f1) gz, $(du -h "$W/layer.tar.zst" | cut -f1) zst"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
once() { # CMD... OUT: one run into a fresh dir (page cache warm, dirty data synced first)
  local out=$W/out t
  rm -rf "$out"; mkdir -p "$out"; sync
  t=$( { /usr/bin/time -f %e "$@" "$out" >/dev/null; } 2>&1 | tail -1 )
  rm -rf "$out"; echo "$t"
}
# Interleaved: run i of every variant back to back, so background noise hits all alike.
declare -A T
for i in $(seq 1 "$N"); do
  T[tar_gz]+="$(once sh -c 'tar -xzf "$0" -C "$1"' "$W/layer.tar.gz") "
  T[ag_gz]+="$(once "$BIN" "$W/layer.tar.gz") "
  T[ag_zst]+="$(once "$BIN" "$W/layer.tar.zst") "
  T[ag_tar]+="$(once "$BIN" "$W/layer.tar") "
  T[tar_plain]+="$(once sh -c 'tar -xf "$0" -C "$1"' "$W/layer.tar") "
done
med() { tr ' ' '\n' <<<"${T[$1]}" | grep . | median; }
tar_gz=$(med tar_gz); ag_gz=$(med ag_gz); ag_zst=$(med ag_zst); ag_tar=$(med ag_tar); tar_plain=$(med tar_plain)
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), runs: $N (median), $(nproc) CPUs, work dir on $(df --output=fstype "$W" | tail -1)"
printf '%-28s %8s s\n' "GNU tar -xzf" "$tar_gz" "agora-image gzip" "$ag_gz" "agora-image zstd" "$ag_zst" \
  "GNU tar -xf (plain)" "$tar_plain" "agora-image plain" "$ag_tar"
awk -v a="$ag_gz" -v b="$tar_gz" -v z="$ag_zst" -v p="$ag_tar" -v q="$tar_plain" 'BEGIN {
  printf "ratio gzip  agora/tar-xzf = %.2fx (goal <= 1.0)\n", a/b
  printf "ratio zstd  agora/tar-xzf = %.2fx (goal <= 0.65)\n", z/b
  printf "ratio plain agora/tar-xf  = %.2fx\n", p/q }'
