#!/usr/bin/env bash
# Quick start: installs what is needed, builds Agora, starts `agora dev` (a master and an
# agent in one process on 127.0.0.1:5050/5051) in the background and runs a demo task.
# The dev cluster keeps running afterwards; the last lines say how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
echo "==> building agora (release)"
cargo build --release -q -p agora
install -m 0755 target/release/agora /usr/local/bin/agora
work=${AGORA_DEV_DIR:-/var/tmp/agora-dev}
mkdir -p "$work"
if [ -f "$work/agora-dev.pid" ] && kill -0 "$(cat "$work/agora-dev.pid")" 2>/dev/null; then
  echo "==> stopping the previous dev cluster (pid $(cat "$work/agora-dev.pid"))"
  kill "$(cat "$work/agora-dev.pid")"; sleep 1
fi
echo "==> starting agora dev (log: $work/agora-dev.log)"
nohup agora dev --work-dir "$work" >"$work/agora-dev.log" 2>&1 </dev/null &
echo $! >"$work/agora-dev.pid"
for _ in $(seq 1 100); do
  agora agent list 2>/dev/null | grep -q ' active ' && break
  sleep 0.1
done
agora agent list
echo
echo "==> agora run -- sh -c 'echo hello from Agora; ...'"
agora run --name demo -- sh -c 'echo "hello from Agora: task $MESOS_TASK_ID on $(hostname), sandbox $MESOS_SANDBOX"; sleep 1; echo done'
echo
agora task list
echo
echo "The dev cluster is still running: http://127.0.0.1:5050/state"
echo "Try:  agora run -- sh -c 'echo hi; exit 7'; echo \$?"
echo "Stop: kill \$(cat $work/agora-dev.pid)"
