#!/usr/bin/env python3
"""Confirmed persistent throughput, side by side in one session: a single
lepus node, a 3-node lepus cluster (etcd, all on this machine; the publisher
connects to the leader), and RabbitMQ with a quorum queue (if one listens on
--rabbit-port). 1 KiB persistent messages, durable queue, confirms with 256
outstanding, 1 producer and 1 consumer; ROUNDS rounds in turn, medians.
During the cluster runs the followers' replication lag is sampled from
/api/nodes every 200 ms.

Usage: cluster_throughput.py [--rounds 3] [--duration 8] [--rabbit-port 5672]
Needs target/release/lepus and target/release/lepus-perf, etcd, RabbitMQ (optional).
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
from cluster_failover import Node, api, free_port, start_etcd, wait_all_in_sync  # noqa: E402


def perf(bin_perf, port, duration, quorum=False, user="guest:guest"):
    cmd = [bin_perf, "--uri", f"amqp://{user}@127.0.0.1:{port}/%2f", "--size", "1024",
           "--persistent", "--durable-queue", "--confirm", "256", "--duration", str(duration),
           "--json", "--queue", "bench-q" if quorum else "bench"]
    if quorum:
        cmd.append("--quorum")
    out = subprocess.run(["nice", "-n", "0"] + cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise SystemExit(f"lepus-perf failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rabbit-port", type=int, default=5672)
    ap.add_argument("--lepus", default="target/release/lepus")
    ap.add_argument("--perf", default="target/release/lepus-perf")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lepus-cluster-bench-")
    # Single node.
    sp, sh = free_port(), free_port()
    single = subprocess.Popen([a.lepus, "--port", str(sp), "--mgmt-port", str(sh),
                               "--data-dir", os.path.join(root, "single")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, LEPUS_LOG="warn"))
    # Cluster.
    etcd, etcd_url = start_etcd(root, fast=False)
    nodes = [Node(a.lepus, etcd_url, f"n{i}", root, 5000) for i in (1, 2, 3)]
    try:
        for n in nodes:
            n.start()
            time.sleep(0.5)
        leader = wait_all_in_sync(nodes)
        lp = {n.name: n for n in nodes}[leader]
        time.sleep(1)
        rabbit = True
        try:
            import socket
            socket.create_connection(("127.0.0.1", a.rabbit_port), timeout=1).close()
        except OSError:
            rabbit = False
        results = {"single": [], "cluster": [], "rabbit_quorum": []}
        lag = {"ms": [], "bytes": []}
        for r in range(a.rounds):
            results["single"].append(perf(a.perf, sp, a.duration))
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    try:
                        for n in api(lp.http, "/api/nodes"):
                            if n.get("role") == "follower":
                                lag["ms"].append(n.get("lag_ms", 0))
                                lag["bytes"].append(n.get("lag_bytes", 0))
                    except Exception:
                        pass
                    time.sleep(0.2)
            t = threading.Thread(target=sample)
            t.start()
            results["cluster"].append(perf(a.perf, lp.amqp, a.duration))
            stop.set()
            t.join()
            if rabbit:
                results["rabbit_quorum"].append(perf(a.perf, a.rabbit_port, a.duration, quorum=True))
            print(f"round {r + 1}: " + ", ".join(
                f"{k} {v[-1].get('consumed_rate', v[-1].get('consume_rate', 0)):.0f}/s" for k, v in results.items() if v),
                flush=True)

        def med(k, field):
            vals = [x.get(field) for x in results[k] if x.get(field) is not None]
            return statistics.median(vals) if vals else None
        summary = {}
        for k, v in results.items():
            if not v:
                continue
            summary[k] = {f: med(k, f) for f in v[0] if isinstance(v[0][f], (int, float))}
        lag_ms = sorted(lag["ms"]) or [0]
        lag_b = sorted(lag["bytes"]) or [0]
        summary["cluster_follower_lag"] = {
            "samples": len(lag["ms"]),
            "ms_p50": lag_ms[len(lag_ms) // 2], "ms_p99": lag_ms[int(len(lag_ms) * 0.99)], "ms_max": lag_ms[-1],
            "bytes_p50": lag_b[len(lag_b) // 2], "bytes_max": lag_b[-1],
        }
        print(json.dumps(summary, indent=1))
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.kill9()
        single.send_signal(signal.SIGTERM)
        etcd.kill()


if __name__ == "__main__":
    main()
