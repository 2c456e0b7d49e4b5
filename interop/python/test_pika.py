#!/usr/bin/env python3
"""The interop matrix's scenarios with pika's BlockingConnection.

Usage: INTEROP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 test_pika.py
(interop/run.sh sets it up and runs it). Prints "RESULT <id> pass|fail|skip
<why>" per scenario; see interop_common.py.
"""

import os
import ssl
import time

import pika
import pika.exceptions

from interop_common import (
    DELAY_MS, HEARTBEAT, SKIP_DELAYED, TIMEOUT, URL, Skip, check, check_heartbeat_gaps,
    check_x_death, delayed_unsupported, idle_watch, large_body, main_guard, run_all, text, unique,
)


def connect(**kw):
    params = pika.URLParameters(URL)
    if URL.startswith("amqps://"):
        # Trust only the CA the run made (INTEROP_TLS_CA), checking the
        # server's name against its certificate.
        ctx = ssl.create_default_context(cafile=os.environ.get("INTEROP_TLS_CA") or None)
        params.ssl_options = pika.SSLOptions(ctx, params.host)
    params.socket_timeout = TIMEOUT
    params.stack_timeout = TIMEOUT
    params.blocked_connection_timeout = TIMEOUT
    params.connection_attempts = 3
    params.retry_delay = 0.5
    for k, v in kw.items():
        setattr(params, k, v)
    return pika.BlockingConnection(params)


class Conn:
    """A connection closed at the end of a with block."""

    def __init__(self, **kw):
        self.conn = connect(**kw)

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        if self.conn.is_open:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass


def count(conn, q):
    """Ready messages in q, seen from a fresh channel."""
    ch = conn.channel()
    n = ch.queue_declare(queue=q, passive=True).method.message_count
    ch.close()
    return n


def get_within(conn, ch, q, secs=TIMEOUT):
    """basic.get (auto-ack) until a message comes, at most secs."""
    end = time.monotonic() + secs
    while True:
        method, props, body = ch.basic_get(queue=q, auto_ack=True)
        if method is not None or time.monotonic() > end:
            return method, props, body
        conn.sleep(0.02)


def scenario_basic():
    with Conn() as conn:
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
        check(count(conn, q) == 0, "%d messages back in the queue after acking all" % count(conn, q))
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


def scenario_confirms():
    with Conn() as conn:
        ch = conn.channel()
        q = unique("pika-confirm")
        ch.queue_declare(queue=q, durable=True)
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
        check(count(conn, q) == n, "queue has %d messages, expected %d" % (count(conn, q), n))
        ch.queue_delete(queue=q)


def scenario_mandatory():
    with Conn() as conn:
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
            check(msgs[0].method.reply_text == "NO_ROUTE", "return reply text %r" % msgs[0].method.reply_text)
        # Not mandatory: confirmed and silently dropped.
        ch.basic_publish(exchange="", routing_key=unique("pika-no-such-queue"), body=b"dropped")
        check(ch.is_open, "channel closed after an unroutable publish")


def dlx_queues(ch, prefix, **extra):
    q = unique(prefix)
    dlq = q + "-dead"
    ch.queue_declare(queue=dlq)
    args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    args.update(extra)
    ch.queue_declare(queue=q, arguments=args)
    return q, dlq


def scenario_dlx():
    with Conn() as conn:
        ch = conn.channel()
        q, dlq = dlx_queues(ch, "pika-dlx")
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=q, body=b"reject me",
                         properties=pika.BasicProperties(headers={"h": "v"}))
        for method, props, body in ch.consume(queue=q, inactivity_timeout=TIMEOUT):
            check(method is not None, "no delivery within %ss" % TIMEOUT)
            ch.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
            break
        ch.cancel()
        method, props, body = get_within(conn, ch, dlq)
        check(method is not None, "nothing in the dead-letter queue")
        check(body == b"reject me", "dead-lettered body %r" % body)
        check(text((props.headers or {}).get("h")) == "v", "headers lost: %r" % props.headers)
        check_x_death(props.headers, "rejected", q)
        check(count(conn, q) == 0, "the rejected message is still in %s" % q)
        ch.queue_delete(queue=q)
        ch.queue_delete(queue=dlq)


def scenario_ttl():
    with Conn() as conn:
        ch = conn.channel()
        q, dlq = dlx_queues(ch, "pika-ttl")
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=q, body=b"short",
                         properties=pika.BasicProperties(expiration="200"))
        ch.basic_publish(exchange="", routing_key=q, body=b"long",
                         properties=pika.BasicProperties(expiration="60000"))
        conn.sleep(0.6)
        method, props, body = ch.basic_get(queue=q, auto_ack=True)
        check(method is not None, "the unexpired message was not delivered")
        check(body == b"long", "got %r: the expired message was delivered" % body)
        method, props, body = ch.basic_get(queue=q, auto_ack=True)
        check(method is None, "a second message %r was delivered" % body)
        method, props, body = get_within(conn, ch, dlq)
        check(method is not None, "the expired message was not dead-lettered")
        check(body == b"short", "dead-lettered %r" % body)
        check_x_death(props.headers, "expired", q, original_expiration="200")
        check(props.expiration is None, "the dead-lettered message still has expiration %r" % props.expiration)
        ch.queue_delete(queue=q)
        ch.queue_delete(queue=dlq)


def scenario_cancel():
    with Conn() as conn:
        ch = conn.channel()
        q = unique("pika-cancel")
        ch.queue_declare(queue=q)
        cancelled = []
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        tag = ch.basic_consume(queue=q, on_message_callback=lambda *a: None)
        other = conn.channel()
        other.queue_delete(queue=q)
        deadline = time.monotonic() + TIMEOUT
        while not cancelled and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        check(cancelled == [tag], "cancel notifications %r, expected [%r]" % (cancelled, tag))
        check(ch.is_open, "the consumer's channel was closed")
        ch.close()


def scenario_large():
    with Conn() as conn:
        ch = conn.channel()
        q = unique("pika-large")
        ch.queue_declare(queue=q, durable=True)
        ch.confirm_delivery()
        body = large_body()
        # Persistent into a durable queue: confirmed once on disk.
        ch.basic_publish(exchange="", routing_key=q, body=body, properties=pika.BasicProperties(delivery_mode=2))
        for method, props, got in ch.consume(queue=q, inactivity_timeout=TIMEOUT):
            check(method is not None, "no delivery within %ss" % TIMEOUT)
            check(len(got) == len(body), "got %d bytes of %d" % (len(got), len(body)))
            check(got == body, "the body differs")
            ch.basic_ack(method.delivery_tag)
            break
        ch.cancel()
        ch.queue_delete(queue=q)


def scenario_heartbeat():
    with Conn(heartbeat=HEARTBEAT) as conn:
        negotiated = conn._impl.params.heartbeat
        check(negotiated == HEARTBEAT, "negotiated heartbeat %r, asked %d" % (negotiated, HEARTBEAT))
        ch = conn.channel()
        # sleep() runs pika's I/O loop, which sends our heartbeats and reads
        # the broker's; nothing else goes over the connection meanwhile.
        gaps = idle_watch(lambda: conn._impl.bytes_received, conn.sleep, "bytes received")
        check(conn.is_open, "connection closed during the idle period")
        check_heartbeat_gaps(gaps)
        q = unique("pika-hb")
        ch.queue_declare(queue=q)
        ch.basic_publish(exchange="", routing_key=q, body=b"alive")
        method, _, body = get_within(conn, ch, q)
        check(body == b"alive", "round trip after idling got %r" % body)
        ch.queue_delete(queue=q)


def scenario_tx():
    with Conn() as conn:
        ch = conn.channel()
        q = unique("pika-tx")
        ch.queue_declare(queue=q)
        ch.tx_select()
        ch.basic_publish(exchange="", routing_key=q, body=b"committed")
        check(count(conn, q) == 0, "published in a transaction, visible before commit")
        ch.tx_commit()
        check(count(conn, q) == 1, "after commit the queue has %d messages" % count(conn, q))
        ch.basic_publish(exchange="", routing_key=q, body=b"rolled back")
        ch.tx_rollback()
        check(count(conn, q) == 1, "after rollback the queue has %d messages" % count(conn, q))
        method, _, body = ch.basic_get(queue=q, auto_ack=False)
        check(body == b"committed", "got %r" % body)
        ch.basic_ack(method.delivery_tag)
        ch.tx_commit()
        # Closing the channel would requeue the message if the ack had not taken.
        ch.close()
        check(count(conn, q) == 0, "after committing the ack the queue has %d messages" % count(conn, q))
        conn.channel().queue_delete(queue=q)


def scenario_delayed():
    with Conn() as conn:
        ch = conn.channel()
        ex = unique("pika-delayed")
        try:
            ch.exchange_declare(exchange=ex, exchange_type="x-delayed-message",
                                arguments={"x-delayed-type": "direct"})
        except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as e:
            # RabbitMQ without the plugin: 503 COMMAND_INVALID, a connection error.
            if delayed_unsupported(e.reply_code, e.reply_text):
                raise Skip(SKIP_DELAYED)
            raise
        q = unique("pika-delayed")
        ch.queue_declare(queue=q)
        ch.queue_bind(queue=q, exchange=ex, routing_key="k")
        t0 = time.monotonic()
        ch.basic_publish(exchange=ex, routing_key="k", body=b"later",
                         properties=pika.BasicProperties(headers={"x-delay": DELAY_MS}))
        method, _, _ = ch.basic_get(queue=q, auto_ack=True)
        check(method is None, "the delayed message was there at once")
        method, _, body = get_within(conn, ch, q, secs=5)
        took = time.monotonic() - t0
        check(method is not None, "the delayed message did not arrive within 5 s")
        check(body == b"later", "got %r" % body)
        check(took >= DELAY_MS / 1000 - 0.05, "arrived after %.3fs, before its %d ms delay" % (took, DELAY_MS))
        check(took <= DELAY_MS / 1000 + 1.5, "arrived after %.3fs for a %d ms delay" % (took, DELAY_MS))
        ch.queue_delete(queue=q)
        ch.exchange_delete(exchange=ex)


def scenario_declare():
    with Conn() as conn:
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


def scenario_get():
    with Conn() as conn:
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
        check(text(hv.get("k")) == "v" and hv.get("n") == 42, "headers %r" % hv)
        ch.basic_ack(method.delivery_tag)
        method, _, body = ch.basic_get(queue=q, auto_ack=True)
        check(method is not None and body == b"second", "second get returned %r" % body)
        method, _, _ = ch.basic_get(queue=q)
        check(method is None, "queue not empty after two gets")
        ch.queue_delete(queue=q)


def scenario_replyto():
    """RPC over direct reply-to: the requester consumes amq.rabbitmq.reply-to
    (no-ack) and names it as reply_to; a responder on another connection
    answers to the reply_to the broker put there; the replies come back to
    the requester with their correlation ids and are never queued."""
    rt = "amq.rabbitmq.reply-to"
    q = unique("pika-rpc")
    with Conn() as req_conn, Conn() as resp_conn:
        req = req_conn.channel()
        replies = []
        req.basic_consume(queue=rt, auto_ack=True,
                          on_message_callback=lambda c, m, p, b: replies.append((m, p, b)))
        resp = resp_conn.channel()
        resp.queue_declare(queue=q)
        seen_reply_to = []

        def on_request(chan, method, props, body):
            seen_reply_to.append(props.reply_to)
            chan.basic_publish(exchange="", routing_key=props.reply_to, body=b"re: " + body,
                               properties=pika.BasicProperties(correlation_id=props.correlation_id))
            chan.basic_ack(method.delivery_tag)

        resp.basic_consume(queue=q, on_message_callback=on_request)
        n = 3
        for i in range(n):
            req.basic_publish(exchange="", routing_key=q, body=("call %d" % i).encode(),
                              properties=pika.BasicProperties(reply_to=rt, correlation_id="corr-%d" % i))
        end = time.monotonic() + TIMEOUT
        while len(replies) < n and time.monotonic() < end:
            resp_conn.process_data_events(time_limit=0.02)
            req_conn.process_data_events(time_limit=0.02)
        check(len(replies) == n, "%d of %d replies arrived" % (len(replies), n))
        for i, (method, props, body) in enumerate(replies):
            check(body == ("re: call %d" % i).encode(), "reply %d body %r" % (i, body))
            check(props.correlation_id == "corr-%d" % i, "reply %d correlation_id %r" % (i, props.correlation_id))
            check(method.routing_key == seen_reply_to[i], "reply %d routing key %r" % (i, method.routing_key))
        check(all(r.startswith(rt + ".") for r in seen_reply_to),
              "the broker did not name the channel in reply_to: %r" % seen_reply_to)
        check(len(set(seen_reply_to)) == 1, "one channel, one reply_to: %r" % seen_reply_to)
        check(count(resp_conn, q) == 0, "requests left in the queue")
        # Consuming the pseudo-queue with acks is refused (406).
        try:
            req_conn.channel().basic_consume(queue=rt, on_message_callback=lambda *a: None)
            raise AssertionError("an acking consumer of amq.rabbitmq.reply-to was accepted")
        except pika.exceptions.ChannelClosedByBroker as e:
            check(e.reply_code == 406, "expected 406, got %d %s" % (e.reply_code, e.reply_text))
        resp.queue_delete(queue=q)


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
    ("declare", scenario_declare),
    ("get", scenario_get),
    ("replyto", scenario_replyto),
]

if __name__ == "__main__":
    main_guard(lambda: run_all("pika", SCENARIOS))
