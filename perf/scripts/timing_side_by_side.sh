#!/usr/bin/env bash
# Timing-accuracy benchmark, lepus and another broker (RabbitMQ by default)
# alternately: per-message TTL + DLX lateness (ROUNDS rounds), the
# head-of-line case (ROUNDS rounds), then DELAY_ROUNDS rounds of 1M delayed
# messages (lepus: x-delayed-message; the other broker: TTL + DLX emulation,
# --via-ttl, since RabbitMQ has no delayed-message plugin by default).
#
#   LEPUS_PID=$(pgrep -f 'release/lepus ') OTHER_PID=$(pgrep -f beam.smp) \
#     perf/scripts/timing_side_by_side.sh [lepus_uri] [other_uri]
#
# Both brokers must be running; the PIDs are optional (broker RSS and CPU).
# Prints each run as JSON and a table of medians.
set -euo pipefail
LEPUS=${1:-amqp://guest:guest@127.0.0.1:5673/%2f}
OTHER=${2:-amqp://guest:guest@127.0.0.1:5672/%2f}
ROUNDS=${ROUNDS:-3}
DELAY_ROUNDS=${DELAY_ROUNDS:-1}
PERF=${PERF:-target/release/lepus-perf}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "results in $out"

run() { # name broker round args...
  local name=$1 b=$2 r=$3; shift 3
  local uri=$LEPUS pid=${LEPUS_PID:-}
  if [ "$b" = other ]; then uri=$OTHER; pid=${OTHER_PID:-}; fi
  local pidarg=()
  [ -n "$pid" ] && pidarg=(--broker-pid "$pid")
  local f="$out/$name.$b.$r.json"
  echo "$(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg): $name $b round $r" >&2
  "$PERF" --uri "$uri" "$@" "${pidarg[@]}" --json 2>"$out/$name.$b.$r.log" >"$f" \
    || { [ -s "$f" ] || echo '{"failed":true}' >"$f"; }
  echo "$name $b round $r: $(cat "$f")"
}

for r in $(seq 1 "$ROUNDS"); do
  for b in lepus other; do run ttl "$b" "$r" --mode ttl --messages 100000 --max-ttl 5000; done
done
for r in $(seq 1 "$ROUNDS"); do
  for b in lepus other; do run hol "$b" "$r" --mode ttl --head-of-line; done
done
for r in $(seq 1 "$DELAY_ROUNDS"); do
  run delay lepus "$r" --mode delay --messages 1000000 --spread 60000
  run delay other "$r" --mode delay --via-ttl --messages 1000000 --spread 60000
done

python3 - "$out" <<'PY'
import json, sys, glob, statistics, os
d = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    name, b, r, _ = os.path.basename(f).split(".")
    try:
        j = json.load(open(f))
    except Exception:
        j = {"failed": True}
    rows.setdefault((name, b), []).append(j)

def med(js, k):
    v = [j[k] for j in js if j.get(k) is not None]
    return statistics.median(v) if v else None

def fmt(v, p=1):
    return "-" if v is None else f"{v:.{p}f}"

cols = [("publish_rate", 0), ("received", 0), ("missing", 0), ("early", 0),
        ("early_over_1ms", 0), ("lateness_p50_ms", 2), ("lateness_p99_ms", 2),
        ("lateness_max_ms", 2), ("broker_rss_peak_mb", 0), ("broker_rss_end_mb", 0),
        ("client_cpu_us_per_msg", 3)]
print()
print(f"{'scenario':8} {'broker':6} {'runs':>4} " + " ".join(f"{c:>14}" for c, _ in cols))
for (name, b), js in sorted(rows.items()):
    ok = [j for j in js if not j.get("failed")]
    print(f"{name:8} {b:6} {len(ok):>4} " + " ".join(f"{fmt(med(ok, c), p):>14}" for c, p in cols))
    if name == "hol":
        arr = [[a.get("arrival_ms") for a in j.get("arrivals", [])] for j in ok]
        for i, delay in enumerate((5000, 100)):
            v = [a[i] for a in arr if len(a) > i and a[i] is not None]
            print(f"         {b:6} TTL {delay} ms message arrived (median) {fmt(statistics.median(v) if v else None, 1)} ms after publish")
PY
