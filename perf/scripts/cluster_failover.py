#!/usr/bin/env python3
"""Failover bench: a 3-node lepus cluster on one etcd, the leader killed with
SIGKILL N times. For each kill: the time from SIGKILL to the first publish
confirmed by the new leader (clients connect to any surviving node), then the
killed node is restarted and the cluster waits until all three are in sync.
Before each kill, 200 persistent messages are published with confirms; at the
end the queue is drained and every confirmed id must be there.

Usage: cluster_failover.py [--kills 20] [--lease-ms 2000] [--lepus target/release/lepus]
Needs: etcd (Debian etcd-server), pika. Loopback only, temporary directories.
"""
import argparse, base64, json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

import pika


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def api(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.load(r)


class Node:
    def __init__(self, binary, etcd, name, root, lease_ms):
        self.name, self.binary, self.etcd, self.lease_ms = name, binary, etcd, lease_ms
        self.dir = os.path.join(root, name)
        self.amqp, self.http, self.repl = free_port(), free_port(), free_port()
        self.log = open(os.path.join(root, name + ".log"), "ab")
        self.proc = None

    def start(self):
        env = dict(os.environ, LEPUS_CLUSTER_LEASE_TTL_MS=str(self.lease_ms),
                   LEPUS_CLUSTER_ISR_TIMEOUT_MS=str(self.lease_ms), LEPUS_LOG="warn")
        self.proc = subprocess.Popen(
            [self.binary, "--cluster-etcd", self.etcd, "--node-name", self.name,
             "--cluster-port", str(self.repl), "--port", str(self.amqp),
             "--mgmt-port", str(self.http), "--data-dir", self.dir],
            stdout=self.log, stderr=self.log, env=env)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def start_etcd(root, fast=True):
    """An etcd on free ports (fast: short election timings, so short leases
    are allowed); the process and its client URL."""
    cp, pp = free_port(), free_port()
    url = f"http://127.0.0.1:{cp}"
    timing = ["--heartbeat-interval", "50", "--election-timeout", "300"] if fast else []
    etcd = subprocess.Popen(
        ["etcd", "--name", "b", "--data-dir", os.path.join(root, "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{pp}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
         "--initial-cluster", f"b=http://127.0.0.1:{pp}"] + timing,
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "etcd.log"), "wb"))
    time.sleep(1.5)
    return etcd, url


def nodes_view(nodes):
    for n in nodes:
        if n.proc and n.proc.poll() is None:
            try:
                return api(n.http, "/api/nodes")
            except Exception:
                pass
    return None


def wait_all_in_sync(nodes, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = nodes_view(nodes)
        if v and len(v) == 3 and all(x.get("isr") and x.get("running") for x in v):
            return next(x["name"] for x in v if x.get("role") == "leader")
        time.sleep(0.1)
    raise SystemExit(f"cluster did not get back in sync: {nodes_view(nodes)}")


def publish(port, ids):
    c = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, socket_timeout=2, blocked_connection_timeout=5,
        connection_attempts=1))
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("failover", durable=True)
    for i in ids:
        ch.basic_publish("", "failover", str(i).encode(),
                         pika.BasicProperties(delivery_mode=2, message_id=str(i)))
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--lease-ms", type=int, default=2000)
    ap.add_argument("--lepus", default="target/release/lepus")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lepus-failover-")
    etcd, etcd_url = start_etcd(root)
    nodes = [Node(a.lepus, etcd_url, f"n{i}", root, a.lease_ms) for i in (1, 2, 3)]
    try:
        for n in nodes:
            n.start()
            time.sleep(0.5)
        leader = wait_all_in_sync(nodes)
        times, confirmed, next_id = [], set(), 0
        for k in range(a.kills):
            by = {n.name: n for n in nodes}
            ids = list(range(next_id, next_id + 200))
            publish(by[leader].amqp, ids)
            confirmed.update(ids)
            next_id += 200
            victim = by[leader]
            victim.kill9()
            t0 = time.monotonic()
            survivors = [n for n in nodes if n is not victim]
            done = False
            while not done:
                for n in survivors:
                    try:
                        publish(n.amqp, [next_id])
                        confirmed.add(next_id)
                        next_id += 1
                        done = True
                        break
                    except Exception:
                        time.sleep(0.02)
                if time.monotonic() - t0 > 60:
                    raise SystemExit("no confirm 60 s after the kill")
            dt = time.monotonic() - t0
            times.append(dt)
            victim.start()
            leader = wait_all_in_sync(nodes)
            print(f"kill {k + 1}: {victim.name} killed, first confirm after {dt * 1000:.0f} ms; leader now {leader}", flush=True)
        # Drain and check.
        by = {n.name: n for n in nodes}
        c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", by[leader].amqp))
        ch = c.channel()
        got = []
        while True:
            m, props, body = ch.basic_get("failover", auto_ack=True)
            if m is None:
                break
            got.append(int(body))
        c.close()
        lost = confirmed - set(got)
        times_ms = sorted(t * 1000 for t in times)
        print(json.dumps({
            "kills": a.kills, "lease_ttl_ms": a.lease_ms,
            "failover_ms_p50": round(statistics.median(times_ms)),
            "failover_ms_max": round(max(times_ms)),
            "failover_ms_all": [round(t) for t in times_ms],
            "confirmed": len(confirmed), "consumed": len(got),
            "duplicates": len(got) - len(set(got)), "lost_confirmed": len(lost),
        }))
        return 1 if lost else 0
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.kill9()
        etcd.kill()


if __name__ == "__main__":
    sys.exit(main())
