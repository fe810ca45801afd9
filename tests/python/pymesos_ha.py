#!/usr/bin/env python3
"""The unchanged pymesos client across a failover of Agora's masters.

Usage: PYTHON tests/python/pymesos_ha.py --master FOLLOWER --leader LEADER

Driven by crates/agora/tests/ha.rs (`pymesos_follows_the_leader`), which runs three
masters on etcd. pymesos is given a master that does not lead: it must follow the 307 to
the leader, subscribe and run a task. The script then prints READY and waits: the test
kills the leader and restarts it on its port (now a follower), and pymesos, which keeps
reconnecting to the address it knew, must follow that master's 307 to the new leader,
re-subscribe with its framework id (`reregistered`) and find its task still running
through reconciliation. Prints PASS and exits 0 on success; every wait is bounded.
"""

import argparse
import sys
import threading
import time

from pymesos import MesosSchedulerDriver, Scheduler

WAIT = 30.0
TASK = "py-sleeper"


def scalar(name, value):
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


class HaScheduler(Scheduler):
    def __init__(self):
        self.lock = threading.Lock()
        self.framework_id = None
        self.reregistrations = 0
        self.launched = False
        self.agent_id = None
        self.states = []

    def registered(self, driver, framework_id, master_info):
        with self.lock:
            self.framework_id = framework_id["value"]

    def reregistered(self, driver, master_info):
        with self.lock:
            self.reregistrations += 1

    def resourceOffers(self, driver, offers):
        with self.lock:
            launch = not self.launched
            self.launched = True
        if not launch:
            driver.declineOffer([o["id"] for o in offers], filters={"refuse_seconds": 1})
            return
        offer, others = offers[0], offers[1:]
        self.agent_id = offer["agent_id"]["value"]
        task = {
            "name": TASK,
            "task_id": {"value": TASK},
            "agent_id": {"value": self.agent_id},
            "resources": [scalar("cpus", 0.1), scalar("mem", 32)],
            "command": {"value": "sleep 300"},
        }
        driver.launchTasks(offer["id"], [task], filters={"refuse_seconds": 1})
        if others:
            driver.declineOffer([o["id"] for o in others], filters={"refuse_seconds": 1})

    def statusUpdate(self, driver, update):
        if update["task_id"]["value"] == TASK:
            with self.lock:
                self.states.append(update["state"])

    def wait_for(self, pred, timeout=WAIT):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                v = pred()
            if v:
                return v
            time.sleep(0.1)
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--master", required=True, help="a master that does not lead")
    ap.add_argument("--leader", required=True, help="the leading master")
    args = ap.parse_args()

    sched = HaScheduler()
    framework = {
        "user": "root",
        "name": "pymesos-ha",
        "failover_timeout": 300,
        "capabilities": [{"type": "PARTITION_AWARE"}],
    }
    driver = MesosSchedulerDriver(sched, framework, args.master, use_addict=True)
    driver.start()
    try:
        fid = sched.wait_for(lambda: sched.framework_id)
        if not fid:
            print("FAIL: no `registered` callback through %s" % args.master, flush=True)
            return 1
        if driver.master != args.leader:
            print("FAIL: subscribed with %s, not the leader %s" % (driver.master, args.leader), flush=True)
            return 1
        print("registered %s with %s (redirected from %s)" % (fid, driver.master, args.master), flush=True)
        if not sched.wait_for(lambda: "TASK_RUNNING" in sched.states):
            print("FAIL: the task never ran: %s" % sched.states, flush=True)
            return 1
        print("READY", flush=True)

        if not sched.wait_for(lambda: sched.reregistrations > 0, timeout=90):
            print("FAIL: no `reregistered` callback after the failover (master %s)" % driver.master, flush=True)
            return 1
        if sched.framework_id != fid:
            print("FAIL: re-registered as %s, not %s" % (sched.framework_id, fid), flush=True)
            return 1
        print("re-registered %s with %s" % (fid, driver.master), flush=True)
        with sched.lock:
            sched.states.clear()
        deadline = time.time() + WAIT
        while time.time() < deadline:
            driver.reconcileTasks([{"task_id": {"value": TASK}, "agent_id": {"value": sched.agent_id}}])
            if sched.wait_for(lambda: sched.states, timeout=2):
                break
        with sched.lock:
            states = list(sched.states)
        if not states or states[-1] != "TASK_RUNNING":
            print("FAIL: reconciliation after the failover says %s" % states, flush=True)
            return 1
        print("PASS", flush=True)
        return 0
    finally:
        driver.stop()
        joiner = threading.Thread(target=driver.join, daemon=True)
        joiner.start()
        joiner.join(10)


if __name__ == "__main__":
    sys.exit(main())
