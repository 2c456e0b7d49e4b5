#!/usr/bin/env bash
# The interop matrix's scenarios with rabbitmq-c, through its command-line
# tools (Debian's amqp-tools: amqp-declare-queue, amqp-publish,
# amqp-consume, amqp-get, amqp-delete-queue).
#
# Usage: INTEROP_URL=amqp://guest:guest@127.0.0.1:5672/%2f bash test_amqp_tools.sh
# Prints "RESULT <id> pass|fail|skip <why>" per scenario. What the tools
# cannot say (confirms, mandatory, queue arguments, expiration, tx, exchange
# declares) is skipped as not expressible.

set -uo pipefail

U=${INTEROP_URL:?INTEROP_URL is not set}
HB=${INTEROP_HEARTBEAT:-2}
T=$(mktemp -d "${TMPDIR:-/tmp}/interop-amqp-tools.XXXXXX")
trap 'rm -rf "$T"' EXIT
NOT="not expressible with amqp-tools"

result() { echo "RESULT $*"; }
name() { echo "interop-tools-$1-$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')"; }
# Every tool call is bounded; its stderr goes to our stderr (the client log).
tool() { timeout 15 "$@" 2>>"$T/err"; }
why() { echo "$1${2:+: }$(tail -n 3 "$T/err" 2>/dev/null | tr '\n' ' ' | cut -c1-200)"; }

# Scenarios are functions that print the failure reason and return 1, or
# return 0 on success.

scenario_basic() {
  local q; q=$(name basic)
  : >"$T/err"
  tool amqp-declare-queue -u "$U" -q "$q" >"$T/declared" || { why "amqp-declare-queue failed"; return 1; }
  [ "$(cat "$T/declared")" = "$q" ] || { why "amqp-declare-queue printed '$(cat "$T/declared")', expected $q"; return 1; }
  for i in 1 2 3; do
    tool amqp-publish -u "$U" -r "$q" -b "m$i" || { why "amqp-publish failed"; return 1; }
  done
  # amqp-consume pipes each message into the command and acks it after.
  printf '#!/bin/sh\ncat >>"$1"; echo >>"$1"\n' >"$T/append"
  chmod +x "$T/append"
  tool amqp-consume -u "$U" -q "$q" -c 2 -p 1 "$T/append" "$T/got" \
    || { why "amqp-consume failed"; return 1; }
  [ "$(cat "$T/got")" = "$(printf 'm1\nm2')" ] || { why "amqp-consume got '$(cat "$T/got")'"; return 1; }
  # The two consumed messages were acked: the third is next, then nothing.
  [ "$(tool amqp-get -u "$U" -q "$q")" = "m3" ] || { why "amqp-get did not return m3 after consuming two"; return 1; }
  tool amqp-get -u "$U" -q "$q" >"$T/left"
  local rc=$?
  [ $rc = 2 ] || { why "amqp-get on the emptied queue: exit $rc, output '$(cat "$T/left")'"; return 1; }
  tool amqp-delete-queue -u "$U" -q "$q" >/dev/null || { why "amqp-delete-queue failed"; return 1; }
}

scenario_large() {
  local q; q=$(name large)
  : >"$T/err"
  head -c 4194304 /dev/urandom >"$T/big"
  tool amqp-declare-queue -u "$U" -q "$q" -d >/dev/null || { why "amqp-declare-queue -d failed"; return 1; }
  # Body from stdin, twice (persistent, in a durable queue): once read with
  # basic.get, once consumed.
  tool amqp-publish -u "$U" -r "$q" -p <"$T/big" || { why "amqp-publish of 4 MiB failed"; return 1; }
  tool amqp-publish -u "$U" -r "$q" -p <"$T/big" || { why "amqp-publish of 4 MiB failed"; return 1; }
  tool amqp-get -u "$U" -q "$q" >"$T/big.get" || { why "amqp-get failed"; return 1; }
  cmp -s "$T/big" "$T/big.get" || { why "amqp-get returned $(stat -c %s "$T/big.get") bytes, not the 4194304 published"; return 1; }
  tool amqp-consume -u "$U" -q "$q" -c 1 cat >"$T/big.consumed" || { why "amqp-consume failed"; return 1; }
  cmp -s "$T/big" "$T/big.consumed" || { why "amqp-consume got $(stat -c %s "$T/big.consumed") bytes, not the 4194304 published"; return 1; }
  tool amqp-delete-queue -u "$U" -q "$q" >/dev/null || { why "amqp-delete-queue failed"; return 1; }
}

scenario_heartbeat() {
  local q; q=$(name hb)
  : >"$T/err"
  tool amqp-declare-queue -u "$U" -q "$q" >/dev/null || { why "amqp-declare-queue failed"; return 1; }
  # rabbitmq-c sends heartbeats while it waits, and gives up on a broker
  # that sends nothing for two intervals.
  timeout 60 amqp-consume --heartbeat="$HB" -u "$U" -q "$q" -c 1 cat >"$T/hb.out" 2>"$T/hb.err" &
  local pid=$!
  sleep "$((3 * HB)).5"
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"
    echo "amqp-consume --heartbeat=$HB exited (status $?) while idle: $(tr '\n' ' ' <"$T/hb.err" | cut -c1-200)"
    return 1
  fi
  tool amqp-publish -u "$U" -r "$q" -b alive || { kill "$pid"; why "amqp-publish failed"; return 1; }
  local i
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"; wait "$pid"
    echo "amqp-consume did not get the message published after idling"
    return 1
  fi
  wait "$pid"
  local rc=$?
  [ $rc = 0 ] || { echo "amqp-consume exited with status $rc: $(tr '\n' ' ' <"$T/hb.err" | cut -c1-200)"; return 1; }
  [ "$(cat "$T/hb.out")" = alive ] || { echo "amqp-consume got '$(cat "$T/hb.out")' after idling"; return 1; }
  tool amqp-delete-queue -u "$U" -q "$q" >/dev/null || { why "amqp-delete-queue failed"; return 1; }
}

run() {
  local id=$1 t0 out
  t0=$(date +%s.%N)
  if out=$("scenario_$id"); then
    result "$id" pass
  else
    result "$id" fail "${out:-failed}"
    echo "--- amqp-tools $id failed: $out" >&2
    cat "$T/err" >&2 2>/dev/null
  fi
  echo "--- amqp-tools $id took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s" >&2
}

run basic
result confirms skip "$NOT: amqp-publish has no publisher confirms"
result mandatory skip "$NOT: amqp-publish has no mandatory flag"
result dlx skip "$NOT: amqp-declare-queue takes no queue arguments"
result ttl skip "$NOT: amqp-publish has no expiration property"
result cancel skip "$NOT: amqp-consume does not react to basic.cancel"
run large
run heartbeat
result tx skip "$NOT: no tx.* in the tools"
result delayed skip "$NOT: no exchange declare in the tools"
