#!/usr/bin/env bash
# Agent recovery time: with N live (checkpointed) tasks, SIGKILL the agent and measure from
# the restart to "re-registered with all its tasks" (the agent's slave/registered metric and
# the master seeing N running tasks on it). Release build, this machine.
#
#   bench/recovery.sh [N=100] [N2=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${BENCH_DIR:-/var/tmp/agora-bench-recovery}
cargo build --release -q -p agora
cargo build --release -q -p agora-client --example hold_tasks
BIN=target/release/agora
now_ms() { date +%s%3N; }
run() {
  local n=$1
  rm -rf "$W"; mkdir -p "$W"
  "$BIN" master --port 0 --work-dir "$W/m" >"$W/master.log" 2>&1 &
  local mpid=$!
  for _ in $(seq 100); do grep -q 'listening on' "$W/master.log" && break; sleep 0.05; done
  local master; master=$(grep -o 'listening on .*' "$W/master.log" | awk '{print $3}')
  local port=$((20000 + RANDOM % 20000))
  local agent_args=(agent --master "$master" --port "$port" --work-dir "$W/a" --resources "cpus:$((n / 50 + 2));mem:$((n * 40 + 1000));disk:100")
  "$BIN" "${agent_args[@]}" >"$W/agent.log" 2>&1 &
  local apid=$!
  target/release/examples/hold_tasks "$master" "$n" >"$W/fw.out" 2>"$W/fw.err" &
  local fpid=$!
  for _ in $(seq 3000); do grep -q ready "$W/fw.out" && break; sleep 0.1; done
  grep -q ready "$W/fw.out" || { echo "tasks did not all start" >&2; kill $fpid $apid $mpid; return 1; }
  kill -9 "$apid"; wait "$apid" 2>/dev/null || true
  local t0; t0=$(now_ms)
  "$BIN" "${agent_args[@]}" >>"$W/agent.log" 2>&1 &
  apid=$!
  while :; do
    local m; m=$(curl -s "127.0.0.1:$port/metrics/snapshot" || true)
    if echo "$m" | grep -q '"slave/registered":1' && echo "$m" | grep -q "\"slave/tasks_running\":$n\b"; then break; fi
    sleep 0.01
  done
  local t1; t1=$(now_ms)
  echo "| $n live tasks | $((t1 - t0)) ms |"
  kill "$fpid" 2>/dev/null || true
  kill "$apid"; wait "$apid" 2>/dev/null || true
  kill "$mpid"; wait "$mpid" 2>/dev/null || true
}
echo "| agent restart -> re-registered with all tasks | time |"
echo "|---|---|"
set -- ${@:-100 1000}
for n in "$@"; do run "$n"; done
