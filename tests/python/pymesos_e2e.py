#!/usr/bin/env python3
"""End-to-end check: the unchanged third-party pymesos client drives Agora.

Usage: PYTHON tests/python/pymesos_e2e.py --agora /path/to/agora

Starts an Agora master and one agent on free loopback ports (logs go to a temp
dir), then uses pymesos's MesosSchedulerDriver (Mesos v1 HTTP scheduler API,
JSON) to subscribe, launch two command tasks, watch their status updates
(acknowledged implicitly by pymesos), reconcile implicitly and explicitly, kill
a task and tear the framework down. Every wait is bounded. The last line is
"pymesos e2e: N passed, M failed"; the exit status is 0 only if M is 0.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid

import pymesos
from pymesos import MesosSchedulerDriver, Scheduler

WAIT = 30.0  # seconds, the bound of every wait
TERMINAL = {
    "TASK_FINISHED",
    "TASK_FAILED",
    "TASK_KILLED",
    "TASK_ERROR",
    "TASK_LOST",
    "TASK_DROPPED",
    "TASK_GONE",
    "TASK_GONE_BY_OPERATOR",
}


class StepFailed(Exception):
    """A check whose failure makes the following steps meaningless."""


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok   - %s" % what, flush=True)
        else:
            self.failed += 1
            print("FAIL - %s%s" % (what, (": " + detail) if detail else ""), flush=True)
        return cond

    def must(self, cond, what, detail=""):
        if not self.ok(cond, what, detail):
            raise StepFailed(what)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def http_get_json(port, path, timeout=5.0):
    url = "http://127.0.0.1:%d%s" % (port, path)
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(data[-lines:])
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)


class Cluster:
    """An Agora master and one agent as subprocesses, stopped by PID."""

    def __init__(self, agora, workdir):
        self.agora = agora
        self.workdir = workdir
        self.master_port = free_port()
        self.agent_port = free_port()
        while self.agent_port == self.master_port:
            self.agent_port = free_port()
        self.procs = []  # (name, Popen, log path)

    def _spawn(self, name, args):
        log_path = os.path.join(self.workdir, name + ".log")
        log = open(log_path, "wb")
        # Explicit flags only: drop AGORA_* settings of the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
        env.setdefault("RUST_LOG", "info")
        try:
            proc = subprocess.Popen(
                [self.agora] + args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        self.procs.append((name, proc, log_path))
        return proc

    def start(self):
        self._spawn(
            "master",
            [
                "master",
                "--ip", "127.0.0.1",
                "--port", str(self.master_port),
                "--work-dir", os.path.join(self.workdir, "m"),
                "--allocation-interval", "100ms",
            ],
        )
        self._spawn(
            "agent",
            [
                "agent",
                "--master", "127.0.0.1:%d" % self.master_port,
                "--ip", "127.0.0.1",
                "--port", str(self.agent_port),
                "--work-dir", os.path.join(self.workdir, "a"),
                "--resources", "cpus:4;mem:4096;disk:10000;ports:[31000-32000]",
                "--status-update-retry-interval", "1secs",
            ],
        )

    def dead(self):
        """The processes that exited, as "name exited with N"."""
        return [
            "%s exited with %s" % (n, p.returncode) for n, p, _ in self.procs if p.poll() is not None
        ]

    def stop(self):
        # Agent first (it owns the executors), then the master.
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        print("warning: %s (pid %d) did not exit" % (name, proc.pid))

    def print_logs(self):
        for name, _, path in self.procs:
            print("---- last lines of %s log (%s) ----" % (name, path))
            print(tail(path))
        sys.stdout.flush()


class E2EScheduler(Scheduler):
    """Records every callback; the test's main thread waits on them."""

    def __init__(self):
        self.cond = threading.Condition()
        self.framework_id = None
        self.master_info = None
        self.registrations = 0
        self.offers = []  # offers not yet taken by the main thread
        self.offer_events = 0
        self.updates = []  # every TaskStatus received, in order
        self.errors = []
        self.disconnects = 0

    # pymesos callbacks (run on pymesos's IO thread)
    def registered(self, driver, frameworkId, masterInfo):
        with self.cond:
            self.framework_id = frameworkId["value"]
            self.master_info = dict(masterInfo)
            self.registrations += 1
            self.cond.notify_all()

    def reregistered(self, driver, masterInfo):
        with self.cond:
            self.registrations += 1
            self.cond.notify_all()

    def disconnected(self, driver):
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def resourceOffers(self, driver, offers):
        with self.cond:
            self.offer_events += 1
            self.offers.extend(offers)
            self.cond.notify_all()

    def statusUpdate(self, driver, status):
        with self.cond:
            self.updates.append(json.loads(json.dumps(status)))
            self.cond.notify_all()

    def error(self, driver, message):
        with self.cond:
            self.errors.append(message)
            self.cond.notify_all()

    # helpers for the main thread
    def wait_for(self, predicate, timeout=WAIT):
        """Waits until predicate() (called under the lock) is truthy."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return value
                self.cond.wait(min(left, 0.5))

    def updates_for(self, task_id, start=0):
        return [u for u in self.updates[start:] if u.get("task_id", {}).get("value") == task_id]

    def states_of(self, task_id):
        with self.cond:
            return [u.get("state") for u in self.updates_for(task_id)]


def scalar(name, value):
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


def offer_scalar(offer, name):
    return sum(
        r.get("scalar", {}).get("value", 0.0)
        for r in offer.get("resources", [])
        if r.get("name") == name and r.get("type", "SCALAR") == "SCALAR"
    )


def poll_http(port, path, predicate, timeout=WAIT, interval=0.2, abort=None):
    """Polls GET path until predicate(json) is truthy; returns (value, last json).

    Stops early, returning (None, {"aborted": ...}), when abort() is truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        stop = abort and abort()
        if stop:
            return None, {"aborted": repr(stop), "last": last}
        try:
            last = http_get_json(port, path)
            value = predicate(last)
            if value:
                return value, last
        except StepFailed:
            raise
        except Exception as e:  # not up yet, or a transient error
            last = {"error": repr(e)}
        if time.monotonic() >= deadline:
            return None, last
        time.sleep(interval)


def framework_tasks(state, fid):
    for fw in state.get("frameworks", []):
        if fw.get("id") == fid:
            return fw
    return None


def run(checks, cluster):
    cluster.start()

    # 1. The cluster: master up and the agent registered.
    def one_agent(state):
        return len(state.get("slaves", [])) == 1

    ok, last = poll_http(cluster.master_port, "/state", one_agent, abort=cluster.dead)
    checks.must(ok, "master /state lists 1 agent in `slaves`", json.dumps(last)[:500])
    agent_id = last["slaves"][0]["id"]

    version, _ = poll_http(cluster.master_port, "/version", lambda v: v.get("version"))
    try:
        parsed = tuple(int(n) for n in str(version).split("."))
    except ValueError:
        parsed = None
    checks.ok(
        parsed is not None and parsed >= (1, 0, 0),
        "GET /version is dotted integers >= 1.0.0 (pymesos int-parses it)",
        repr(version),
    )

    # 2. SUBSCRIBE through pymesos.
    sched = E2EScheduler()
    framework = {
        "user": "root",
        "name": "pymesos-e2e",
        "failover_timeout": 100,
        "capabilities": [{"type": "TASK_KILLING_STATE"}, {"type": "PARTITION_AWARE"}],
    }
    driver = MesosSchedulerDriver(
        sched, framework, "127.0.0.1:%d" % cluster.master_port, use_addict=True
    )
    checks.ok(driver.implicit_acknowledgements, "pymesos acknowledges updates implicitly by default")
    driver.start()
    try:
        drive(checks, cluster, sched, driver, agent_id)
    finally:
        if not driver.aborted:
            driver.stop(failover=True)  # an aborted run must not hide a teardown failure
        joiner = threading.Thread(target=driver.join, daemon=True)
        joiner.start()
        joiner.join(10)


def drive(checks, cluster, sched, driver, agent_id):
    port = cluster.master_port
    fid = sched.wait_for(lambda: sched.framework_id)
    checks.must(fid, "pymesos `registered` callback with a framework id", "errors=%s" % sched.errors)
    checks.ok(driver.stream_id, "SUBSCRIBE reply carried a Mesos-Stream-Id header", repr(driver.stream_id))
    checks.ok(
        sched.master_info and sched.master_info.get("port") == port,
        "registered masterInfo has the master's port",
        repr(sched.master_info),
    )

    # 3. Offers, then LAUNCH two command tasks on one offer.
    def usable_offer():
        for o in sched.offers:
            if offer_scalar(o, "cpus") >= 0.2 and offer_scalar(o, "mem") >= 64:
                return o
        return None

    offer = sched.wait_for(usable_offer)
    checks.must(offer, "resourceOffers delivered an offer with >= 0.2 cpus and 64 MB mem",
                "offers=%s" % json.dumps(sched.offers)[:500])
    checks.ok(
        offer["agent_id"]["value"] == agent_id and offer.get("framework_id", {}).get("value") == fid,
        "the offer names our agent and framework",
        json.dumps(offer)[:500],
    )
    with sched.cond:
        others = [o for o in sched.offers if o is not offer]
        sched.offers = []

    suffix = uuid.uuid4().hex[:8]
    sleep_id = "sleep-" + suffix
    echo_id = "echo-" + suffix

    def task(task_id, cmd):
        return {
            "name": task_id,
            "task_id": {"value": task_id},
            "agent_id": {"value": offer["agent_id"]["value"]},
            "resources": [scalar("cpus", 0.1), scalar("mem", 32)],
            "command": {"value": cmd},
        }

    driver.launchTasks(
        offer["id"],
        [task(sleep_id, "sleep 60"), task(echo_id, "echo hello; exit 0")],
        filters={"refuse_seconds": 1},
    )
    checks.ok(True, "ACCEPT with two LAUNCH task infos accepted (2xx)")
    if others:
        driver.declineOffer([o["id"] for o in others], filters={"refuse_seconds": 1})

    # 4. Status updates (acknowledged by pymesos itself).
    finished = sched.wait_for(lambda: "TASK_FINISHED" in sched.states_of(echo_id))
    checks.must(finished, "echo task reaches TASK_FINISHED", "states=%s" % sched.states_of(echo_id))
    running = sched.wait_for(lambda: "TASK_RUNNING" in sched.states_of(sleep_id))
    checks.must(running, "sleep task reaches TASK_RUNNING", "states=%s" % sched.states_of(sleep_id))
    with sched.cond:
        launched = sched.updates_for(echo_id) + sched.updates_for(sleep_id)
    checks.ok(
        all(u.get("uuid") and u.get("agent_id", {}).get("value") == agent_id for u in launched),
        "every executor update carries uuid and agent_id (pymesos acks with them)",
        json.dumps(launched)[:800],
    )
    checks.ok(
        sched.states_of(echo_id)[-1] == "TASK_FINISHED"
        and "TASK_RUNNING" in sched.states_of(echo_id),
        "echo task went through TASK_RUNNING to TASK_FINISHED",
        repr(sched.states_of(echo_id)),
    )

    # The implicit ACKNOWLEDGE of the terminal update lets the master retire the task.
    def echo_completed(state):
        fw = framework_tasks(state, fid)
        if not fw:
            return False
        done = [t for t in fw.get("completed_tasks", []) if t.get("id") == echo_id]
        active = [t for t in fw.get("tasks", []) if t.get("id") == echo_id]
        return bool(done) and not active

    ok, last = poll_http(port, "/state", echo_completed)
    checks.ok(ok, "after pymesos's ACKNOWLEDGE the echo task is in completed_tasks",
              json.dumps(framework_tasks(last, fid) or last)[:800])

    # 5. Implicit reconciliation.
    with sched.cond:
        mark = len(sched.updates)
    driver.reconcileTasks([])

    def recon(task_id, start):
        return [u for u in sched.updates_for(task_id, start) if u.get("reason") == "REASON_RECONCILIATION"]

    answers = sched.wait_for(lambda: recon(sleep_id, mark))
    checks.ok(
        answers and answers[0].get("state") == "TASK_RUNNING",
        "implicit reconcile: sleep task TASK_RUNNING with REASON_RECONCILIATION",
        json.dumps(sched.updates[mark:])[:800],
    )
    checks.ok(
        answers and "uuid" not in answers[0] and answers[0].get("source") == "SOURCE_MASTER",
        "reconcile answers come from SOURCE_MASTER without uuid (no ack)",
        json.dumps(answers)[:500],
    )
    time.sleep(1.0)
    with sched.cond:
        stray = recon(echo_id, mark)
    checks.ok(not stray, "implicit reconcile does not report the acked, finished echo task",
              json.dumps(stray)[:500])

    # 6. Explicit reconciliation (pymesos sends only task ids, no agent ids).
    with sched.cond:
        mark = len(sched.updates)
    bogus_id = "no-such-task-" + suffix
    driver.reconcileTasks([{"task_id": {"value": sleep_id}}, {"task_id": {"value": bogus_id}}])
    answers = sched.wait_for(lambda: recon(sleep_id, mark))
    checks.ok(
        answers and answers[0].get("state") == "TASK_RUNNING",
        "explicit reconcile: sleep task TASK_RUNNING with REASON_RECONCILIATION",
        json.dumps(sched.updates[mark:])[:800],
    )
    answers = sched.wait_for(lambda: recon(bogus_id, mark))
    checks.ok(
        answers and answers[0].get("state") == "TASK_UNKNOWN",
        "explicit reconcile: unknown task -> TASK_UNKNOWN (partition-aware framework)",
        json.dumps(sched.updates[mark:])[:800],
    )

    # 7. KILL the sleep task.
    driver.killTask({"value": sleep_id})
    killed = sched.wait_for(lambda: "TASK_KILLED" in sched.states_of(sleep_id))
    checks.must(killed, "sleep task reaches TASK_KILLED after killTask",
                "states=%s" % sched.states_of(sleep_id))
    states = sched.states_of(sleep_id)
    checks.ok(
        "TASK_KILLING" in states and states.index("TASK_KILLING") < states.index("TASK_KILLED"),
        "TASK_KILLING precedes TASK_KILLED (framework has TASK_KILLING_STATE)",
        repr(states),
    )

    def no_active_tasks(state):
        fw = framework_tasks(state, fid)
        return fw is not None and not fw.get("tasks") and any(
            t.get("id") == sleep_id for t in fw.get("completed_tasks", [])
        )

    ok, last = poll_http(port, "/state", no_active_tasks)
    checks.ok(ok, "after the ack of TASK_KILLED the framework has no active tasks",
              json.dumps(framework_tasks(last, fid) or last)[:800])

    # No update was redelivered: the agent retries unacked updates every second,
    # so a duplicate uuid would mean pymesos's ACKNOWLEDGE was not honoured.
    with sched.cond:
        uuids = [u["uuid"] for u in sched.updates if u.get("uuid")]
    dups = sorted({u for u in uuids if uuids.count(u) > 1})
    checks.ok(not dups, "no status update was delivered twice (acks honoured)", repr(dups))

    # 8. TEARDOWN: stop(failover=False) makes pymesos send TEARDOWN and close.
    driver.stop(failover=False)
    joiner = threading.Thread(target=driver.join, daemon=True)
    joiner.start()
    joiner.join(WAIT)
    checks.ok(not joiner.is_alive(), "driver.stop(failover=False) returns (TEARDOWN sent)")
    checks.ok(driver.framework_id is None, "pymesos dropped the framework id after TEARDOWN")

    def torn_down(frameworks):
        active = [f for f in frameworks.get("frameworks", []) if f.get("id") == fid]
        done = [f for f in frameworks.get("completed_frameworks", []) if f.get("id") == fid]
        return not active and bool(done)

    ok, last = poll_http(port, "/frameworks", torn_down)
    checks.ok(ok, "GET /frameworks lists the framework in completed_frameworks only",
              json.dumps(last)[:800])

    def nothing_running(tasks):
        return not [t for t in tasks.get("tasks", []) if t.get("state") not in TERMINAL]

    ok, last = poll_http(port, "/tasks?limit=-1", nothing_running)
    checks.ok(ok, "GET /tasks shows no non-terminal task", json.dumps(last)[:800])
    checks.ok(not sched.errors, "no ERROR event was received", repr(sched.errors))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agora", required=True, help="path to the agora binary")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    print("pymesos %s from %s" % (pymesos.__VERSION__, os.path.dirname(pymesos.__file__)), flush=True)
    checks = Checks()
    workdir = tempfile.mkdtemp(prefix="agora-pymesos-e2e-")
    cluster = Cluster(os.path.abspath(args.agora), workdir)
    try:
        run(checks, cluster)
    except StepFailed:
        pass
    except BaseException as e:  # includes pymesos's IO-thread abort re-raised in main
        checks.ok(False, "no unexpected exception", "%s: %s" % (type(e).__name__, e))
        traceback.print_exc(file=sys.stdout)
    finally:
        cluster.stop()
        if checks.failed:
            cluster.print_logs()
            print("logs kept in %s" % workdir)
        elif not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("pymesos e2e: %d passed, %d failed" % (checks.passed, checks.failed), flush=True)
    sys.exit(0 if checks.failed == 0 else 1)


if __name__ == "__main__":
    main()
