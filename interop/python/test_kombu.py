#!/usr/bin/env python3
"""The interop matrix's scenarios with kombu on py-amqp (Celery's transport),
and one Celery task through a real worker.

Usage: INTEROP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 test_kombu.py
Prints "RESULT <id> pass|fail|skip <why>" per scenario; see interop_common.py.
Kombu's API where it has one (Producer, Consumer, Queue, Exchange, heartbeat
checks); py-amqp's channel (kombu's channel is one) for consumer cancel
notifications and transactions.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import amqp.exceptions
import kombu
from kombu import Exchange, Producer, Queue

from interop_common import (
    DELAY_MS, HEARTBEAT, SKIP_DELAYED, TIMEOUT, URL, Skip, check, check_heartbeat_gaps,
    check_x_death, delayed_unsupported, idle_watch, large_body, main_guard, run_all, text, unique,
)

HERE = os.path.dirname(os.path.abspath(__file__))


class Conn:
    """with Conn() as conn: a connected kombu.Connection, released at the end."""

    def __init__(self, **kw):
        kw.setdefault("connect_timeout", TIMEOUT)
        self.conn = kombu.Connection(URL, **kw)

    def __enter__(self):
        self.conn.connect()
        return self.conn

    def __exit__(self, *exc):
        try:
            self.conn.release()
        except Exception:  # noqa: BLE001
            pass


def count(conn, q):
    ch = conn.channel()
    try:
        return ch.queue_declare(queue=q, passive=True).message_count
    finally:
        ch.close()


def drain_until(conn, done, secs=TIMEOUT):
    """Process incoming frames until done() or secs pass."""
    end = time.monotonic() + secs
    while not done() and time.monotonic() < end:
        try:
            conn.drain_events(timeout=0.1)
        except socket.timeout:
            pass
    return done()


def get_within(queue, secs=TIMEOUT):
    end = time.monotonic() + secs
    while True:
        m = queue.get(no_ack=True)
        if m is not None or time.monotonic() > end:
            return m
        time.sleep(0.02)


def scenario_basic():
    with Conn() as conn:
        ch = conn.channel()
        queue = Queue(unique("kombu-consume"), channel=ch, durable=False)
        queue.declare()
        producer = Producer(ch)
        n = 20
        for i in range(n):
            producer.publish({"n": i}, routing_key=queue.name, serializer="json")
        got = []

        def on_message(body, message):
            got.append(body["n"])
            message.ack()

        with kombu.Consumer(ch, queues=[queue], callbacks=[on_message], accept=["json"], prefetch_count=5):
            drain_until(conn, lambda: len(got) == n)
        check(got == list(range(n)), "consumed %r" % got)
        ch.close()
        check(count(conn, queue.name) == 0, "messages back in the queue after acking all")
        # An unacked delivery comes back, marked redelivered.
        ch = conn.channel()
        Producer(ch).publish(b"again", routing_key=queue.name)
        seen = []
        with kombu.Consumer(ch, queues=[queue(ch)], callbacks=[lambda b, m: seen.append(m)], accept=None):
            drain_until(conn, lambda: seen)
        check(seen and seen[0].body == b"again", "got %r" % seen)
        ch.close()
        ch = conn.channel()
        m = queue(ch).get(no_ack=True)
        check(m is not None, "the unacked message was not requeued")
        check(m.delivery_info.get("redelivered"), "the requeued message is not marked redelivered")
        queue(ch).delete()


def scenario_confirms():
    with Conn(transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        queue = Queue(unique("kombu-confirm"), channel=ch)
        queue.declare()
        producer = Producer(ch)
        n = 50
        # With confirm_publish, py-amqp waits for basic.ack after each publish
        # (and raises MessageNacked on basic.nack).
        for i in range(n):
            producer.publish(b"message %d" % i, routing_key=queue.name, delivery_mode=2)
        check(count(conn, queue.name) == n, "queue has %d messages" % count(conn, queue.name))
        queue.delete()


def scenario_mandatory():
    with Conn() as conn:
        ch = conn.channel()
        returned = []

        def on_return(exception, exchange, routing_key, message):
            returned.append((exception, message))

        producer = Producer(ch, on_return=on_return)
        producer.publish(b"nowhere", routing_key=unique("kombu-no-such-queue"), mandatory=True)
        drain_until(conn, lambda: returned)
        check(len(returned) == 1, "%d returned messages" % len(returned))
        exc, message = returned[0]
        check(getattr(exc, "reply_code", None) == 312, "return %r" % (exc,))
        check(exc.reply_text == "NO_ROUTE", "return reply text %r" % exc.reply_text)
        check(message.body == b"nowhere", "returned body %r" % message.body)


def dlx_queues(ch, prefix, **extra):
    name = unique(prefix)
    dlq = Queue(name + "-dead", channel=ch)
    dlq.declare()
    q = Queue(name, channel=ch, queue_arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq.name})
    q.declare()
    return q, dlq


def scenario_dlx():
    with Conn() as conn:
        ch = conn.channel()
        q, dlq = dlx_queues(ch, "kombu-dlx")
        Producer(ch).publish(b"reject me", routing_key=q.name, headers={"h": "v"})
        m = None
        end = time.monotonic() + TIMEOUT
        while m is None and time.monotonic() < end:
            m = q.get()
        check(m is not None, "nothing to reject")
        m.reject(requeue=False)
        dead = get_within(dlq)
        check(dead is not None, "nothing in the dead-letter queue")
        check(dead.body == b"reject me", "dead-lettered body %r" % dead.body)
        check(text(dead.headers.get("h")) == "v", "headers lost: %r" % dead.headers)
        check_x_death(dead.headers, "rejected", q.name)
        check(count(conn, q.name) == 0, "the rejected message is still in the queue")
        q.delete()
        dlq.delete()


def scenario_ttl():
    with Conn() as conn:
        ch = conn.channel()
        q, dlq = dlx_queues(ch, "kombu-ttl")
        producer = Producer(ch)
        producer.publish(b"short", routing_key=q.name, expiration=0.2)
        producer.publish(b"long", routing_key=q.name, expiration=60)
        time.sleep(0.6)
        m = q.get(no_ack=True)
        check(m is not None, "the unexpired message was not delivered")
        check(m.body == b"long", "got %r: the expired message was delivered" % m.body)
        m = q.get(no_ack=True)
        check(m is None, "a second message %r was delivered" % (m and m.body))
        dead = get_within(dlq)
        check(dead is not None, "the expired message was not dead-lettered")
        check(dead.body == b"short", "dead-lettered %r" % dead.body)
        check_x_death(dead.headers, "expired", q.name, original_expiration="200")
        check("expiration" not in dead.properties,
              "the dead-lettered message still has expiration %r" % dead.properties.get("expiration"))
        q.delete()
        dlq.delete()


def scenario_cancel():
    with Conn() as conn:
        ch = conn.channel()
        q = unique("kombu-cancel")
        ch.queue_declare(queue=q, auto_delete=False)
        cancelled = []
        # py-amqp's on_cancel: called on a basic.cancel from the broker.
        tag = ch.basic_consume(queue=q, callback=lambda m: None, on_cancel=cancelled.append)
        other = conn.channel()
        other.queue_delete(queue=q)
        drain_until(conn, lambda: cancelled)
        check(cancelled == [tag], "cancel notifications %r, expected [%r]" % (cancelled, tag))
        check(ch.is_open, "the consumer's channel was closed")


def scenario_large():
    with Conn(transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        queue = Queue(unique("kombu-large"), channel=ch, durable=True)
        queue.declare()
        body = large_body()
        # Persistent into a durable queue: confirmed once on disk.
        Producer(ch).publish(body, routing_key=queue.name, delivery_mode=2)
        got = []
        with kombu.Consumer(ch, queues=[queue], callbacks=[lambda b, m: (got.append(m.body), m.ack())], accept=None):
            drain_until(conn, lambda: got)
        check(got, "no delivery within %ss" % TIMEOUT)
        check(len(got[0]) == len(body), "got %d bytes of %d" % (len(got[0]), len(body)))
        check(got[0] == body, "the body differs")
        queue.delete()


def scenario_heartbeat():
    with Conn(heartbeat=HEARTBEAT) as conn:
        raw = conn.connection  # the py-amqp connection
        check(raw.heartbeat == HEARTBEAT, "negotiated heartbeat %r, asked %d" % (raw.heartbeat, HEARTBEAT))
        ch = conn.channel()

        def pump(secs):
            # What a kombu consumer loop does: drain with a timeout and call
            # heartbeat_check (it sends ours and raises if the broker's stop).
            try:
                conn.drain_events(timeout=secs)
            except socket.timeout:
                pass
            conn.heartbeat_check(rate=2)

        # raw.bytes_recv counts the frames received, heartbeats included.
        gaps = idle_watch(lambda: raw.bytes_recv, pump, "frames received")
        check_heartbeat_gaps(gaps)
        q = Queue(unique("kombu-hb"), channel=ch)
        q.declare()
        Producer(ch).publish(b"alive", routing_key=q.name)
        m = get_within(q)
        check(m is not None and m.body == b"alive", "round trip after idling failed")
        q.delete()


def scenario_tx():
    with Conn() as conn:
        ch = conn.channel()
        q = unique("kombu-tx")
        ch.queue_declare(queue=q, auto_delete=False)
        ch.tx_select()
        ch.basic_publish(amqp.Message(b"committed"), exchange="", routing_key=q)
        check(count(conn, q) == 0, "published in a transaction, visible before commit")
        ch.tx_commit()
        check(count(conn, q) == 1, "after commit the queue has %d messages" % count(conn, q))
        ch.basic_publish(amqp.Message(b"rolled back"), exchange="", routing_key=q)
        ch.tx_rollback()
        check(count(conn, q) == 1, "after rollback the queue has %d messages" % count(conn, q))
        m = ch.basic_get(queue=q, no_ack=False)
        check(m is not None and m.body == b"committed", "got %r" % (m and m.body))
        ch.basic_ack(m.delivery_tag)
        ch.tx_commit()
        ch.close()
        check(count(conn, q) == 0, "after committing the ack the queue has messages")
        conn.channel().queue_delete(queue=q)


def scenario_delayed():
    with Conn() as conn:
        ch = conn.channel()
        name = unique("kombu-delayed")
        ex = Exchange(name, type="x-delayed-message", arguments={"x-delayed-type": "direct"}, channel=ch)
        try:
            ex.declare()
        except amqp.exceptions.AMQPError as e:
            if delayed_unsupported(e.reply_code, e.reply_text):
                raise Skip(SKIP_DELAYED)
            raise
        q = Queue(name, exchange=ex, routing_key="k", channel=ch)
        q.declare()
        t0 = time.monotonic()
        Producer(ch, exchange=ex).publish(b"later", routing_key="k", headers={"x-delay": DELAY_MS})
        m = q.get(no_ack=True)
        check(m is None, "the delayed message was there at once")
        m = get_within(q, secs=5)
        took = time.monotonic() - t0
        check(m is not None, "the delayed message did not arrive within 5 s")
        check(m.body == b"later", "got %r" % m.body)
        check(took >= DELAY_MS / 1000 - 0.05, "arrived after %.3fs, before its %d ms delay" % (took, DELAY_MS))
        check(took <= DELAY_MS / 1000 + 1.5, "arrived after %.3fs for a %d ms delay" % (took, DELAY_MS))
        q.delete()
        ex.delete()


def scenario_celery():
    """A real worker (`celery -A tasks worker`, default settings but one
    process) runs tasks sent through the broker; results come back through
    the rpc:// backend, i.e. over AMQP too."""
    state = os.environ.get("INTEROP_CELERY", "")
    if state.startswith("skip"):
        raise Skip(state[len("skip"):].strip(" ()"))
    os.environ["INTEROP_CELERY_QUEUE"] = unique("celery")
    sys.path.insert(0, os.path.join(HERE, "celery_app"))
    import celery.exceptions
    from tasks import add, app, concat, fail

    celery_bin = os.path.join(os.path.dirname(sys.executable), "celery")
    logs = os.environ.get("INTEROP_LOGS")
    if logs:  # run.sh's log directory: keep the worker's log there
        log = open(os.path.join(logs, "kombu.celery-worker.log"), "w+b")
    else:
        log = tempfile.NamedTemporaryFile(prefix="celery-worker-", suffix=".log", delete=False)
    worker = subprocess.Popen(
        [celery_bin, "-A", "tasks", "worker", "--loglevel=INFO", "--concurrency=1",
         "--hostname", "interop-%d@%%h" % os.getpid()],
        cwd=os.path.join(HERE, "celery_app"), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, env=dict(os.environ),
    )
    ok = False
    try:
        # The worker needs a few seconds to start; the tasks wait in the queue.
        r = add.delay(2, 3)
        check(r.get(timeout=60) == 5, "add(2, 3) returned %r" % r.result)
        check(r.state == "SUCCESS", "state %r" % r.state)
        big = ["x" * 1000] * 100
        check(concat.delay(big).get(timeout=TIMEOUT) == "".join(big), "concat returned something else")
        r = fail.delay("on purpose")
        try:
            r.get(timeout=TIMEOUT)
            raise AssertionError("a failing task returned %r" % r.result)
        except ValueError as e:
            check(str(e) == "on purpose", "the task's error came back as %r" % e)
        except celery.exceptions.TimeoutError:
            raise AssertionError("no result for the failing task within %ss" % TIMEOUT)
        check(r.state == "FAILURE", "state %r" % r.state)
        ok = True
    except celery.exceptions.TimeoutError:
        raise AssertionError("no task result within the timeout (worker log: %s)" % log.name)
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        app.close()
        log.close()
        with open(log.name, errors="replace") as f:
            out = f.read()
        if not ok:
            print("--- celery worker log:\n" + out[-6000:], file=sys.stderr)
        if not logs:
            os.unlink(log.name)
        ch_conn = kombu.Connection(URL, connect_timeout=TIMEOUT)
        try:
            # The worker declared a queue and a direct exchange of that name.
            cleanup = ch_conn.channel()
            cleanup.queue_delete(queue=os.environ["INTEROP_CELERY_QUEUE"])
            cleanup.exchange_delete(exchange=os.environ["INTEROP_CELERY_QUEUE"])
        except Exception:  # noqa: BLE001
            pass
        finally:
            ch_conn.release()
    check(worker.returncode == 0, "the worker exited with status %r on SIGTERM" % worker.returncode)
    errors = [line for line in out.splitlines()
              if ("ERROR" in line or "CRITICAL" in line) and "on purpose" not in line]
    check(not errors, "the worker logged errors: %s" % " | ".join(errors[:3]))


SCENARIOS = [
    ("basic", scenario_basic),
    ("confirms", scenario_confirms),
    ("mandatory", scenario_mandatory),
    ("dlx", scenario_dlx),
    ("ttl", scenario_ttl),
    ("cancel", scenario_cancel),
    ("large", scenario_large),
    ("heartbeat", scenario_heartbeat),
    ("tx", scenario_tx),
    ("delayed", scenario_delayed),
    ("celery", scenario_celery),
]

if __name__ == "__main__":
    main_guard(lambda: run_all("kombu", SCENARIOS))
