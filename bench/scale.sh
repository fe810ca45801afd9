#!/usr/bin/env bash
# End-to-end scale benchmarks: one master (embedded registry) and simulated agents
# (`agora agent --simulate N`, the real agent protocol over one connection each) on this
# machine, driven by the load framework (`agora load`).
#
#   bench/scale.sh storm      # registration storm of STORM_AGENTS (30000), then steady state
#   bench/scale.sh c1m        # placement throughput: C1M_AGENTS (5000) agents, C1M_TASKS (1000000) tasks
#   bench/scale.sh failover   # FO_AGENTS (40000) agents with FO_TASKS (400000) running tasks:
#                             # kill -9 the master, restart it, time the re-registration,
#                             # then /state and GET_STATE latency in that state;
#                             # FO_COMPLETED=100: each agent also reports 100 ended tasks
#                             # (4,000,000, Mesos's second failover shape)
#   bench/scale.sh state      # ST_AGENTS (40000) agents, ST_TASKS (400000) running tasks: GET /master/state
#                             # and GET_STATE latency, ST_ROUNDS (3) each, then /master/slaves and
#                             # /master/state-summary once, and how long the master's
#                             # state loop answers /metrics/snapshot meanwhile (PERF_OUT=FILE: perf record)
#   bench/scale.sh all
#
# Env: the sizes above, STEADY_SECS (30), AGORA_BIN (default: builds target/release/agora),
# KEEP_WORK=1 (keep the work dir with every log).
# Prints one line per figure; everything runs on 127.0.0.1 in a temp dir and every process
# is stopped by PID on exit. Widens net.ipv4.ip_local_port_range to 20000-65000 while it runs
# (root; restored on exit) and puts the masters below it.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
STORM_AGENTS=${STORM_AGENTS:-30000}
STEADY_SECS=${STEADY_SECS:-30}
C1M_AGENTS=${C1M_AGENTS:-5000}
C1M_TASKS=${C1M_TASKS:-1000000}
C1M_FRAMEWORKS=${C1M_FRAMEWORKS:-10}
FO_AGENTS=${FO_AGENTS:-40000}
FO_TASKS=${FO_TASKS:-400000}
FO_COMPLETED=${FO_COMPLETED:-0}
ST_AGENTS=${ST_AGENTS:-40000}
ST_TASKS=${ST_TASKS:-400000}
ST_ROUNDS=${ST_ROUNDS:-3}
WORK=$(mktemp -d /var/tmp/agora-bench-scale.XXXXXX)
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else echo "scale.sh: kept $WORK" >&2; fi
  if [ "$(id -u)" = 0 ] && [ -n "${PORT_RANGE:-}" ]; then
    sysctl -qw net.ipv4.ip_local_port_range="$PORT_RANGE" || true
  fi
}
trap cleanup EXIT

if [ -z "${AGORA_BIN:-}" ]; then
  cargo build -q --release -p agora
  AGORA_BIN=target/release/agora
fi
command -v jq >/dev/null && command -v curl >/dev/null || { echo "scale.sh needs jq and curl" >&2; exit 1; }
PORT_RANGE=$(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
if [ "$(id -u)" = 0 ]; then
  sysctl -qw net.ipv4.ip_local_port_range="20000 65000" || true
fi

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# A free port below the ephemeral range, so that no client connection can take the master's
# port while it restarts.
free_port() {
  python3 -c '
import random, socket
for _ in range(1000):
    p = random.randint(10000, 19999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()'
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Waits (up to 60 s) until PID has used under a tenth of a core for two seconds running.
wait_quiet() { # PID
  local quiet=0 t0 c0 hz
  hz=$(getconf CLK_TCK)
  t0=$(now)
  while [ "$quiet" -lt 2 ] && [ "$(since "$t0" | cut -d. -f1)" -lt 60 ]; do
    c0=$(cpu_ticks "$1")
    sleep 1
    if [ $(($(cpu_ticks "$1") - c0)) -lt $((hz / 10)) ]; then quiet=$((quiet + 1)); else quiet=0; fi
  done
}
metric() { curl -sf --max-time 60 "http://$MASTER/metrics/snapshot" | jq -r ".[\"$1\"] // 0"; }

# Starts a daemon detached, its output in $WORK/NAME.log; sets LAST_PID.
spawn() { # NAME ARGS...
  local name=$1
  shift
  setsid "$AGORA_BIN" "$@" </dev/null >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  disown "$LAST_PID"
}

start_master() { # WORKDIR [PORT]
  local port=${2:-$(free_port)} i
  spawn "master-$port" master --ip 127.0.0.1 --port "$port" --work-dir "$1" --agent-reregister-timeout 10mins
  MASTER_PID=$LAST_PID
  MASTER=127.0.0.1:$port
  for i in $(seq 1 400); do
    curl -sf "http://$MASTER/health" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "scale.sh: master did not start" >&2; tail -n 20 "$WORK/master-$port.log" >&2
  ss -tanp "( sport = :$port )" | awk '{print $1, $NF}' | sort | uniq -c | sort -rn | head -5 >&2
  exit 1
}

wait_metric() { # NAME VALUE TIMEOUT_SECS
  local deadline=$(($(date +%s) + $3)) v
  while :; do
    v=$(metric "$1" || echo 0)
    [ "${v%.*}" -ge "$2" ] 2>/dev/null && return 0
    [ "$(date +%s)" -ge "$deadline" ] && { echo "scale.sh: $1 reached $v of $2 in $3 s" >&2; return 1; }
    sleep 0.5
  done
}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  PIDS=()
  sleep 1
}

storm() {
  echo "== registration storm: $STORM_AGENTS agents at once; then ${STEADY_SECS}s steady state"
  start_master "$WORK/storm-master"
  sleep 1
  local base t0 c0 c1 rss
  base=$(rss_kb "$MASTER_PID")
  t0=$(now)
  spawn sim-storm agent --master "$MASTER" --simulate "$STORM_AGENTS" --simulate-name storm --simulate-report-interval 10s
  wait_metric master/slaves_connected "$STORM_AGENTS" 600
  echo "storm: $STORM_AGENTS agents registered in $(since "$t0") s (Mesos anchor: none published; goal: no agent lost)"
  sleep 5
  c0=$(cpu_ticks "$MASTER_PID")
  sleep "$STEADY_SECS"
  c1=$(cpu_ticks "$MASTER_PID")
  rss=$(rss_kb "$MASTER_PID")
  awk -v c="$((c1 - c0))" -v s="$STEADY_SECS" -v hz="$(getconf CLK_TCK)" -v n="$STORM_AGENTS" -v r="$rss" -v b="$base" \
    'BEGIN { printf "steady: master CPU %.1f%% of one core with %d agents pinged; RSS %.0f MB (%.1f KB per agent above the idle master; goal <= 20 KB)\n", 100*c/hz/s, n, r/1024, (r-b)/n }'
  echo "steady: registrations $(metric master/slave_registrations), connected $(metric master/slaves_connected), unreachable $(metric master/slaves_unreachable)"
  stop_all
}

c1m() {
  echo "== placement (C1M shape): $C1M_AGENTS agents, $C1M_TASKS tasks from $C1M_FRAMEWORKS frameworks"
  start_master "$WORK/c1m-master"
  spawn sim-c1m agent --master "$MASTER" --simulate "$C1M_AGENTS" --simulate-name c1m --simulate-report-interval 10s
  wait_metric master/slaves_connected "$C1M_AGENTS" 300
  local base rss out
  base=$(rss_kb "$MASTER_PID")
  "$AGORA_BIN" load --master "$MASTER" --frameworks "$C1M_FRAMEWORKS" --tasks "$C1M_TASKS" --timeout 30mins --hold \
    >"$WORK/load.out" 2>"$WORK/load.err" </dev/null &
  local load=$!
  PIDS+=("$load")
  disown "$load"
  while [ ! -s "$WORK/load.out" ]; do
    kill -0 "$load" 2>/dev/null || { echo "scale.sh: load failed" >&2; tail "$WORK/load.err" >&2; exit 1; }
    sleep 1
  done
  out=$(head -n 1 "$WORK/load.out")
  sleep 5 # let the launch burst's buffers drain before reading RSS
  rss=$(rss_kb "$MASTER_PID")
  echo "c1m: $(jq -r '"\(.started) tasks started in \(.seconds|.*100|round/100) s: \(.tasks_per_second|round) tasks/s (Nomad C1M 3,750/s; kube-scheduler 5k-node floor 810/s); offer->RUNNING p50 \(.latency_ms_p50|round) ms p99 \(.latency_ms_p99|round) ms; duplicates \(.duplicate_starts), overcommits \(.overcommit|length)"' <<<"$out")"
  awk -v r="$rss" -v b="$base" -v n="$C1M_TASKS" \
    'BEGIN { printf "c1m: master RSS %.0f MB with the tasks running: %.2f KB per running task (goal <= 2 KB)\n", r/1024, (r-b)/n }'
  echo "c1m: agents connected $(metric master/slaves_connected) of $C1M_AGENTS, unreachable $(metric master/slaves_unreachable); simulator: $(tail -n 1 "$WORK/sim-c1m.log")"
  stop_all
}

failover() {
  echo "== master failover: $FO_AGENTS agents, $FO_TASKS running tasks, $((FO_AGENTS * FO_COMPLETED)) completed"
  local port dir t0 t1 out sim_pid
  port=$(free_port)
  dir=$WORK/fo-master
  start_master "$dir" "$port"
  spawn sim-fo agent --master "$MASTER" --simulate "$FO_AGENTS" --simulate-name fo --simulate-report-interval 10s \
    --simulate-completed-tasks "$FO_COMPLETED"
  sim_pid=$LAST_PID
  wait_metric master/slaves_connected "$FO_AGENTS" 900
  "$AGORA_BIN" load --master "$MASTER" --frameworks 10 --tasks "$FO_TASKS" --timeout 30mins --hold \
    >"$WORK/fo-load.out" 2>"$WORK/fo-load.err" </dev/null &
  PIDS+=("$!")
  disown "$!"
  while [ ! -s "$WORK/fo-load.out" ]; do sleep 1; done
  echo "failover: $(jq -r '"\(.started) tasks running (\(.tasks_per_second|round) tasks/s)"' "$WORK/fo-load.out")"
  wait_metric master/tasks_running "$FO_TASKS" 300
  # Simulated agents encode their re-registration 5-10 s after their state last changed
  # (the last acknowledgement), as a real agent would on its own machine.
  sleep 15
  echo "failover: master RSS $(($(rss_kb "$MASTER_PID") / 1024)) MB before the kill"
  t0=$(now)
  kill -9 "$MASTER_PID"
  # Its listening socket is gone once every thread has exited (the files are shared).
  while [ "$(ls "/proc/$MASTER_PID/task" 2>/dev/null | wc -l)" -gt 1 ] \
    || { [ -d "/proc/$MASTER_PID" ] && ! grep -q '^State:.*Z' "/proc/$MASTER_PID/status" 2>/dev/null; }; do
    sleep 0.005
  done
  start_master "$dir" "$port"
  if [ -n "${PERF_OUT:-}" ]; then # profile the new master's re-registration
    perf record -F 299 ${PERF_CG:--g} -p "$MASTER_PID" -o "$PERF_OUT" -- sleep "${PERF_SECS:-10}" >/dev/null 2>&1 &
  fi
  echo "failover: new master serving after $(since "$t0") s (registry of $FO_AGENTS agents recovered)"
  if [ -n "${FO_TRACE:-}" ]; then # the re-registration curve, every half second
    (for i in $(seq 1 40); do echo "  +$(since "$t0") s: $(metric master/slave_reregistrations) re-registered" >&2; sleep 0.5; done) &
  fi
  local m0 s0
  m0=$(cpu_ticks "$MASTER_PID")
  s0=$(cpu_ticks "$sim_pid")
  # Connected counts each agent once (a re-registration counter would count an agent that
  # came back twice).
  wait_metric master/slaves_connected "$FO_AGENTS" 900
  t1=$(since "$t0")
  awk -v m="$(($(cpu_ticks "$MASTER_PID") - m0))" -v s="$(($(cpu_ticks "$sim_pid") - s0))" -v hz="$(getconf CLK_TCK)" -v t="$t1" \
    'BEGIN { printf "failover: CPU during re-registration: master %.1f s, simulator %.1f s, in %.1f s of wall time (2 cores)\n", m/hz, s/hz, t }'
  wait_metric master/tasks_running "$FO_TASKS" 300
  if [ "$FO_COMPLETED" -gt 0 ]; then
    echo "failover: all $FO_AGENTS agents re-registered $t1 s after the kill, all $FO_TASKS tasks known again after $(since "$t0") s, with $((FO_AGENTS * FO_COMPLETED)) completed tasks reported (Mesos 1.5 with 4,000,000: ~135 s)"
  else
    echo "failover: all $FO_AGENTS agents re-registered $t1 s after the kill, all $FO_TASKS tasks known again after $(since "$t0") s (Mesos 1.5: ~19 s; goal <= 5 s)"
  fi
  # The simulated agents re-encode their reports 5-10 s after re-registering, on the
  # master's two cores; on a real cluster that is every agent's own machine: read once
  # they are done.
  wait_quiet "$sim_pid"
  local r
  r=$(read_master "http://$MASTER/master/state")
  echo "failover: GET /master/state took ${r#* } s ($((${r%% *} / 1048576)) MB; Mesos 5.7-9.6 s; goal <= 1 s)"
  r=$(read_master "http://$MASTER/api/v1" '{"type":"GET_STATE"}')
  echo "failover: operator GET_STATE took ${r#* } s ($((${r%% *} / 1048576)) MB; goal <= 1 s)"
  echo "failover: master RSS $(($(rss_kb "$MASTER_PID") / 1024)) MB after; simulator: $(tail -n 1 "$WORK/sim-fo.log")"
  if [ "$FO_COMPLETED" -gt 0 ]; then
    echo "failover: completed tasks the new master keeps: $(curl -sf --max-time 300 "http://$MASTER/master/state" \
      | jq '[.frameworks[], .unregistered_frameworks[] | .completed_tasks | length] | add') (the newest 1000 per framework)"
  fi
  stop_all
}

# One read of URL (GET, or POST of BODY) as its client sees it: prints "BYTES SECONDS" (curl's
# own timing, from the request to the last byte). The body is counted and dropped: saving
# 300 MB to a file costs this VM 0.1-0.5 s of page cache (measured), which is the client's
# time, not the master's.
read_master() { # URL [BODY]
  if [ -n "${2:-}" ]; then
    curl -sf --max-time 300 -o /dev/null -w '%{size_download} %{time_total}' -H 'Content-Type: application/json' -d "$2" "$1"
  else
    curl -sf --max-time 300 -o /dev/null -w '%{size_download} %{time_total}' "$1"
  fi
}

# One timed read (see read_master); meanwhile /metrics/snapshot (answered by the master's
# state loop) is asked every 50 ms and the slowest answer is printed too.
timed_read() { # NAME URL [BODY]
  local probe_out=$WORK/probe.txt out=$WORK/read.txt reader
  : >"$probe_out"
  read_master "$2" "${3:-}" >"$out" &
  reader=$!
  while kill -0 "$reader" 2>/dev/null; do
    curl -s -o /dev/null -w '%{time_total}\n' --max-time 60 "http://$MASTER/metrics/snapshot" >>"$probe_out"
    sleep 0.05
  done
  wait "$reader"
  local r; r=$(cat "$out")
  echo "state: $1 took ${r#* } s ($((${r%% *} / 1048576)) MB); the state loop answered /metrics/snapshot in at most $(sort -n "$probe_out" | tail -1) s meanwhile ($(wc -l <"$probe_out") probes)"
}

state() {
  echo "== big reads: $ST_AGENTS agents, $ST_TASKS running tasks"
  start_master "$WORK/st-master"
  spawn sim-st agent --master "$MASTER" --simulate "$ST_AGENTS" --simulate-name st --simulate-report-interval 10s
  wait_metric master/slaves_connected "$ST_AGENTS" 900
  "$AGORA_BIN" load --master "$MASTER" --frameworks 10 --tasks "$ST_TASKS" --timeout 30mins --hold \
    >"$WORK/st-load.out" 2>"$WORK/st-load.err" </dev/null &
  PIDS+=("$!")
  disown "$!"
  wait_metric master/tasks_running "$ST_TASKS" 900
  sleep 3
  echo "state: master RSS $(($(rss_kb "$MASTER_PID") / 1024)) MB"
  if [ -n "${PERF_OUT:-}" ]; then
    perf record -F 499 ${PERF_CG:--g} -p "$MASTER_PID" -o "$PERF_OUT" -- sleep "${PERF_SECS:-15}" >/dev/null 2>&1 &
  fi
  local i
  for i in $(seq 1 "$ST_ROUNDS"); do
    timed_read "GET /master/state" "http://$MASTER/master/state"
    timed_read "operator GET_STATE" "http://$MASTER/api/v1" '{"type":"GET_STATE"}'
  done
  timed_read "GET /master/slaves" "http://$MASTER/master/slaves"
  timed_read "GET /master/state-summary" "http://$MASTER/master/state-summary"
  echo "state: goal <= 1 s each (Mesos /state: 5.7-9.6 s); master RSS $(($(rss_kb "$MASTER_PID") / 1024)) MB after"
  if [ -n "${ST_KEEP:-}" ]; then # the bodies too (untimed)
    curl -sf --max-time 300 -o "$ST_KEEP/state.json" "http://$MASTER/master/state"
    curl -sf --max-time 300 -o "$ST_KEEP/getstate.json" -H 'Content-Type: application/json' -d '{"type":"GET_STATE"}' "http://$MASTER/api/v1"
    cp "$WORK"/master-*.log "$ST_KEEP/"
  fi
  stop_all
}

case "${1:-all}" in
  storm) storm ;;
  c1m) c1m ;;
  failover) failover ;;
  state) state ;;
  all) storm; c1m; failover ;;
  *) echo "usage: bench/scale.sh storm|c1m|failover|state|all" >&2; exit 2 ;;
esac
