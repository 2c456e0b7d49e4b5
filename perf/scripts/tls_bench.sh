#!/usr/bin/env bash
# TLS against plain TCP on one lepus, in the same run: throughput (16 B and
# 1 KiB transient, 1 producer and 1 consumer; plain and TLS alternately,
# ROUNDS rounds of DURATION s, medians and the TLS/plain ratio), then the
# broker's memory for IDLE idle connections, plain and TLS (VmRSS of the lepus
# process before and after, divided by IDLE).
#
#   perf/scripts/tls_bench.sh          # after: cargo build --release --bin lepus --bin lepus-perf
#
# Environment: LEPUS_BIN (target/release/lepus), PERF (target/release/lepus-perf),
# ROUNDS (3), DURATION (8), IDLE (1000). Makes a test CA with openssl; starts
# lepus itself on free ports with a temporary data dir, and stops it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LEPUS_BIN=${LEPUS_BIN:-target/release/lepus}
PERF=${PERF:-target/release/lepus-perf}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
IDLE=${IDLE:-1000}
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A CA and a server certificate for 127.0.0.1 (ECDSA P-256, as is common).
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 2 -subj "/CN=lepus bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout server.key -out server.csr -subj "/CN=localhost"
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 2 -extfile server.ext
) 2>/dev/null

mkdir "$work/data"
LEPUS_TLS_CERTFILE="$work/server.pem" LEPUS_TLS_KEYFILE="$work/server.key" \
  "$LEPUS_BIN" --port 0 --tls-port 0 --mgmt-port 0 --data-dir "$work/data" >"$work/lepus.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "lepus ready" "$work/lepus.log" && break; sleep 0.1; done
plain=$(sed -n 's/.*lepus ready.*listen=\([0-9.]*:[0-9]*\).*/\1/p' "$work/lepus.log")
tls=$(sed -n 's/.*lepus ready.*amqps=\([0-9.]*:[0-9]*\).*/\1/p' "$work/lepus.log")
[ -n "$plain" ] && [ -n "$tls" ] || { cat "$work/lepus.log"; echo "lepus did not start" >&2; exit 2; }
echo "lepus pid $pid: amqp $plain, amqps $tls"

for s in "16B|--size 16" "1KiB|--size 1024"; do
  name=${s%%|*}; args=${s#*|}
  for r in $(seq 1 "$ROUNDS"); do
    for t in plain tls; do
      uri="amqp://guest:guest@$plain/%2f"; extra=()
      [ "$t" = tls ] && uri="amqps://guest:guest@$tls/%2f" && extra=(--cacert "$work/ca.pem")
      # shellcheck disable=SC2086
      "$PERF" --uri "$uri" "${extra[@]}" $args --duration "$DURATION" --json --queue "tls-bench-$name" \
        2>/dev/null >"$work/$name.$t.$r.json" || echo '{"failed":true}' >"$work/$name.$t.$r.json"
      echo "$name $t round $r: $(cat "$work/$name.$t.$r.json")"
    done
  done
done
python3 - "$work" <<'PY'
import glob, json, os, statistics, sys
d = sys.argv[1]
runs = {}
for f in glob.glob(os.path.join(d, "*.json")):
    name, t, r, _ = os.path.basename(f).split(".")
    j = json.load(open(f))
    if not j.get("failed"):
        runs.setdefault((name, t), []).append(j)
print()
print(f"{'scenario':10} {'transport':9} {'pub msg/s':>11} {'cons msg/s':>11} {'cli us/msg':>10}")
med = {}
for (name, t), js in sorted(runs.items()):
    m = lambda k: statistics.median([j.get(k) or 0 for j in js])
    med[(name, t)] = m("consume_rate")
    print(f"{name:10} {t:9} {m('publish_rate'):11.0f} {m('consume_rate'):11.0f} {m('client_cpu_us_per_msg'):10.3f}")
print()
for name in sorted({n for n, _ in med}):
    if med.get((name, "plain")):
        print(f"{name} transient: TLS/plain consumed ratio {med.get((name, 'tls'), 0) / med[(name, 'plain')]:.2f}")
PY

rss() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$pid/status"; }
echo
for t in plain tls; do
  addr=$plain; extra=()
  [ "$t" = tls ] && addr=$tls && extra=(--cacert "$work/ca.pem")
  sleep 2
  before=$(rss)
  mkfifo "$work/hold.$t"
  python3 "$HERE/idle_connections.py" "${addr%:*}" "${addr##*:}" "$IDLE" "${extra[@]}" \
    <"$work/hold.$t" >"$work/idle.$t.out" &
  holder=$!
  exec 4>"$work/hold.$t"
  for _ in $(seq 600); do grep -q "^open" "$work/idle.$t.out" && break; sleep 0.1; done
  grep -q "^open" "$work/idle.$t.out" || { echo "idle connections did not open" >&2; exit 1; }
  sleep 3
  after=$(rss)
  exec 4>&-
  wait "$holder" || true
  echo "$IDLE idle $t connections: lepus RSS $before -> $after bytes, $(( (after - before) / IDLE )) bytes per connection"
done
