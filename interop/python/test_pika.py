#!/usr/bin/env python3
"""Interop checks for Lepus with pika's BlockingConnection.

Usage: LEPUS_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 test_pika.py

Each scenario runs on its own connection and prints one line, "PASS name"
or "FAIL name: reason". The last line is "pika: N passed, M failed"; the
exit code is non-zero when anything failed. tests/interop_pika.rs runs this
against a test broker.
"""

import os
import sys
import time
import traceback
import uuid

import pika
import pika.exceptions

URL = os.environ.get("LEPUS_URL")
# Every wait in here is bounded; the Rust side bounds the whole run too.
TIMEOUT = 10.0


def connect():
    params = pika.URLParameters(URL)
    params.socket_timeout = TIMEOUT
    params.stack_timeout = TIMEOUT
    params.blocked_connection_timeout = TIMEOUT
    params.connection_attempts = 3
    params.retry_delay = 0.5
    return pika.BlockingConnection(params)


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def scenario_declare_queue(conn):
    ch = conn.channel()
    q = unique("pika-declare")
    ok = ch.queue_declare(queue=q)
    check(ok.method.queue == q, "declare-ok names queue %r, got %r" % (q, ok.method.queue))
    check(ok.method.message_count == 0, "new queue has %d messages" % ok.method.message_count)
    check(ok.method.consumer_count == 0, "new queue has %d consumers" % ok.method.consumer_count)
    # Passive re-declare sees the same queue.
    ok = ch.queue_declare(queue=q, passive=True)
    check(ok.method.queue == q, "passive declare-ok names %r" % ok.method.queue)
    # A server-named queue.
    ok = ch.queue_declare(queue="", exclusive=True)
    check(ok.method.queue.startswith("amq.gen-"), "server-named queue %r" % ok.method.queue)
    # Passive declare of a missing queue closes the channel with 404.
    try:
        ch.queue_declare(queue=unique("pika-missing"), passive=True)
        raise AssertionError("passive declare of a missing queue succeeded")
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 404, "expected 404, got %d %s" % (e.reply_code, e.reply_text))
    check(conn.is_open, "the connection survives a channel error")
    ch = conn.channel()
    ch.queue_delete(queue=q)


def scenario_publish_with_confirms(conn):
    ch = conn.channel()
    q = unique("pika-confirm")
    ch.queue_declare(queue=q)
    ch.confirm_delivery()
    n = 50
    for i in range(n):
        # With confirms on, basic_publish waits for the broker's ack and
        # raises NackError / UnroutableError otherwise.
        ch.basic_publish(
            exchange="",
            routing_key=q,
            body=("message %d" % i).encode(),
            properties=pika.BasicProperties(delivery_mode=2, content_type="text/plain"),
            mandatory=True,
        )
    ok = ch.queue_declare(queue=q, passive=True)
    check(ok.method.message_count == n, "queue has %d messages, expected %d" % (ok.method.message_count, n))
    ch.queue_delete(queue=q)


def scenario_consume_and_ack(conn):
    ch = conn.channel()
    q = unique("pika-consume")
    ch.queue_declare(queue=q)
    ch.confirm_delivery()
    n = 20
    for i in range(n):
        ch.basic_publish(exchange="", routing_key=q, body=("m%d" % i).encode())
    ch.basic_qos(prefetch_count=5)
    got = []

    def on_message(chan, method, props, body):
        got.append(body)
        chan.basic_ack(delivery_tag=method.delivery_tag)

    tag = ch.basic_consume(queue=q, on_message_callback=on_message)
    deadline = time.monotonic() + TIMEOUT
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
    ch.basic_cancel(tag)
    check(len(got) == n, "consumed %d of %d messages" % (len(got), n))
    check(got == [("m%d" % i).encode() for i in range(n)], "messages out of order: %r" % got[:5])
    # The acks took: closing the channel requeues nothing.
    ch.close()
    ch = conn.channel()
    ok = ch.queue_declare(queue=q, passive=True)
    check(ok.method.message_count == 0, "%d messages back in the queue after acking all" % ok.method.message_count)
    # An unacked delivery does come back, marked redelivered.
    ch.basic_publish(exchange="", routing_key=q, body=b"again")
    for method, props, body in ch.consume(queue=q, inactivity_timeout=TIMEOUT):
        check(method is not None, "no delivery within %ss" % TIMEOUT)
        check(body == b"again", "got %r" % body)
        break
    ch.close()
    ch = conn.channel()
    method, props, body = ch.basic_get(queue=q, auto_ack=True)
    check(method is not None, "the unacked message was not requeued")
    check(method.redelivered, "the requeued message is not marked redelivered")
    ch.queue_delete(queue=q)


def scenario_basic_get(conn):
    ch = conn.channel()
    q = unique("pika-get")
    ch.queue_declare(queue=q)
    method, props, body = ch.basic_get(queue=q)
    check(method is None, "basic.get on an empty queue returned a message")
    props = pika.BasicProperties(
        content_type="application/json",
        correlation_id="corr-1",
        headers={"k": "v", "n": 42},
        delivery_mode=2,
        priority=3,
        message_id="id-1",
    )
    ch.confirm_delivery()
    ch.basic_publish(exchange="", routing_key=q, body=b'{"a": 1}', properties=props)
    ch.basic_publish(exchange="", routing_key=q, body=b"second")
    method, got, body = ch.basic_get(queue=q)
    check(method is not None, "basic.get returned nothing")
    check(body == b'{"a": 1}', "body %r" % body)
    check(method.message_count == 1, "message_count %d, expected 1" % method.message_count)
    check(method.redelivered is False, "redelivered on first get")
    check(got.content_type == "application/json", "content_type %r" % got.content_type)
    check(got.correlation_id == "corr-1", "correlation_id %r" % got.correlation_id)
    check(got.message_id == "id-1", "message_id %r" % got.message_id)
    check(got.delivery_mode == 2, "delivery_mode %r" % got.delivery_mode)
    check(got.priority == 3, "priority %r" % got.priority)
    hv = got.headers or {}
    check(hv.get("k") in ("v", b"v") and hv.get("n") == 42, "headers %r" % hv)
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get(queue=q, auto_ack=True)
    check(method is not None and body == b"second", "second get returned %r" % body)
    method, _, _ = ch.basic_get(queue=q)
    check(method is None, "queue not empty after two gets")
    ch.queue_delete(queue=q)


def scenario_mandatory_unroutable(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    try:
        ch.basic_publish(
            exchange="",
            routing_key=unique("pika-no-such-queue"),
            body=b"nowhere",
            mandatory=True,
        )
        raise AssertionError("mandatory publish to an unroutable key did not raise UnroutableError")
    except pika.exceptions.UnroutableError as e:
        msgs = e.messages
        check(len(msgs) == 1, "%d returned messages" % len(msgs))
        check(msgs[0].body == b"nowhere", "returned body %r" % msgs[0].body)
        check(msgs[0].method.reply_code == 312, "return reply code %r" % msgs[0].method.reply_code)
    # Not mandatory: confirmed and silently dropped.
    ch.basic_publish(exchange="", routing_key=unique("pika-no-such-queue"), body=b"dropped")
    check(ch.is_open, "channel closed after an unroutable publish")


SCENARIOS = [
    ("declare queue", scenario_declare_queue),
    ("publish with confirms", scenario_publish_with_confirms),
    ("consume and basic.ack", scenario_consume_and_ack),
    ("basic.get", scenario_basic_get),
    ("mandatory unroutable publish raises UnroutableError", scenario_mandatory_unroutable),
]


def main():
    if not URL:
        print("LEPUS_URL is not set", file=sys.stderr)
        return 2
    passed = failed = 0
    for name, fn in SCENARIOS:
        conn = None
        try:
            conn = connect()
            fn(conn)
            print("PASS %s" % name, flush=True)
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            print("FAIL %s: %s: %s" % (name, type(e).__name__, e), flush=True)
            traceback.print_exc(file=sys.stderr)
            failed += 1
        finally:
            if conn is not None and conn.is_open:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
    print("pika: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
