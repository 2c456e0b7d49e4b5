"""What every Python client script of the interop matrix shares.

Environment (set by interop/run.sh):
  INTEROP_URL        amqp://user:pass@host:port/vhost of the broker under test
  INTEROP_TARGET     "lepus" when run.sh started lepus, "other" for --url
  INTEROP_HEARTBEAT  heartbeat interval, seconds, for the heartbeat scenario

Each scenario prints one line: "RESULT <id> pass", "RESULT <id> fail <why>" or
"RESULT <id> skip <why>". A scenario raises Skip to be skipped; any other
exception fails it.
"""

import os
import sys
import time
import traceback
import uuid

URL = os.environ.get("INTEROP_URL") or os.environ.get("LEPUS_URL") or ""
TARGET = os.environ.get("INTEROP_TARGET", "other")
HEARTBEAT = int(os.environ.get("INTEROP_HEARTBEAT", "2"))
# Every single wait is bounded by this; run.sh bounds the whole client too.
TIMEOUT = 10.0
# The 4 MiB scenario's body: random, so nothing can compress or fake it.
LARGE_SIZE = 4 * 1024 * 1024
DELAY_MS = 300


class Skip(Exception):
    """The scenario cannot run here (the reason is the message)."""


def unique(prefix):
    return "interop-%s-%s" % (prefix, uuid.uuid4().hex[:10])


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def text(v):
    """A header value as str (clients hand longstr values back as bytes or str)."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return v


def check_x_death(headers, reason, queue, original_expiration=None):
    """The message was dead-lettered once from `queue` for `reason`, having
    been published to the default exchange with routing key `queue`: the
    x-death entry and the x-first-death-* headers RabbitMQ adds."""
    headers = headers or {}
    deaths = headers.get("x-death")
    check(deaths is not None, "no x-death header; headers: %r" % (headers,))
    check(isinstance(deaths, (list, tuple)) and len(deaths) == 1, "x-death is %r" % (deaths,))
    d = deaths[0]
    check(text(d.get("reason")) == reason, "x-death reason %r, expected %r (x-death %r)" % (d.get("reason"), reason, deaths))
    check(text(d.get("queue")) == queue, "x-death queue %r, expected %r" % (d.get("queue"), queue))
    check(int(d.get("count", 0)) == 1, "x-death count %r, expected 1" % (d.get("count"),))
    check(text(d.get("exchange")) == "", "x-death exchange %r, expected ''" % (d.get("exchange"),))
    keys = [text(k) for k in (d.get("routing-keys") or [])]
    check(keys == [queue], "x-death routing-keys %r, expected [%r]" % (keys, queue))
    check(d.get("time") is not None, "x-death has no time: %r" % (d,))
    if original_expiration is not None:
        check(text(d.get("original-expiration")) == original_expiration,
              "x-death original-expiration %r, expected %r" % (d.get("original-expiration"), original_expiration))
    check(text(headers.get("x-first-death-reason")) == reason,
          "x-first-death-reason %r, expected %r" % (headers.get("x-first-death-reason"), reason))
    check(text(headers.get("x-first-death-queue")) == queue,
          "x-first-death-queue %r, expected %r" % (headers.get("x-first-death-queue"), queue))
    check(text(headers.get("x-first-death-exchange")) == "",
          "x-first-death-exchange %r, expected ''" % (headers.get("x-first-death-exchange"),))


def idle_watch(sample, sleep, what_changes):
    """Idle for 3 heartbeat intervals (+0.5 s), calling sleep(0.05) (which
    must keep the client's I/O going) and noting when sample() changes: the
    client read something, and while idle that can only be a heartbeat.
    Returns the gaps between the broker's frames, from the start of the idle
    period to its end, in seconds."""
    start = time.monotonic()
    end = start + 3 * HEARTBEAT + 0.5
    last, prev, gaps = start, sample(), []
    while time.monotonic() < end:
        sleep(0.05)
        cur = sample()
        if cur != prev:
            now = time.monotonic()
            gaps.append(now - last)
            last, prev = now, cur
    gaps.append(time.monotonic() - last)
    check(len(gaps) > 1, "no heartbeat from the broker in %.1fs idle (%s did not change)"
          % (time.monotonic() - start, what_changes))
    return gaps


def check_heartbeat_gaps(gaps):
    """The broker sent heartbeats at the negotiated interval: never silent
    for more than 1.5 intervals. Clients give up after two silent intervals
    (rabbitmq-c, py-amqp, amqplib, the Java client), so a broker that waits
    two intervals between heartbeats loses connections at random; RabbitMQ
    sends one every half interval."""
    worst = max(gaps)
    check(worst <= 1.5 * HEARTBEAT,
          "the broker was silent for %.2fs while idle with heartbeat %ds (gaps between its frames: %s)"
          % (worst, HEARTBEAT, ", ".join("%.2f" % g for g in gaps)))


def delayed_unsupported(code, text_):
    """True when an x-delayed-message declare failed because the broker does
    not have the exchange type: only ever for a broker other than lepus
    (lepus has it, so there a failed declare is a failure)."""
    return TARGET != "lepus" and code in (503, 404)


SKIP_DELAYED = "broker lacks x-delayed-message"


def large_body():
    return os.urandom(LARGE_SIZE)


def report(sid, status, why=""):
    why = " ".join(str(why).split())[:300]
    print(("RESULT %s %s %s" % (sid, status, why)).rstrip(), flush=True)


def run_all(client, scenarios, only=None):
    """Run (id, fn) scenarios in order; fn() raises to fail or Skip to skip."""
    only = set(filter(None, (only or os.environ.get("INTEROP_ONLY", "")).split(",")))
    failed = 0
    for sid, fn in scenarios:
        if only and sid not in only:
            continue
        t0 = time.monotonic()
        try:
            fn()
            report(sid, "pass")
        except Skip as e:
            report(sid, "skip", str(e))
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print("--- %s %s failed after %.1fs:" % (client, sid, time.monotonic() - t0), file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            report(sid, "fail", "%s: %s" % (type(e).__name__, e))
        print("--- %s %s took %.1fs" % (client, sid, time.monotonic() - t0), file=sys.stderr, flush=True)
    return 1 if failed else 0


def main_guard(fn):
    if not URL:
        print("INTEROP_URL is not set", file=sys.stderr)
        sys.exit(2)
    sys.exit(fn())
