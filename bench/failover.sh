#!/usr/bin/env bash
# Failover time of highly available masters: 3 masters on a 3-member etcd (the fixture),
# AGENTS agents, and ROUNDS times: kill -9 the leading master, then measure
#   serving: until another master serves as the leader (its /state answers 200), and
#   agents:  until every agent is active on it again;
# then restart the killed master on its port (it comes back as a follower) for the next round.
#
#   bench/failover.sh                  # 2 agents, 5 rounds, release build
#   AGENTS=4 ROUNDS=10 bench/failover.sh
#   SIM_AGENTS=1000 bench/failover.sh  # 1,000 simulated agents (agora agent --simulate)
#
# Env: AGENTS (2), SIM_AGENTS (0: real agents), ROUNDS (5), LEASE_TTL (3secs, --etcd-lease-ttl), BACKOFF (1secs, the
# agents' --registration-backoff-factor, Mesos's default), AGORA_BIN (default: builds
# target/release/agora), AGORA_FIXTURES (default ../shared/fixtures), ETCD_BASE_PORT (25400).
# Everything runs on 127.0.0.1 in a temp dir; every process is stopped by PID on exit.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-2}
SIM_AGENTS=${SIM_AGENTS:-0}
ROUNDS=${ROUNDS:-5}
LEASE_TTL=${LEASE_TTL:-3secs}
BACKOFF=${BACKOFF:-1secs}
FIXTURES=${AGORA_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
export ETCD_BASE_PORT=${ETCD_BASE_PORT:-25400}
WORK=$(mktemp -d /tmp/agora-bench-failover.XXXXXX)
export ETCD_STATE=$WORK/etcd
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  bash "$FIXTURES/etcd.sh" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${AGORA_BIN:-}" ]; then
  cargo build -q --release -p agora
  AGORA_BIN=target/release/agora
fi
command -v jq >/dev/null && command -v curl >/dev/null || { echo "failover.sh needs jq and curl" >&2; exit 1; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# Starts a daemon with its log in $WORK; sets STARTED (its address, from its "listening
# on" line) and PID_<NAME>.
start() { # NAME ARGS...
  local name=$1 log i addr
  shift
  log=$WORK/$name.$(date +%s%N).log
  setsid "$AGORA_BIN" "$@" </dev/null >"$log" 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  disown $!
  for i in $(seq 1 400); do
    addr=$(grep -o 'listening on [0-9.:]*' "$log" 2>/dev/null | awk '{print $3}' || true)
    [ -n "$addr" ] && { STARTED=$addr; return 0; }
    sleep 0.025
  done
  echo "failover.sh: $name did not start:" >&2; tail -n 20 "$log" >&2; exit 1
}

ENDPOINTS=$(bash "$FIXTURES/etcd.sh" start 3)
PREFIX=/bench-$$
MASTER_FLAGS=(--ip 127.0.0.1 --etcd "$ENDPOINTS" --etcd-prefix "$PREFIX" --etcd-lease-ttl "$LEASE_TTL")
ADDR=()
for i in 0 1 2; do
  start "m$i" master --port 0 --work-dir "$WORK/m$i" "${MASTER_FLAGS[@]}"
  ADDR[$i]=$STARTED
done
MASTERS=$(IFS=,; echo "${ADDR[*]}")

# The leader as master $1 sees it, if that leader serves; empty otherwise.
leader_via() {
  local loc
  loc=$(curl -s -m 1 -o /dev/null -w '%{http_code} %header{location}' "http://$1/master/redirect" 2>/dev/null || true)
  case $loc in
    "307 //"*) loc=${loc#307 //} ;;
    *) return 0 ;;
  esac
  [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://$loc/state" 2>/dev/null || true)" = 200 ] && echo "$loc"
  return 0
}
leader() { # [EXCEPT]
  local a l
  for a in "${ADDR[@]}"; do
    [ "$a" = "${1:-}" ] && continue
    l=$(leader_via "$a")
    [ -n "$l" ] && [ "$l" != "${1:-}" ] && { echo "$l"; return 0; }
  done
  return 0
}
active_agents() {
  curl -s -m 2 "http://$1/metrics/snapshot" 2>/dev/null | jq '.["master/slaves_active"]' 2>/dev/null || echo 0
}

L=""
for i in $(seq 1 400); do L=$(leader); [ -n "$L" ] && break; sleep 0.025; done
[ -n "$L" ] || { echo "failover.sh: no leader elected" >&2; exit 1; }
if [ "$SIM_AGENTS" -gt 0 ]; then
  # Simulated agents (one process, the real agent protocol) instead of real ones.
  AGENTS=$SIM_AGENTS
  setsid "$AGORA_BIN" agent --master "$MASTERS" --simulate "$SIM_AGENTS" --simulate-name fo \
    --simulate-report-interval 10s </dev/null >"$WORK/sim.log" 2>&1 &
  PIDS+=($!)
  disown $!
else
  for i in $(seq 1 "$AGENTS"); do
    start "a$i" agent --ip 127.0.0.1 --port 0 --master "$MASTERS" --work-dir "$WORK/a$i" \
      --isolation posix/cpu,posix/mem --resources 'cpus:2;mem:2048;disk:1000;ports:[31000-32000]' \
      --registration-backoff-factor "$BACKOFF"
  done
fi
for i in $(seq 1 2400); do [ "$(active_agents "$L")" = "$AGENTS" ] && break; sleep 0.025; done
[ "$(active_agents "$L")" = "$AGENTS" ] || { echo "failover.sh: agents did not register" >&2; exit 1; }

echo "failover: 3 masters (--etcd-lease-ttl $LEASE_TTL), 3 etcd members, $AGENTS agents (--registration-backoff-factor $BACKOFF), $ROUNDS rounds"
SERVING=()
BACK=()
for r in $(seq 1 "$ROUNDS"); do
  L=$(leader)
  for k in 0 1 2; do [ "${ADDR[$k]}" = "$L" ] && idx=$k; done
  eval "victim=\$PID_m$idx"
  # Let the lease be renewed a few times first: rounds start from a steady state.
  sleep 2
  t0=$(now)
  kill -9 "$victim"
  new=""
  while [ -z "$new" ]; do
    new=$(leader "$L")
    [ "$(since "$t0")" \> 30 ] && { echo "failover.sh: no new leader after 30 s" >&2; exit 1; }
    [ -z "$new" ] && sleep 0.02
  done
  serving=$(since "$t0")
  while [ "$(active_agents "$new")" != "$AGENTS" ]; do
    [ "$(since "$t0")" \> 60 ] && { echo "failover.sh: agents did not come back after 60 s" >&2; exit 1; }
    sleep 0.02
  done
  back=$(since "$t0")
  echo "round $r: killed $L; $new serving after ${serving}s; $AGENTS agents re-registered after ${back}s"
  SERVING+=("$serving")
  BACK+=("$back")
  # The killed master comes back on its port, as a follower.
  port=${L##*:}
  start "m$idx" master --port "$port" --work-dir "$WORK/m$idx" "${MASTER_FLAGS[@]}"
  for i in $(seq 1 400); do [ "$(leader_via "$L")" = "$new" ] && break; sleep 0.025; done
done

stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "min %.2f s, median %.2f s, max %.2f s", v[1], (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[NR] }'; }
echo "new leader serving:     $(stats "${SERVING[@]}")"
echo "all agents re-registered: $(stats "${BACK[@]}")"
