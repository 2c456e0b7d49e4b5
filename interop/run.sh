#!/usr/bin/env bash
# Client compatibility matrix: runs the same scenarios with the RabbitMQ
# clients people use and prints a table of client x scenario.
#
#   interop/run.sh                      # against a fresh lepus (free port, temp data dir)
#   interop/run.sh --url amqp://guest:guest@127.0.0.1:5672/%2f   # against any broker
#   interop/run.sh --clients pika,java  # a subset
#
# Clients: pika, pika-tls (pika over amqps), aio-pika, kombu (py-amqp, kombu
# and a Celery worker), amqplib (Node.js), amqp-tools (rabbitmq-c's CLI), java
# (RabbitMQ Java client).
# Each client's runtime and packages are installed here, once per machine:
# a venv in target/interop/venv (pip), node_modules in target/interop/node
# (npm), Debian packages with apt-get (only as root). A client that cannot be
# installed is reported as skipped, with the reason; a scenario that runs and
# fails is FAIL. Exit status: 1 iff a cell failed (2 for a usage or broker
# start error).
#
# Environment:
#   LEPUS_BIN          lepus binary to start (default: cargo build --bin lepus)
#   INTEROP_HEARTBEAT  heartbeat interval asked for by the clients, s (default 2)
#   INTEROP_RUN_LIMIT  time limit of one client's scenarios, s (default 120)
#   INTEROP_INSTALL_BUDGET  time all installs together may take, s (default 420)
#   INTEROP_TIME_LIMIT time limit of the whole matrix after the broker is up,
#                      s (default 840); clients not run by then are skipped
#   INTEROP_NO_INSTALL=1    never install anything: use what is already there
#   INTEROP_TLS_URL, INTEROP_TLS_CA  with --url: the broker's amqps URL and the
#                      CA (PEM) to trust, for the pika-tls column (against
#                      lepus, run.sh makes a CA with openssl and starts lepus
#                      with --tls-port 0)
#
# Every client script prints lines "RESULT <scenario> <pass|fail|skip> <why>";
# interop/README.md describes the protocol and how to add a client.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=${INTEROP_WORK:-$ROOT/target/interop}
ALL_CLIENTS=(pika pika-tls aio-pika kombu amqplib amqp-tools java)
HEARTBEAT=${INTEROP_HEARTBEAT:-2}
RUN_LIMIT=${INTEROP_RUN_LIMIT:-120}
INSTALL_BUDGET=${INTEROP_INSTALL_BUDGET:-420}
TIME_LIMIT=${INTEROP_TIME_LIMIT:-840}

# The scenarios, in table order: id and row label.
SCENARIOS=(basic confirms mandatory dlx ttl cancel large heartbeat tx delayed declare get replyto celery)
declare -A LABEL=(
  [basic]="publish, consume, ack"
  [confirms]="publisher confirms"
  [mandatory]="mandatory publish returned (312)"
  [dlx]="reject -> DLX, x-death reason rejected"
  [ttl]="per-message TTL: expired, dead-lettered"
  [cancel]="consumer cancel on queue delete"
  [large]="4 MiB message intact"
  [heartbeat]="heartbeats over 3x interval idle"
  [tx]="tx: commit visible, rollback not"
  [delayed]="x-delayed-message, x-delay 300 ms"
  [declare]="queue declare: passive, server-named, 404"
  [get]="basic.get with properties"
  [replyto]="RPC over direct reply-to"
  [celery]="Celery worker runs a task (rpc:// results)"
)
COMMON="basic confirms mandatory dlx ttl cancel large heartbeat tx delayed"
# The scenarios each client must report on (others are shown as "-").
declare -A PLAN=(
  [pika]="$COMMON declare get replyto"
  [pika-tls]="$COMMON declare get replyto"
  [aio-pika]="$COMMON"
  [kombu]="$COMMON celery"
  [amqplib]="$COMMON replyto"
  [amqp-tools]="$COMMON"
  [java]="$COMMON"
)
declare -A TITLE=(
  [pika]="pika"
  [pika-tls]="pika TLS"
  [aio-pika]="aio-pika"
  [kombu]="py-amqp/kombu"
  [amqplib]="amqplib"
  [amqp-tools]="amqp-tools"
  [java]="java"
)

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

URL=""
CLIENTS=("${ALL_CLIENTS[@]}")
while [ $# -gt 0 ]; do
  case "$1" in
    --url) URL=${2:?--url needs a value}; shift 2 ;;
    --url=*) URL=${1#--url=}; shift ;;
    --clients) IFS=, read -r -a CLIENTS <<<"${2:?--clients needs a value}"; shift 2 ;;
    --clients=*) IFS=, read -r -a CLIENTS <<<"${1#--clients=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
for c in "${CLIENTS[@]}"; do
  if [ -z "${PLAN[$c]+x}" ]; then
    echo "run.sh: unknown client '$c' (known: ${ALL_CLIENTS[*]})" >&2
    exit 2
  fi
done

# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1

mkdir -p "$WORK"
if [ -n "$URL" ]; then TARGET=other; else TARGET=lepus; fi
LOGS="$WORK/logs-$TARGET"
rm -rf "$LOGS"
mkdir -p "$LOGS"
RESULTS="$LOGS/results.tsv"
: >"$RESULTS"

# Progress goes to the original stderr, also from setup functions whose
# stderr is sent to a log.
exec 3>&2
say() { printf '%s\n' "$*" >&3; }
now() { date +%s; }

LEPUS_PID=""
DATA_DIR=""
CHILD_PID=""
# Run a command in the background and wait for it, so that a signal to this
# script is handled at once (bash runs traps only between foreground
# commands) and the cleanup can stop it.
waitfor() {
  "$@" &
  CHILD_PID=$!
  wait "$CHILD_PID"
  local rc=$?
  CHILD_PID=""
  return $rc
}
cleanup() {
  # timeout(1) passes the TERM on to the command it runs.
  [ -n "$CHILD_PID" ] && kill -TERM "$CHILD_PID" 2>/dev/null
  if [ -n "$LEPUS_PID" ] && kill -0 "$LEPUS_PID" 2>/dev/null; then
    kill -TERM "$LEPUS_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$LEPUS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$LEPUS_PID" 2>/dev/null
    wait "$LEPUS_PID" 2>/dev/null
  fi
  [ -n "$DATA_DIR" ] && rm -rf "$DATA_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the broker

# amqps for the pika-tls column: against lepus, a CA made here; against
# another broker, INTEROP_TLS_URL (amqps://...) and INTEROP_TLS_CA (PEM).
TLS_URL=${INTEROP_TLS_URL:-}
TLS_CA=${INTEROP_TLS_CA:-}
TLS_WHY="no amqps broker: give INTEROP_TLS_URL and INTEROP_TLS_CA"

# make_test_ca DIR: ca.pem, and server.pem/server.key for 127.0.0.1 and
# localhost signed by it, valid for two days.
make_test_ca() {
  local d=$1
  command -v openssl >/dev/null || { echo "openssl not found"; return 1; }
  mkdir -p "$d" && cd "$d" || return 1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout ca.key -out ca.pem -days 2 -subj "/CN=lepus interop CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout server.key -out server.csr -subj "/CN=localhost" &&
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
      "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >server.ext &&
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -out server.pem -days 2 -extfile server.ext
  local rc=$?
  cd - >/dev/null
  return $rc
}

start_lepus() {
  local bin=${LEPUS_BIN:-}
  if [ -z "$bin" ]; then
    say "building lepus (cargo build --bin lepus)"
    if ! (cd "$ROOT" && cargo build --quiet --bin lepus) >"$LOGS/build.log" 2>&1; then
      cat "$LOGS/build.log" >&2
      say "run.sh: cargo build --bin lepus failed"
      exit 2
    fi
    bin="$ROOT/target/debug/lepus"
  fi
  DATA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/lepus-interop.XXXXXX")
  # Free ports for everything lepus listens on.
  local extra=()
  "$bin" --help 2>/dev/null | grep -q -- --mgmt-port && extra+=(--mgmt-port 0)
  # amqps too (the pika-tls column), with a CA made for this run.
  local tls_env=()
  if "$bin" --help 2>/dev/null | grep -q -- --tls-port; then
    if make_test_ca "$DATA_DIR/tls" 2>"$LOGS/tls-ca.log"; then
      extra+=(--tls-port 0)
      tls_env=(LEPUS_TLS_CERTFILE="$DATA_DIR/tls/server.pem" LEPUS_TLS_KEYFILE="$DATA_DIR/tls/server.key")
      TLS_CA="$DATA_DIR/tls/ca.pem"
    else
      TLS_WHY="could not make a test CA with openssl (see $LOGS/tls-ca.log)"
    fi
  else
    TLS_WHY="this lepus has no --tls-port"
  fi
  env "${tls_env[@]}" LEPUS_LOG=${LEPUS_LOG:-info} "$bin" --bind 127.0.0.1 --port 0 "${extra[@]}" --data-dir "$DATA_DIR" \
    >"$LOGS/lepus.log" 2>&1 &
  LEPUS_PID=$!
  local addr=""
  for _ in $(seq 300); do
    addr=$(sed -n 's/.*lepus ready.*listen=\([0-9.]*:[0-9]*\).*/\1/p' "$LOGS/lepus.log" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$LEPUS_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    cat "$LOGS/lepus.log" >&2
    say "run.sh: lepus ($bin) did not become ready"
    exit 2
  fi
  URL="amqp://guest:guest@$addr/%2f"
  if [ -n "$TLS_CA" ]; then
    local tls_addr
    tls_addr=$(sed -n 's/.*lepus ready.*amqps=\([0-9.]*:[0-9]*\).*/\1/p' "$LOGS/lepus.log" | head -n1)
    if [ -n "$tls_addr" ]; then TLS_URL="amqps://guest:guest@$tls_addr/%2f"
    else TLS_WHY="lepus did not log an amqps listener"; fi
  fi
  say "lepus $("$bin" --version 2>/dev/null | awk '{print $2}') ready on $addr (pid $LEPUS_PID, data dir $DATA_DIR)"
}

# ------------------------------------------------------------------ installs

INSTALL_START=$(now)
install_left() { echo $((INSTALL_BUDGET - ($(now) - INSTALL_START))); }

# bounded CMD...: run CMD under the remaining install budget (at most $LIMIT s).
bounded() {
  local limit=$1; shift
  local left; left=$(install_left)
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 0 ]; then
    echo "install budget of ${INSTALL_BUDGET}s used up" >&2
    return 124
  fi
  waitfor timeout -k 10 "$limit" "$@"
}

# Why the last install failed, in one line (for the table).
WHY=""
last_line() { grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-160; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

VENV="$WORK/venv"
python_venv() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null && return 0
  [ "${INTEROP_NO_INSTALL:-}" = 1 ] && { WHY="no venv in $VENV (INTEROP_NO_INSTALL=1)"; return 1; }
  local py
  py=$(command -v python3 || true)
  [ -z "$py" ] && { WHY="python3 is not installed"; return 1; }
  rm -rf "$VENV"
  if ! bounded 120 "$py" -m venv "$VENV" >>"$LOG_SETUP" 2>&1; then
    WHY="python3 -m venv failed: $(last_line "$LOG_SETUP")"
    return 1
  fi
}

# pip_requirements FILE IMPORT...: install FILE into the venv unless done.
pip_requirements() {
  local req=$1; shift
  python_venv || return 1
  local stamp
  stamp="$VENV/.installed-$(basename "$req" .txt)-$(hash_of "$req")"
  if [ -e "$stamp" ] && "$VENV/bin/python" -c "import $(IFS=,; echo "$*")" 2>/dev/null; then
    return 0
  fi
  [ "${INTEROP_NO_INSTALL:-}" = 1 ] && { WHY="$(basename "$req") not installed (INTEROP_NO_INSTALL=1)"; return 1; }
  local t0; t0=$(now)
  say "  pip install -r interop/python/$(basename "$req")"
  if ! bounded 300 "$VENV/bin/python" -m pip install --disable-pip-version-check --retries 2 --timeout 20 \
       -q -r "$req" >>"$LOG_SETUP" 2>&1; then
    WHY="pip install -r $(basename "$req") failed (registry unreachable?): $(last_line "$LOG_SETUP")"
    return 1
  fi
  if ! "$VENV/bin/python" -c "import $(IFS=,; echo "$*")" >>"$LOG_SETUP" 2>&1; then
    WHY="installed $(basename "$req") but cannot import $*"
    return 1
  fi
  touch "$stamp"
  say "  installed $(basename "$req") in $(( $(now) - t0 ))s"
}

# apt_install CHECK-COMMAND PACKAGE...: make CHECK-COMMAND succeed by
# installing the Debian packages (as root only).
apt_install() {
  local check=$1; shift
  ( eval "$check" ) >/dev/null 2>&1 && return 0
  [ "${INTEROP_NO_INSTALL:-}" = 1 ] && { WHY="$* not installed (INTEROP_NO_INSTALL=1)"; return 1; }
  command -v apt-get >/dev/null || { WHY="$* not installed and no apt-get"; return 1; }
  [ "$(id -u)" = 0 ] || { WHY="$* not installed (apt-get install needs root)"; return 1; }
  local t0; t0=$(now)
  say "  apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! bounded 300 apt-get install -y -q --no-install-recommends "$@" >>"$LOG_SETUP" 2>&1; then
    # The package lists may be missing or stale on a new machine.
    bounded 180 apt-get update -q >>"$LOG_SETUP" 2>&1
    if ! bounded 300 apt-get install -y -q --no-install-recommends "$@" >>"$LOG_SETUP" 2>&1; then
      WHY="apt-get install $* failed: $(last_line "$LOG_SETUP")"
      return 1
    fi
  fi
  if ! ( eval "$check" ) >>"$LOG_SETUP" 2>&1; then
    WHY="installed $* but '$check' still fails"
    return 1
  fi
  say "  installed $* in $(( $(now) - t0 ))s"
}

# --------------------------------------------------------------- the clients
# setup_X prepares client X (returns 1 with $WHY set if it cannot; a $WHY
# starting with "FAIL " makes its cells fail rather than skip); cmd_X sets CMD
# to the command that runs its scenarios, printing RESULT lines on stdout.

setup_pika() { pip_requirements "$HERE/python/requirements-pika.txt" pika; }
cmd_pika() { CMD=("$VENV/bin/python" -u "$HERE/python/test_pika.py"); }

# pika over amqps: the same scenarios, trusting only the run's test CA.
setup_pika-tls() {
  if [ -z "$TLS_URL" ] || [ -z "$TLS_CA" ]; then WHY=$TLS_WHY; return 1; fi
  setup_pika
}
cmd_pika-tls() { CMD=("$VENV/bin/python" -u "$HERE/python/test_pika.py"); }

setup_aio-pika() { pip_requirements "$HERE/python/requirements-aio-pika.txt" aio_pika; }
cmd_aio-pika() { CMD=("$VENV/bin/python" -u "$HERE/python/test_aio_pika.py"); }

setup_kombu() {
  pip_requirements "$HERE/python/requirements-kombu.txt" kombu amqp || return 1
  # Celery is one more cell: without it, that cell alone is skipped.
  if pip_requirements "$HERE/python/requirements-celery.txt" celery; then
    export INTEROP_CELERY=1
  else
    export INTEROP_CELERY="skip (celery not installed: $WHY)"
  fi
}
cmd_kombu() { CMD=("$VENV/bin/python" -u "$HERE/python/test_kombu.py"); }

NODE_DIR="$WORK/node"
setup_amqplib() {
  command -v node >/dev/null || apt_install "command -v node && command -v npm" nodejs npm || return 1
  command -v npm >/dev/null || apt_install "command -v npm" npm || return 1
  local stamp="$NODE_DIR/.installed-$(hash_of "$HERE/node/package.json" "$HERE/node/package-lock.json")"
  [ -e "$stamp" ] && [ -d "$NODE_DIR/node_modules/amqplib" ] && return 0
  [ "${INTEROP_NO_INSTALL:-}" = 1 ] && { WHY="amqplib not installed (INTEROP_NO_INSTALL=1)"; return 1; }
  mkdir -p "$NODE_DIR"
  cp "$HERE/node/package.json" "$HERE/node/package-lock.json" "$NODE_DIR/"
  local t0; t0=$(now)
  say "  npm ci (interop/node/package-lock.json)"
  if ! (cd "$NODE_DIR" && bounded 300 npm ci --no-audit --no-fund --loglevel=error) >>"$LOG_SETUP" 2>&1; then
    WHY="npm ci failed (registry unreachable?): $(last_line "$LOG_SETUP")"
    return 1
  fi
  touch "$stamp"
  say "  installed amqplib in $(( $(now) - t0 ))s"
}
cmd_amqplib() { CMD=(env NODE_PATH="$NODE_DIR/node_modules" node "$HERE/node/test_amqplib.js"); }

setup_amqp-tools() {
  apt_install "command -v amqp-publish && command -v amqp-consume && command -v amqp-get && command -v amqp-declare-queue" \
    amqp-tools
}
cmd_amqp-tools() { CMD=(bash "$HERE/amqp-tools/test_amqp_tools.sh"); }

JAVA_CLASSES="$WORK/java/classes"
JAVA_CP=""
java_jars() {
  # The Java client (Debian ships it as amqp-client.jar) and what it needs at
  # run time: slf4j's API, and its no-operation binding if there.
  local jar api
  jar=$(ls /usr/share/java/rabbitmq-client.jar /usr/share/java/amqp-client.jar 2>/dev/null | head -n1)
  api=$(ls /usr/share/java/slf4j-api.jar 2>/dev/null | head -n1)
  [ -n "$jar" ] && [ -n "$api" ] || return 1
  JAVA_CP="$jar:$api"
  [ -e /usr/share/java/slf4j-nop.jar ] && JAVA_CP="$JAVA_CP:/usr/share/java/slf4j-nop.jar"
  return 0
}
setup_java() {
  apt_install "command -v javac && command -v java" default-jdk-headless || return 1
  apt_install java_jars librabbitmq-client-java libslf4j-java || return 1
  java_jars
  local stamp="$WORK/java/.compiled-$(hash_of "$HERE/java/Interop.java" <(echo "$JAVA_CP") <(javac -version 2>&1))"
  [ -e "$stamp" ] && [ -e "$JAVA_CLASSES/Interop.class" ] && return 0
  rm -rf "$WORK/java"
  mkdir -p "$JAVA_CLASSES"
  if ! javac -Xlint:-options -d "$JAVA_CLASSES" -cp "$JAVA_CP" "$HERE/java/Interop.java" >>"$LOG_SETUP" 2>&1; then
    cat "$LOG_SETUP" >&2
    # Not an install problem: the program does not compile. That is a failure.
    WHY="FAIL javac Interop.java failed: $(last_line "$LOG_SETUP")"
    return 1
  fi
  touch "$stamp"
}
cmd_java() { CMD=(java -Xmx256m -XX:TieredStopAtLevel=1 -cp "$JAVA_CLASSES:$JAVA_CP" Interop); }

# ------------------------------------------------------------------ the run

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

run_client() {
  local c=$1
  LOG_SETUP="$LOGS/$c.setup.log"
  : >"$LOG_SETUP"
  WHY=""
  local t0; t0=$(now)
  say "[$c] setting up"
  # One install at a time on this machine (two runs may share target/interop).
  exec 9>"$WORK/install.lock"
  flock -w 900 9 || say "[$c] another run holds $WORK/install.lock; going on without it"
  "setup_$c" 2>>"$LOG_SETUP"
  local ok=$?
  flock -u 9
  exec 9>&-
  if [ $ok != 0 ]; then
    local status=skip why=${WHY:-setup failed}
    if [[ $why == FAIL\ * ]]; then status=fail; why=${why#FAIL }; fi
    say "[$c] $status: $why"
    for s in ${PLAN[$c]}; do record "$c" "$s" "$status" "$why"; done
    return
  fi
  local limit=$RUN_LIMIT left=$((DEADLINE - $(now)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$left" -le 5 ]; then
    say "[$c] not run: the matrix time limit (${TIME_LIMIT}s) is reached"
    for s in ${PLAN[$c]}; do record "$c" "$s" skip "not run: the matrix time limit (${TIME_LIMIT}s) was reached"; done
    return
  fi
  say "[$c] running scenarios (limit ${limit}s)"
  local out="$LOGS/$c.out"
  "cmd_$c"
  local url=$URL
  [ "$c" = pika-tls ] && url=$TLS_URL
  INTEROP_URL="$url" INTEROP_TLS_CA="$TLS_CA" INTEROP_TARGET="$TARGET" INTEROP_HEARTBEAT="$HEARTBEAT" \
    INTEROP_LOGS="$LOGS" waitfor timeout -k 10 "$limit" "${CMD[@]}" >"$out" 2>"$LOGS/$c.log" </dev/null
  local rc=$?
  local s line status why
  for s in ${PLAN[$c]}; do
    line=$(awk -v s="$s" '$1 == "RESULT" && $2 == s { $1 = ""; $2 = ""; print; exit }' "$out")
    if [ -z "$line" ]; then
      if [ $rc = 124 ] || [ $rc = 137 ]; then why="no result: the client was killed after ${limit}s"
      else why="no result: the client exited with status $rc (see $LOGS/$c.log)"; fi
      record "$c" "$s" fail "$why"
      continue
    fi
    read -r status why <<<"$line"
    case "$status" in
      pass|fail|skip) record "$c" "$s" "$status" "$why" ;;
      *) record "$c" "$s" fail "bad result line: $line" ;;
    esac
  done
  say "[$c] done in $(( $(now) - t0 ))s: $(awk -F'\t' -v c="$c" '$1 == c { n[$3]++ } END { printf "%d pass, %d fail, %d skip", n["pass"], n["fail"], n["skip"] }' "$RESULTS")"
  grep '^RESULT .* fail ' "$out" | sed "s/^/[$c]   /" >&2
}

if [ "$TARGET" = lepus ]; then start_lepus; else say "broker: $URL"; fi
T_START=$(now)
DEADLINE=$((T_START + TIME_LIMIT))
for c in "${CLIENTS[@]}"; do
  run_client "$c"
done
if [ "$TARGET" = lepus ] && ! kill -0 "$LEPUS_PID" 2>/dev/null; then
  say "run.sh: lepus exited during the run (log: $LOGS/lepus.log)"
  record lepus alive fail "lepus exited during the run"
fi

# ----------------------------------------------------------------- the table

cols=""
for c in "${CLIENTS[@]}"; do cols="$cols$c=${TITLE[$c]};"; done
rows=""
for s in "${SCENARIOS[@]}"; do
  used=""
  for c in "${CLIENTS[@]}"; do [[ " ${PLAN[$c]} " == *" $s "* ]] && used=1; done
  [ -n "$used" ] && rows="$rows$s=${LABEL[$s]};"
done
if [ "$TARGET" = lepus ]; then broker="lepus"; else broker=$(sed -E 's#(://)[^@/]*@#\1***@#' <<<"$URL"); fi
echo
echo "Client compatibility against $broker ($(( $(now) - T_START ))s):"
echo
awk -F'\t' -v cols="$cols" -v rows="$rows" '
  function pad(s, n) { while (length(s) < n) s = s " "; return s }
  BEGIN {
    nc = split(cols, cp, ";") - 1; for (i = 1; i <= nc; i++) { split(cp[i], kv, "="); cid[i] = kv[1]; ctitle[i] = kv[2] }
    nr = split(rows, rp, ";") - 1; for (i = 1; i <= nr; i++) { j = index(rp[i], "="); rid[i] = substr(rp[i], 1, j - 1); rlabel[i] = substr(rp[i], j + 1) }
  }
  { st[$1, $2] = $3; why[$1, $2] = $4; if ($1 == "lepus") extra = extra "\n" $4 }
  END {
    nnotes = 0
    for (r = 1; r <= nr; r++) for (c = 1; c <= nc; c++) {
      k = cid[c] SUBSEP rid[r]
      if (!(k in st)) { cell[r, c] = "-"; continue }
      s = st[k]; w = why[k]
      if (s == "pass") { cell[r, c] = "pass"; npass++; continue }
      if (s == "fail") nfail++; else nskip++
      txt = (s == "fail" ? "FAIL" : "skip") ": " w
      if (!(txt in note)) { note[txt] = ++nnotes; notes[nnotes] = txt }
      cell[r, c] = (s == "fail" ? "FAIL" : "skip") " [" note[txt] "]"
    }
    w0 = length("scenario"); for (r = 1; r <= nr; r++) if (length(rlabel[r]) > w0) w0 = length(rlabel[r])
    for (c = 1; c <= nc; c++) { wc[c] = length(ctitle[c]); for (r = 1; r <= nr; r++) if (length(cell[r, c]) > wc[c]) wc[c] = length(cell[r, c]) }
    line = "| " pad("scenario", w0) " |"; sep = "|" pad("", w0 + 2) "|"; gsub(/ /, "-", sep)
    for (c = 1; c <= nc; c++) { line = line " " pad(ctitle[c], wc[c]) " |"; d = pad("", wc[c] + 2); gsub(/ /, "-", d); sep = sep d "|" }
    print line; print sep
    for (r = 1; r <= nr; r++) {
      line = "| " pad(rlabel[r], w0) " |"
      for (c = 1; c <= nc; c++) line = line " " pad(cell[r, c], wc[c]) " |"
      print line
    }
    if (nnotes) print ""
    for (i = 1; i <= nnotes; i++) print "[" i "] " notes[i]
    if (extra != "") { print ""; print "broker:" extra; nfail++ }
    print ""
    printf "matrix: %d passed, %d failed, %d skipped\n", npass, nfail, nskip
  }' "$RESULTS"
echo "logs: $LOGS"

if awk -F'\t' '$3 == "fail" { found = 1 } END { exit !found }' "$RESULTS"; then
  exit 1
fi
exit 0
