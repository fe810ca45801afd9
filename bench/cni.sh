#!/usr/bin/env bash
# Container networking (network/cni): container start on a CNI network beside the
# host-network start (same image, same agent, interleaved batches), and throughput between
# two containers on the network beside the same transfer between two plain network
# namespaces joined to the same bridge by the same plugins.
#
#   bench/cni.sh [N=40] [MB=400]     (run as root on a quiet machine: uptime load < 1.5)
#
# Everything networked happens in a namespace this script makes ("host"), linked to the
# machine's by one veth pair (the agent listens on the machine's end); the fixture conflist
# (bridge + host-local + portmap) comes from shared/fixtures/cni.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40}
MB=${2:-400}
ROOT=$(pwd)
FX=${AGORA_FIXTURES:-$ROOT/../shared/fixtures}
[ -f "$FX/cni.sh" ] || FX=/work/shared/fixtures
W=$(mktemp -d /var/tmp/agora-cnibench.XXXXXX)
NS=agcb$$ OUT=agcbh$$ IN=agcbn$$
MPID= APID= SPID=
cleanup() {
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true
  [ -n "$APID" ] && kill "$APID" 2>/dev/null && wait "$APID" 2>/dev/null || true
  [ -n "$MPID" ] && kill "$MPID" 2>/dev/null && wait "$MPID" 2>/dev/null || true
  for p in a b; do ip netns del "$NS$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
bash "$FX/make-images.sh" "$W/images"
CONF=$(bash "$FX/cni.sh" conf "$W/net.d")
mkdir -p "$W/registry" && ln -s "$W/images/docker-archive/httpd.tar" "$W/registry/httpd.tar"
ip netns add "$NS"; ip -n "$NS" link set lo up
ip link add "$OUT" type veth peer name "$IN" netns "$NS"
ip addr add 10.198.0.1/30 dev "$OUT"; ip link set "$OUT" up
ip -n "$NS" addr add 10.198.0.2/30 dev "$IN"; ip -n "$NS" link set "$IN" up
ip -n "$NS" route add default via 10.198.0.1
cargo build --release -q -p agora
cargo build --release -q -p agora-client --example launch_bench
BIN=target/release/agora
BENCH=target/release/examples/launch_bench
"$BIN" master --port 0 --work-dir "$W/m" >"$W/master.log" 2>&1 &
MPID=$!
for _ in $(seq 100); do grep -q 'listening on' "$W/master.log" && break; sleep 0.05; done
MASTER=$(grep -o 'listening on .*' "$W/master.log" | awk '{print $3}')
"$BIN" agent --master "$MASTER" --ip 10.198.0.1 --port 0 --work-dir "$W/a" --resources 'cpus:4;mem:4096;disk:4000' \
  --docker-registry "$W/registry" --network-cni-config-dir "$W/net.d" --network-cni-root-netns "/var/run/netns/$NS" \
  >"$W/agent.log" 2>&1 &
APID=$!
for _ in $(seq 100); do grep -q 'listening on' "$W/agent.log" && break; sleep 0.05; done
AGENT=$(grep -o 'listening on .*' "$W/agent.log" | awk '{print $3}')
sleep 1
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p50() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["framework_accept_to_running_ms_p50"])'; }

# 1. Start: ACCEPT -> TASK_RUNNING of /bin/true in the httpd image, with and without the network.
"$BENCH" "$MASTER" "$AGENT" 1 httpd warm >/dev/null
B=$(( N / 10 > 0 ? N / 10 : 1 ))
NET="" HOST=""
for _ in $(seq 10); do
  NET+="$("$BENCH" "$MASTER" "$AGENT" "$B" httpd warm fixture | p50) "
  HOST+="$("$BENCH" "$MASTER" "$AGENT" "$B" httpd warm | p50) "
done
sn=$(tr ' ' '\n' <<<"$NET" | grep . | median); sh=$(tr ' ' '\n' <<<"$HOST" | grep . | median)
echo "| container start (httpd image, ACCEPT -> RUNNING p50) | CNI network | host network | ratio |"
echo "|---|---|---|---|"
awk -v n="$sn" -v h="$sh" -v k="$N" 'BEGIN{printf "| %d launches each | %.1f ms | %.1f ms | %.2fx |\n", k, n, h, n/h}'

# 2. Throughput: $MB MB over HTTP (busybox httpd -> wget) between two containers on the
# network, beside two plain namespaces on the same bridge. Timed inside with /proc/uptime.
python3 - "$MASTER" "$MB" >"$W/containers.txt" <<'PY'
import json, sys, time, urllib.request
master, mb = sys.argv[1], int(sys.argv[2])
def post(path, body, headers=None, stream=False):
    req = urllib.request.Request(f"http://{master}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "application/json", **(headers or {})})
    return urllib.request.urlopen(req)
sub = post("/api/v1/scheduler", {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "root", "name": "cni-bench"}}})
sid = sub.headers["Mesos-Stream-Id"]
def events():
    buf = b""
    while True:
        line = sub.readline()
        n = int(line.strip() or b"0")
        yield json.loads(sub.read(n))
ev = events()
fid = next(ev)["subscribed"]["framework_id"]
def call(body):
    body["framework_id"] = fid
    post("/api/v1/scheduler", body, {"Mesos-Stream-Id": sid})
def launch(tid, cmd):
    while True:
        e = next(ev)
        if e["type"] == "OFFERS":
            o = e["offers"]["offers"][0]
            t = {"name": tid, "task_id": {"value": tid}, "agent_id": o["agent_id"],
                 "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                               {"name": "mem", "type": "SCALAR", "scalar": {"value": 256}}],
                 "command": {"shell": True, "value": cmd},
                 "container": {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": "httpd"}}},
                               "network_infos": [{"name": "fixture"}]}}
            call({"type": "ACCEPT", "accept": {"offer_ids": [o["id"]], "operations": [{"type": "LAUNCH", "launch": {"task_infos": [t]}}]}})
            return
def wait(tid, state):
    while True:
        e = next(ev)
        if e["type"] == "UPDATE":
            s = e["update"]["status"]
            if s.get("uuid"):
                call({"type": "ACKNOWLEDGE", "acknowledge": {"agent_id": s["agent_id"], "task_id": s["task_id"], "uuid": s["uuid"]}})
            if s["task_id"]["value"] == tid and s["state"] == state:
                return s
            if s["task_id"]["value"] == tid and s["state"] in ("TASK_FAILED", "TASK_LOST", "TASK_ERROR"):
                raise SystemExit(f"{tid}: {s}")
launch("server", f"head -c {mb * 1000000} /dev/zero > $MESOS_SANDBOX/blob && echo ok > $MESOS_SANDBOX/ready && httpd -f -p 8080 -h $MESOS_SANDBOX")
s = wait("server", "TASK_RUNNING")
ip = s["container_status"]["network_infos"][0]["ip_addresses"][0]["ip_address"]
for i in range(3):
    tid = f"client-{i}"
    launch(tid, f"until wget -q -O /dev/null http://{ip}:8080/ready; do sleep 0.2; done; "
                f"a=$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://{ip}:8080/blob || exit 1; "
                f"b=$(cut -d' ' -f1 /proc/uptime); echo \"$a $b\"")
    wait(tid, "TASK_FINISHED")
print(fid["value"])
PY
FID=$(tail -1 "$W/containers.txt")
CT=$(for i in 0 1 2; do cat "$W"/a/slaves/*/frameworks/"$FID"/executors/client-$i/runs/latest/stdout; done | awk '{print $2-$1}' | median)
# The peer: two plain namespaces attached to the same network by the same plugins.
ip netns add "${NS}a"; ip netns add "${NS}b"
ip netns exec "$NS" bash "$FX/cni.sh" run add "$CONF" "/var/run/netns/${NS}a" peer-a eth0 >"$W/pa.json"
ip netns exec "$NS" bash "$FX/cni.sh" run add "$CONF" "/var/run/netns/${NS}b" peer-b eth0 >/dev/null
PIP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"].split("/")[0])' "$W/pa.json")
mkdir -p "$W/www"; head -c $((MB * 1000000)) /dev/zero >"$W/www/blob"
ip netns exec "${NS}a" busybox httpd -f -p 8080 -h "$W/www" &
SPID=$!
sleep 0.5
PT=$(for i in 1 2 3; do
  s=$(date +%s.%N); ip netns exec "${NS}b" busybox wget -q -O /dev/null "http://$PIP:8080/blob"; e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f\n", e-s}'
done | median)
kill "$SPID"; SPID=
ip netns exec "$NS" bash "$FX/cni.sh" run del "$CONF" "/var/run/netns/${NS}a" peer-a eth0 || true
ip netns exec "$NS" bash "$FX/cni.sh" run del "$CONF" "/var/run/netns/${NS}b" peer-b eth0 || true
echo
echo "| ${MB} MB over HTTP (wget from busybox httpd) | containers on the CNI network | plain namespaces on the same bridge | ratio |"
echo "|---|---|---|---|"
awk -v c="$CT" -v p="$PT" -v mb="$MB" 'BEGIN{printf "| median of 3 | %.2f s (%.0f MB/s) | %.2f s (%.0f MB/s) | %.2fx |\n", c, mb/c, p, mb/p, c/p}'
