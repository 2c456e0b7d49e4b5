#!/usr/bin/env bash
# Side-by-side benchmark: lepus and another broker (RabbitMQ by default),
# alternately, ROUNDS rounds per scenario; prints each run and the medians.
#
#   perf/scripts/side_by_side.sh [lepus_uri] [other_uri]
#
# Both brokers must be running. Scenarios: 16 B and 1 KiB transient, 1 KiB
# persistent with confirms (window 256) into a durable queue, 1 producer and
# 1 consumer, DURATION seconds each.
set -euo pipefail
LEPUS=${1:-amqp://guest:guest@127.0.0.1:5673/%2f}
OTHER=${2:-amqp://guest:guest@127.0.0.1:5672/%2f}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
PERF=${PERF:-target/release/lepus-perf}
out=$(mktemp -d)
scenarios=(
  "16B-transient|--size 16"
  "1KiB-transient|--size 1024"
  "1KiB-persistent-confirm256|--size 1024 --persistent --durable-queue --confirm 256"
  "1KiB-persistent-confirm1|--size 1024 --persistent --durable-queue --confirm 1"
)
for s in "${scenarios[@]}"; do
  name=${s%%|*}; args=${s#*|}
  for r in $(seq 1 "$ROUNDS"); do
    for b in lepus other; do
      uri=$LEPUS; [ "$b" = other ] && uri=$OTHER
      # shellcheck disable=SC2086
      $PERF --uri "$uri" $args --duration "$DURATION" --json --queue "perf-$name" 2>/dev/null > "$out/$name.$b.$r.json" || echo '{"failed":true}' > "$out/$name.$b.$r.json"
      echo "$name $b round $r: $(cat "$out/$name.$b.$r.json")"
    done
  done
done
python3 - "$out" <<'PY'
import json, sys, glob, statistics, os
d = sys.argv[1]
rows = {}
for f in glob.glob(os.path.join(d, "*.json")):
    name, b, r, _ = os.path.basename(f).split(".")
    try:
        j = json.load(open(f))
    except Exception:
        continue
    if j.get("failed"):
        continue
    rows.setdefault((name, b), []).append(j)
print()
print(f"{'scenario':30} {'broker':6} {'pub msg/s':>10} {'cons msg/s':>10} {'lat p50 ms':>10} {'lat p99 ms':>10} {'conf p50':>9} {'conf p99':>9} {'cli us/msg':>10}")
meds = {}
for (name, b), js in sorted(rows.items()):
    m = lambda k: statistics.median([j.get(k) or 0 for j in js])
    meds[(name, b)] = m("consume_rate")
    print(f"{name:30} {b:6} {m('publish_rate'):10.0f} {m('consume_rate'):10.0f} {m('latency_p50_ms'):10.2f} {m('latency_p99_ms'):10.2f} {m('confirm_latency_p50_ms'):9.2f} {m('confirm_latency_p99_ms'):9.2f} {m('client_cpu_us_per_msg'):10.3f}")
print()
for name in sorted({n for n, _ in meds}):
    if (name, "lepus") in meds and (name, "other") in meds and meds[(name, "other")]:
        print(f"{name}: lepus/other consumed ratio {meds[(name,'lepus')]/meds[(name,'other')]:.2f}x")
PY
