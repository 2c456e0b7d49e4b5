#!/usr/bin/env python3
"""The interop matrix's scenarios with aio-pika (asyncio, on aiormq).

Usage: INTEROP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 test_aio_pika.py
Prints "RESULT <id> pass|fail|skip <why>" per scenario; see interop_common.py.
"""

import asyncio
import time

import aio_pika
import aio_pika.exceptions
import aiormq.channel
import aiormq.connection
import aiormq.exceptions

from interop_common import (
    DELAY_MS, HEARTBEAT, SKIP_DELAYED, TIMEOUT, URL, Skip, check, check_heartbeat_gaps,
    check_x_death, delayed_unsupported, large_body, main_guard, run_all, text, unique,
)


def reply_code(e):
    """The AMQP reply code behind an aiormq close exception (aiormq maps
    codes to exception classes)."""
    for mapping in (aiormq.connection.EXCEPTION_MAPPING, aiormq.channel.EXCEPTION_MAPPING):
        for code, cls in mapping.items():
            if type(e) is cls:
                return code
    if e.args and isinstance(e.args[0], int):
        return e.args[0]
    return None


def with_query(url, **params):
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join("%s=%s" % kv for kv in params.items())


class Conn:
    """async with Conn() as conn: a plain (not robust) connection, so that a
    broker error shows up instead of being recovered from."""

    def __init__(self, **params):
        self.url = with_query(URL, **params) if params else URL
        self.conn = None

    async def __aenter__(self):
        self.conn = await aio_pika.connect(self.url, timeout=TIMEOUT)
        return self.conn

    async def __aexit__(self, *exc):
        if self.conn is not None and not self.conn.is_closed:
            try:
                await asyncio.wait_for(self.conn.close(), TIMEOUT)
            except Exception:  # noqa: BLE001
                pass


async def count(conn, q):
    ch = await conn.channel()
    queue = await ch.declare_queue(q, passive=True)
    n = queue.declaration_result.message_count
    await ch.close()
    return n


async def get_within(queue, secs=TIMEOUT, no_ack=True):
    end = time.monotonic() + secs
    while True:
        msg = await queue.get(no_ack=no_ack, fail=False, timeout=TIMEOUT)
        if msg is not None or time.monotonic() > end:
            return msg
        await asyncio.sleep(0.02)


async def next_message(queue, secs=TIMEOUT):
    """The first message a consumer gets (unacked)."""
    async with queue.iterator() as it:
        return await asyncio.wait_for(it.__anext__(), secs)


async def scenario_basic():
    async with Conn() as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=5)
        queue = await ch.declare_queue(unique("aiopika-consume"))
        n = 20
        for i in range(n):
            await ch.default_exchange.publish(aio_pika.Message(b"m%d" % i), routing_key=queue.name)
        got = []
        async with queue.iterator() as it:
            async for msg in it:
                got.append(msg.body)
                await msg.ack()
                if len(got) == n:
                    break
        check(got == [b"m%d" % i for i in range(n)], "consumed %r" % got[:5])
        await ch.close()
        check(await count(conn, queue.name) == 0, "messages back in the queue after acking all")
        ch = await conn.channel()
        queue = await ch.declare_queue(queue.name, passive=True)
        await ch.default_exchange.publish(aio_pika.Message(b"again"), routing_key=queue.name)
        msg = await next_message(queue)
        check(msg.body == b"again", "got %r" % msg.body)
        await ch.close()  # unacked: requeued
        ch = await conn.channel()
        queue = await ch.declare_queue(queue.name, passive=True)
        msg = await queue.get(no_ack=True, fail=False)
        check(msg is not None, "the unacked message was not requeued")
        check(msg.redelivered, "the requeued message is not marked redelivered")
        await queue.delete(if_unused=False, if_empty=False)


async def scenario_confirms():
    async with Conn() as conn:
        ch = await conn.channel(publisher_confirms=True)
        queue = await ch.declare_queue(unique("aiopika-confirm"), durable=True)
        n = 50
        confirms = [
            ch.default_exchange.publish(
                aio_pika.Message(b"message %d" % i, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name,
            )
            for i in range(n)
        ]
        results = await asyncio.wait_for(asyncio.gather(*confirms), TIMEOUT)
        acks = [r for r in results if isinstance(r, aiormq.spec.Basic.Ack)]
        check(len(acks) == n, "%d of %d publishes acked: %r" % (len(acks), n, results[:3]))
        check(await count(conn, queue.name) == n, "queue has %d messages" % await count(conn, queue.name))
        await queue.delete(if_unused=False, if_empty=False)


async def scenario_mandatory():
    async with Conn() as conn:
        ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await ch.default_exchange.publish(
                aio_pika.Message(b"nowhere"), routing_key=unique("aiopika-no-such-queue"), mandatory=True,
                timeout=TIMEOUT,
            )
            raise AssertionError("mandatory publish to an unroutable key was not returned")
        except aio_pika.exceptions.DeliveryError as e:
            check(isinstance(e.frame, aiormq.spec.Basic.Return), "publish failed with %r" % (e.frame,))
            check(e.frame.reply_code == 312, "return reply code %r" % e.frame.reply_code)
            check(e.message.body == b"nowhere", "returned body %r" % e.message.body)
        # Not mandatory (aio-pika's default is mandatory): acked and dropped.
        r = await ch.default_exchange.publish(aio_pika.Message(b"dropped"), routing_key=unique("aiopika-no-such-queue"),
                                              mandatory=False)
        check(isinstance(r, aiormq.spec.Basic.Ack), "unroutable non-mandatory publish: %r" % (r,))


async def dlx_queues(ch, prefix):
    name = unique(prefix)
    dlq = await ch.declare_queue(name + "-dead")
    q = await ch.declare_queue(name, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq.name})
    return q, dlq


async def scenario_dlx():
    async with Conn() as conn:
        ch = await conn.channel()
        q, dlq = await dlx_queues(ch, "aiopika-dlx")
        await ch.default_exchange.publish(aio_pika.Message(b"reject me", headers={"h": "v"}), routing_key=q.name)
        msg = await next_message(q)
        await msg.reject(requeue=False)
        dead = await get_within(dlq)
        check(dead is not None, "nothing in the dead-letter queue")
        check(dead.body == b"reject me", "dead-lettered body %r" % dead.body)
        check(text(dead.headers.get("h")) == "v", "headers lost: %r" % dead.headers)
        check_x_death(dead.headers, "rejected", q.name)
        check(await count(conn, q.name) == 0, "the rejected message is still in the queue")
        await q.delete(if_unused=False, if_empty=False)
        await dlq.delete(if_unused=False, if_empty=False)


async def scenario_ttl():
    async with Conn() as conn:
        ch = await conn.channel()
        q, dlq = await dlx_queues(ch, "aiopika-ttl")
        await ch.default_exchange.publish(aio_pika.Message(b"short", expiration=0.2), routing_key=q.name)
        await ch.default_exchange.publish(aio_pika.Message(b"long", expiration=60), routing_key=q.name)
        await asyncio.sleep(0.6)
        msg = await q.get(no_ack=True, fail=False)
        check(msg is not None, "the unexpired message was not delivered")
        check(msg.body == b"long", "got %r: the expired message was delivered" % msg.body)
        msg = await q.get(no_ack=True, fail=False)
        check(msg is None, "a second message %r was delivered" % (msg and msg.body))
        dead = await get_within(dlq)
        check(dead is not None, "the expired message was not dead-lettered")
        check(dead.body == b"short", "dead-lettered %r" % dead.body)
        check_x_death(dead.headers, "expired", q.name, original_expiration="200")
        check(dead.expiration is None, "the dead-lettered message still has expiration %r" % dead.expiration)
        await q.delete(if_unused=False, if_empty=False)
        await dlq.delete(if_unused=False, if_empty=False)


async def scenario_cancel():
    async with Conn() as conn:
        ch = await conn.channel()
        queue = await ch.declare_queue(unique("aiopika-cancel"))
        cancelled = asyncio.get_running_loop().create_future()
        underlay = await ch.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda frame: cancelled.done() or cancelled.set_result(frame.consumer_tag))

        async def on_message(msg):
            pass

        tag = await queue.consume(on_message)
        other = await conn.channel()
        await other.queue_delete(queue.name)
        got = await asyncio.wait_for(cancelled, TIMEOUT)
        check(got == tag, "cancel notification for %r, expected %r" % (got, tag))
        check(not ch.is_closed, "the consumer's channel was closed")


async def scenario_large():
    async with Conn() as conn:
        ch = await conn.channel(publisher_confirms=True)
        queue = await ch.declare_queue(unique("aiopika-large"), durable=True)
        body = large_body()
        # Persistent into a durable queue: confirmed once on disk.
        await ch.default_exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                          routing_key=queue.name, timeout=TIMEOUT)
        msg = await next_message(queue)
        check(len(msg.body) == len(body), "got %d bytes of %d" % (len(msg.body), len(body)))
        check(msg.body == body, "the body differs")
        await msg.ack()
        await queue.delete(if_unused=False, if_empty=False)


async def scenario_heartbeat():
    async with Conn(heartbeat=HEARTBEAT) as conn:
        raw = conn.transport.connection
        check(raw.heartbeat_timeout == HEARTBEAT, "heartbeat %r, asked %d" % (raw.heartbeat_timeout, HEARTBEAT))
        ch = await conn.channel()
        loop = asyncio.get_running_loop()
        # aiormq notes the (loop) time of every frame it reads; only the
        # broker's heartbeats can come in while idle.
        start = loop.time()
        end = start + 3 * HEARTBEAT + 0.5
        last, gaps = start, []
        while loop.time() < end:
            await asyncio.sleep(0.05)
            seen = raw._Connection__last_frame_time
            if seen > last:
                gaps.append(seen - last)
                last = seen
        gaps.append(loop.time() - last)
        check(not conn.is_closed, "connection closed during the idle period")
        check(len(gaps) > 1, "no frame from the broker in %.1fs idle" % (loop.time() - start))
        check_heartbeat_gaps(gaps)
        queue = await ch.declare_queue(unique("aiopika-hb"))
        await ch.default_exchange.publish(aio_pika.Message(b"alive"), routing_key=queue.name)
        msg = await get_within(queue)
        check(msg is not None and msg.body == b"alive", "round trip after idling failed")
        await queue.delete(if_unused=False, if_empty=False)


async def scenario_tx():
    async with Conn() as conn:
        ch = await conn.channel(publisher_confirms=False)
        queue = await ch.declare_queue(unique("aiopika-tx"))
        tx = ch.transaction()
        await tx.select()
        await ch.default_exchange.publish(aio_pika.Message(b"committed"), routing_key=queue.name)
        check(await count(conn, queue.name) == 0, "published in a transaction, visible before commit")
        await tx.commit()
        check(await count(conn, queue.name) == 1, "after commit the queue has %d messages" % await count(conn, queue.name))
        await ch.default_exchange.publish(aio_pika.Message(b"rolled back"), routing_key=queue.name)
        await tx.rollback()
        check(await count(conn, queue.name) == 1, "after rollback the queue has %d messages" % await count(conn, queue.name))
        msg = await queue.get(no_ack=False)
        check(msg.body == b"committed", "got %r" % msg.body)
        await msg.ack()
        await tx.commit()
        await ch.close()
        check(await count(conn, queue.name) == 0, "after committing the ack the queue has messages")
        ch = await conn.channel()
        await ch.queue_delete(queue.name)


async def scenario_delayed():
    async with Conn() as conn:
        ch = await conn.channel(publisher_confirms=False)
        name = unique("aiopika-delayed")
        try:
            ex = await ch.declare_exchange(name, type="x-delayed-message", arguments={"x-delayed-type": "direct"})
        except (aiormq.exceptions.ChannelClosed, aiormq.exceptions.ConnectionClosed) as e:
            if delayed_unsupported(reply_code(e), str(e)):
                raise Skip(SKIP_DELAYED)
            raise
        queue = await ch.declare_queue(name)
        await queue.bind(ex, routing_key="k")
        t0 = time.monotonic()
        # Not mandatory: the message is routed only after its delay.
        await ex.publish(aio_pika.Message(b"later", headers={"x-delay": DELAY_MS}), routing_key="k", mandatory=False)
        msg = await queue.get(no_ack=True, fail=False)
        check(msg is None, "the delayed message was there at once")
        msg = await get_within(queue, secs=5)
        took = time.monotonic() - t0
        check(msg is not None, "the delayed message did not arrive within 5 s")
        check(msg.body == b"later", "got %r" % msg.body)
        check(took >= DELAY_MS / 1000 - 0.05, "arrived after %.3fs, before its %d ms delay" % (took, DELAY_MS))
        check(took <= DELAY_MS / 1000 + 1.5, "arrived after %.3fs for a %d ms delay" % (took, DELAY_MS))
        await queue.delete(if_unused=False, if_empty=False)
        await ex.delete()


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
]


def main():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def sync(fn):
        return lambda: loop.run_until_complete(asyncio.wait_for(fn(), 4 * TIMEOUT))

    return run_all("aio-pika", [(sid, sync(fn)) for sid, fn in SCENARIOS])


if __name__ == "__main__":
    main_guard(main)
