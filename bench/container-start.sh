#!/usr/bin/env bash
# Container start latency: Agora (agent + linux launcher, default isolation) beside crun
# and runc on the same busybox rootfs, in the same run on the same machine.
#
#   bench/container-start.sh [N=200] [SEQ=1000]
#
# Agora: N sequential launches of /bin/true through the real scheduler API; the agent
# measures RUN_TASK received -> its container spawned (the agent's own work), -> the executor
# subscribed, -> TASK_RUNNING sent and -> terminal update (launch to exit).
# Peers: N runs each of `crun run` and `runc run` (bundle without a network namespace, like
# a default task) and the namespace-only floor `unshare -fpmui --mount-proc /bin/true`.
# Then SEQ sequential launches of each for the throughput comparison. Prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
SEQ=${2:-1000}
SHARED=${SHARED:-$(cd .. && pwd)/shared}
W=${BENCH_DIR:-/var/tmp/agora-bench}
mkdir -p "$W"
bash "$SHARED/bench/peer-runtimes.sh" "$W/peers"
cargo build --release -q -p agora
cargo build --release -q -p agora-client --example launch_bench
BIN=target/release/agora
rm -rf "$W/m" "$W/a"
"$BIN" master --port 0 --work-dir "$W/m" >"$W/master.log" 2>&1 &
MPID=$!
trap 'kill $APID $MPID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$W/master.log" && break; sleep 0.05; done
MASTER=$(grep -o 'listening on .*' "$W/master.log" | awk '{print $3}')
"$BIN" agent --master "$MASTER" --port 0 --work-dir "$W/a" --resources 'cpus:2;mem:4096;disk:1000' >"$W/agent.log" 2>&1 &
APID=$!
for _ in $(seq 100); do grep -q 'listening on' "$W/agent.log" && break; sleep 0.05; done
AGENT=$(grep -o 'listening on .*' "$W/agent.log" | awk '{print $3}')
sleep 1
echo "agora: $N launches ..." >&2
target/release/examples/launch_bench "$MASTER" "$AGENT" "$N" >"$W/agora.json"
echo "agora: $SEQ sequential launches ..." >&2
kill $APID; wait $APID 2>/dev/null || true
rm -rf "$W/a"
"$BIN" agent --master "$MASTER" --port 0 --work-dir "$W/a" --resources 'cpus:2;mem:4096;disk:1000' >"$W/agent.log" 2>&1 &
APID=$!
for _ in $(seq 100); do grep -q 'listening on' "$W/agent.log" && break; sleep 0.05; done
AGENT=$(grep -o 'listening on .*' "$W/agent.log" | awk '{print $3}')
sleep 1
target/release/examples/launch_bench "$MASTER" "$AGENT" "$SEQ" >"$W/agora-seq.json"
echo "peers ..." >&2
python3 - "$W" "$N" "$SEQ" <<'PY'
import json, subprocess, sys, time
w, n, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
peers = w + "/peers"
def run(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t) * 1000
cmds = {
    "crun run": lambda i: [peers + "/nsrun.sh", "crun", "run", "--bundle", peers + "/bundle-nonet", "bc-%d" % i],
    "runc run": lambda i: ["runc", "run", "--bundle", peers + "/bundle-nonet", "br-%d" % i],
    "unshare floor": lambda i: ["unshare", "-fpmui", "--mount-proc", "/bin/true"],
}
samples = {k: [] for k in cmds}
for i in range(n):  # alternate so drift hits all alike
    for k, c in cmds.items():
        samples[k].append(run(c(i)))
def pct(v, q):
    v = sorted(v); return v[max(0, min(len(v) - 1, int(-(-q * len(v) // 1)) - 1))]
t = time.perf_counter()
for i in range(seq):
    run(cmds["crun run"](100000 + i))
crun_seq = time.perf_counter() - t
a = json.load(open(w + "/agora.json")); s = json.load(open(w + "/agora-seq.json"))
crun50, crun99 = pct(samples["crun run"], .5), pct(samples["crun run"], .99)
rows = [
    ("agora: RUN_TASK -> container spawned (agent)", a["agent_run_task_to_spawned_ms_p50"], a["agent_run_task_to_spawned_ms_p99"]),
    ("agora: RUN_TASK -> executor subscribed", a["agent_run_task_to_executor_subscribed_ms_p50"], a["agent_run_task_to_executor_subscribed_ms_p99"]),
    ("agora: RUN_TASK -> TASK_RUNNING (agent)", a["agent_run_task_to_running_ms_p50"], a["agent_run_task_to_running_ms_p99"]),
    ("agora: RUN_TASK -> exit reported (agent)", a["agent_run_task_to_exit_ms_p50"], a["agent_run_task_to_exit_ms_p99"]),
    ("agora: ACCEPT -> TASK_RUNNING (framework)", a["framework_accept_to_running_ms_p50"], a["framework_accept_to_running_ms_p99"]),
    ("crun run /bin/true", crun50, crun99),
    ("runc run /bin/true", pct(samples["runc run"], .5), pct(samples["runc run"], .99)),
    ("unshare -fpmui --mount-proc /bin/true", pct(samples["unshare floor"], .5), pct(samples["unshare floor"], .99)),
]
print("| %-46s | %8s | %8s | %11s | %11s |" % ("what (N=%d)" % n, "p50 ms", "p99 ms", "p50 / crun", "p99 / crun"))
print("|" + "-" * 48 + "|----------|----------|-------------|-------------|")
for name, p50, p99 in rows:
    print("| %-46s | %8.1f | %8.1f | %10.2fx | %10.2fx |" % (name, p50, p99, p50 / crun50, p99 / crun99))
print()
print("| %d sequential launches | seconds | ratio |" % seq)
print("|---|---|---|")
print("| agora (ACCEPT .. FINISHED, offer cycle included) | %.1f | %.2fx |" % (s["total_secs"], s["total_secs"] / crun_seq))
print("| crun run | %.1f | 1.00x |" % crun_seq)
PY
