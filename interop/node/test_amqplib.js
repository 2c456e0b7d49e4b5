#!/usr/bin/env node
// The interop matrix's scenarios with amqplib (Node.js), promise API.
//
// Usage: INTEROP_URL=amqp://guest:guest@127.0.0.1:5672/%2f NODE_PATH=.../node_modules node test_amqplib.js
// (interop/run.sh installs amqplib into target/interop/node and runs this).
// Prints "RESULT <id> pass|fail|skip <why>" per scenario.
'use strict';

const crypto = require('node:crypto');
const amqp = require('amqplib');

const URL = process.env.INTEROP_URL;
const TARGET = process.env.INTEROP_TARGET || 'other';
const HEARTBEAT = parseInt(process.env.INTEROP_HEARTBEAT || '2', 10);
const TIMEOUT = 10000;
const DELAY_MS = 300;
const SKIP_DELAYED = 'broker lacks x-delayed-message';

class Skip extends Error {}

function unique(prefix) {
  return `interop-${prefix}-${crypto.randomBytes(5).toString('hex')}`;
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function within(ms, promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function withQuery(url, q) {
  return url + (url.includes('?') ? '&' : '?') + q;
}

// A connection for one scenario; errors on it are remembered, not thrown
// from an event handler.
async function connect(url = URL) {
  const conn = await within(TIMEOUT, amqp.connect(url), 'connect');
  conn.errors = [];
  conn.on('error', (e) => conn.errors.push(e));
  return conn;
}

async function closeQuietly(conn) {
  try {
    await within(TIMEOUT, conn.close(), 'close');
  } catch (_) {
    // already closed
  }
}

async function count(conn, q) {
  const ch = await conn.createChannel();
  const ok = await ch.checkQueue(q);
  await ch.close();
  return ok.messageCount;
}

async function getWithin(ch, q, ms = TIMEOUT) {
  const end = Date.now() + ms;
  for (;;) {
    const m = await ch.get(q, { noAck: true });
    if (m || Date.now() > end) return m || null;
    await sleep(20);
  }
}

// The first message a consumer gets (unacked), then the consumer is cancelled.
async function nextMessage(ch, q) {
  let tag;
  const got = new Promise((resolve) => {
    ch.consume(q, (m) => resolve(m)).then((ok) => { tag = ok.consumerTag; });
  });
  const m = await within(TIMEOUT, got, `consume from ${q}`);
  if (tag) await ch.cancel(tag);
  return m;
}

// Dead-lettered once from `queue` for `reason`, having been published to the
// default exchange with routing key `queue`: the x-death entry and the
// x-first-death-* headers RabbitMQ adds.
function checkXDeath(headers, reason, queue, originalExpiration) {
  headers = headers || {};
  const deaths = headers['x-death'];
  check(Array.isArray(deaths) && deaths.length === 1, `x-death is ${JSON.stringify(deaths)}; headers ${JSON.stringify(headers)}`);
  const d = deaths[0];
  check(String(d.reason) === reason, `x-death reason ${d.reason}, expected ${reason}`);
  check(String(d.queue) === queue, `x-death queue ${d.queue}, expected ${queue}`);
  check(Number(d.count) === 1, `x-death count ${d.count}, expected 1`);
  check(String(d.exchange) === '', `x-death exchange ${d.exchange}, expected ''`);
  const keys = (d['routing-keys'] || []).map(String);
  check(keys.length === 1 && keys[0] === queue, `x-death routing-keys ${JSON.stringify(keys)}, expected [${queue}]`);
  check(d.time !== undefined, `x-death has no time: ${JSON.stringify(d)}`);
  if (originalExpiration !== undefined) {
    check(String(d['original-expiration']) === originalExpiration,
      `x-death original-expiration ${d['original-expiration']}, expected ${originalExpiration}`);
  }
  check(String(headers['x-first-death-reason']) === reason, `x-first-death-reason ${headers['x-first-death-reason']}`);
  check(String(headers['x-first-death-queue']) === queue, `x-first-death-queue ${headers['x-first-death-queue']}`);
  check(String(headers['x-first-death-exchange']) === '', `x-first-death-exchange ${headers['x-first-death-exchange']}`);
}

async function dlxQueues(ch, prefix) {
  const q = unique(prefix);
  const dlq = `${q}-dead`;
  await ch.assertQueue(dlq);
  await ch.assertQueue(q, { arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': dlq } });
  return [q, dlq];
}

const scenarios = {
  async basic(conn) {
    let ch = await conn.createChannel();
    const q = unique('amqplib-consume');
    await ch.assertQueue(q);
    await ch.prefetch(5);
    const n = 20;
    for (let i = 0; i < n; i++) ch.sendToQueue(q, Buffer.from(`m${i}`));
    const got = [];
    let consumerTag;
    await within(TIMEOUT, new Promise((resolve) => {
      ch.consume(q, (m) => {
        got.push(m.content.toString());
        ch.ack(m);
        if (got.length === n) resolve();
      }).then((ok) => { consumerTag = ok.consumerTag; });
    }), 'consuming 20 messages');
    await ch.cancel(consumerTag);
    check(got.join(',') === [...Array(n).keys()].map((i) => `m${i}`).join(','), `consumed ${got.slice(0, 5)}`);
    await ch.close();
    check((await count(conn, q)) === 0, 'messages back in the queue after acking all');
    ch = await conn.createChannel();
    ch.sendToQueue(q, Buffer.from('again'));
    const m = await nextMessage(ch, q);
    check(m.content.toString() === 'again', `got ${m.content}`);
    await ch.close(); // unacked: requeued
    ch = await conn.createChannel();
    const again = await ch.get(q, { noAck: true });
    check(again, 'the unacked message was not requeued');
    check(again.fields.redelivered, 'the requeued message is not marked redelivered');
    await ch.deleteQueue(q);
  },

  // RPC over direct reply-to: the requester consumes amq.rabbitmq.reply-to
  // (noAck) and names it as replyTo; a responder on another connection
  // answers to the replyTo the broker put there; the replies come back with
  // their correlation ids and are never queued.
  async replyto(conn) {
    const rt = 'amq.rabbitmq.reply-to';
    const q = unique('amqplib-rpc');
    const respConn = await connect();
    try {
      const req = await conn.createChannel();
      const n = 3;
      const replies = [];
      let allIn;
      const done = new Promise((resolve) => { allIn = resolve; });
      await req.consume(rt, (m) => {
        replies.push(m);
        if (replies.length === n) allIn();
      }, { noAck: true });
      const resp = await respConn.createChannel();
      await resp.assertQueue(q);
      const seen = [];
      await resp.consume(q, (m) => {
        if (m === null) return; // cancelled by the broker (the queue's deletion below)
        seen.push(m.properties.replyTo);
        resp.sendToQueue(m.properties.replyTo, Buffer.from(`re: ${m.content}`),
          { correlationId: m.properties.correlationId });
        resp.ack(m);
      });
      for (let i = 0; i < n; i++) {
        req.sendToQueue(q, Buffer.from(`call ${i}`), { replyTo: rt, correlationId: `corr-${i}` });
      }
      await within(TIMEOUT, done, `${n} replies`);
      replies.forEach((m, i) => {
        check(m.content.toString() === `re: call ${i}`, `reply ${i} body ${m.content}`);
        check(m.properties.correlationId === `corr-${i}`, `reply ${i} correlationId ${m.properties.correlationId}`);
        check(m.fields.routingKey === seen[i], `reply ${i} routing key ${m.fields.routingKey}`);
      });
      check(seen.every((r) => r.startsWith(`${rt}.`)), `the broker did not name the channel in replyTo: ${seen}`);
      check(new Set(seen).size === 1, `one channel, one replyTo: ${seen}`);
      check((await count(respConn, q)) === 0, 'requests left in the queue');
      // Consuming the pseudo-queue with acks is refused (406).
      const bad = await conn.createChannel();
      bad.on('error', () => {});
      let refused = null;
      try {
        await within(TIMEOUT, bad.consume(rt, () => {}, { noAck: false }), 'consume with acks');
      } catch (e) {
        refused = e;
      }
      check(refused && refused.code === 406, `an acking consumer of ${rt}: ${refused ? refused.message : 'accepted'}`);
      await resp.deleteQueue(q);
    } finally {
      await closeQuietly(respConn);
    }
  },

  async confirms(conn) {
    const ch = await conn.createConfirmChannel();
    const q = unique('amqplib-confirm');
    await ch.assertQueue(q, { durable: true });
    const n = 50;
    const acks = [];
    for (let i = 0; i < n; i++) {
      acks.push(new Promise((resolve, reject) => {
        ch.sendToQueue(q, Buffer.from(`message ${i}`), { persistent: true }, (err) => (err ? reject(err) : resolve()));
      }));
    }
    await within(TIMEOUT, Promise.all(acks), 'publisher confirms');
    await within(TIMEOUT, ch.waitForConfirms(), 'waitForConfirms');
    check((await count(conn, q)) === n, `queue has ${await count(conn, q)} messages`);
    await ch.deleteQueue(q);
  },

  async mandatory(conn) {
    const ch = await conn.createConfirmChannel();
    const returned = new Promise((resolve) => ch.on('return', resolve));
    const key = unique('amqplib-no-such-queue');
    ch.publish('', key, Buffer.from('nowhere'), { mandatory: true });
    const m = await within(TIMEOUT, returned, 'basic.return');
    check(m.fields.replyCode === 312, `return reply code ${m.fields.replyCode}`);
    check(m.fields.replyText === 'NO_ROUTE', `return reply text ${m.fields.replyText}`);
    check(m.fields.routingKey === key, `returned routing key ${m.fields.routingKey}`);
    check(m.content.toString() === 'nowhere', `returned body ${m.content}`);
    await within(TIMEOUT, ch.waitForConfirms(), 'confirm of the returned message');
  },

  async dlx(conn) {
    const ch = await conn.createChannel();
    const [q, dlq] = await dlxQueues(ch, 'amqplib-dlx');
    ch.sendToQueue(q, Buffer.from('reject me'), { headers: { h: 'v' } });
    const m = await nextMessage(ch, q);
    ch.reject(m, false);
    const dead = await getWithin(ch, dlq);
    check(dead, 'nothing in the dead-letter queue');
    check(dead.content.toString() === 'reject me', `dead-lettered body ${dead.content}`);
    check(String(dead.properties.headers.h) === 'v', `headers lost: ${JSON.stringify(dead.properties.headers)}`);
    checkXDeath(dead.properties.headers, 'rejected', q);
    check((await count(conn, q)) === 0, 'the rejected message is still in the queue');
    await ch.deleteQueue(q);
    await ch.deleteQueue(dlq);
  },

  async ttl(conn) {
    const ch = await conn.createChannel();
    const [q, dlq] = await dlxQueues(ch, 'amqplib-ttl');
    ch.sendToQueue(q, Buffer.from('short'), { expiration: '200' });
    ch.sendToQueue(q, Buffer.from('long'), { expiration: 60000 });
    await sleep(600);
    let m = await ch.get(q, { noAck: true });
    check(m, 'the unexpired message was not delivered');
    check(m.content.toString() === 'long', `got ${m.content}: the expired message was delivered`);
    m = await ch.get(q, { noAck: true });
    check(!m, `a second message ${m && m.content} was delivered`);
    const dead = await getWithin(ch, dlq);
    check(dead, 'the expired message was not dead-lettered');
    check(dead.content.toString() === 'short', `dead-lettered ${dead.content}`);
    checkXDeath(dead.properties.headers, 'expired', q, '200');
    check(dead.properties.expiration === undefined, `the dead-lettered message still has expiration ${dead.properties.expiration}`);
    await ch.deleteQueue(q);
    await ch.deleteQueue(dlq);
  },

  async cancel(conn) {
    const ch = await conn.createChannel();
    let chClosed = false;
    ch.on('close', () => { chClosed = true; });
    const q = unique('amqplib-cancel');
    await ch.assertQueue(q);
    // amqplib calls the consumer with null when the broker cancels it.
    let cancelled;
    const notified = new Promise((resolve) => { cancelled = resolve; });
    const ok = await ch.consume(q, (m) => { if (m === null) cancelled(); });
    const other = await conn.createChannel();
    await other.deleteQueue(q);
    await within(TIMEOUT, notified, 'consumer cancel notification');
    check(!chClosed, "the consumer's channel was closed");
    check(ok.consumerTag, 'no consumer tag');
  },

  async large(conn) {
    const ch = await conn.createConfirmChannel();
    const q = unique('amqplib-large');
    await ch.assertQueue(q, { durable: true });
    const body = crypto.randomBytes(4 * 1024 * 1024);
    // Persistent into a durable queue: confirmed once on disk.
    ch.sendToQueue(q, body, { persistent: true });
    await within(TIMEOUT, ch.waitForConfirms(), 'confirm of the 4 MiB message');
    const m = await nextMessage(ch, q);
    check(m.content.length === body.length, `got ${m.content.length} bytes of ${body.length}`);
    check(m.content.equals(body), 'the body differs');
    ch.ack(m);
    await ch.deleteQueue(q);
  },

  async heartbeat() {
    const conn = await connect(withQuery(URL, `heartbeat=${HEARTBEAT}`));
    try {
      let closed = null;
      conn.on('close', (e) => { closed = e || 'closed'; });
      check(conn.connection.heartbeat === HEARTBEAT, `negotiated heartbeat ${conn.connection.heartbeat}, asked ${HEARTBEAT}`);
      const ch = await conn.createChannel();
      // amqplib closes the connection with "Heartbeat timeout" after two
      // intervals without a frame from the broker, and sends its own.
      await sleep(3 * HEARTBEAT * 1000 + 500);
      check(!closed, `connection closed during the idle period: ${closed}`);
      check(conn.errors.length === 0, `connection error: ${conn.errors}`);
      const q = unique('amqplib-hb');
      await ch.assertQueue(q);
      ch.sendToQueue(q, Buffer.from('alive'));
      const m = await getWithin(ch, q);
      check(m && m.content.toString() === 'alive', 'round trip after idling failed');
      await ch.deleteQueue(q);
    } finally {
      await closeQuietly(conn);
    }
  },

  async tx() {
    // Neither the promise nor the callback API has tx.select/commit/rollback,
    // and amqplib 2 no longer exports its method definitions.
    throw new Skip('amqplib has no transaction API');
  },

  async delayed(conn) {
    const ch = await conn.createChannel();
    const ex = unique('amqplib-delayed');
    try {
      await ch.assertExchange(ex, 'x-delayed-message', { arguments: { 'x-delayed-type': 'direct' } });
    } catch (e) {
      // RabbitMQ without the plugin closes the connection (503): the pending
      // declare then fails without a code, the connection's error has it.
      let code = e.code;
      for (let i = 0; code === undefined && i < 50; i++) {
        const ce = conn.errors.find((x) => x.code !== undefined);
        if (ce) code = ce.code;
        else await sleep(20);
      }
      if (TARGET !== 'lepus' && (code === 503 || code === 404)) throw new Skip(SKIP_DELAYED);
      throw e;
    }
    const q = unique('amqplib-delayed');
    await ch.assertQueue(q);
    await ch.bindQueue(q, ex, 'k');
    const t0 = Date.now();
    ch.publish(ex, 'k', Buffer.from('later'), { headers: { 'x-delay': DELAY_MS } });
    let m = await ch.get(q, { noAck: true });
    check(!m, 'the delayed message was there at once');
    m = await getWithin(ch, q, 5000);
    const took = Date.now() - t0;
    check(m, 'the delayed message did not arrive within 5 s');
    check(m.content.toString() === 'later', `got ${m.content}`);
    check(took >= DELAY_MS - 50, `arrived after ${took} ms, before its ${DELAY_MS} ms delay`);
    check(took <= DELAY_MS + 1500, `arrived after ${took} ms for a ${DELAY_MS} ms delay`);
    await ch.deleteQueue(q);
    await ch.deleteExchange(ex);
  },
};

function report(id, status, why = '') {
  const line = `RESULT ${id} ${status} ${String(why).split(/\s+/).join(' ').slice(0, 300)}`.trimEnd();
  process.stdout.write(line + '\n');
}

async function main() {
  if (!URL) {
    process.stderr.write('INTEROP_URL is not set\n');
    process.exit(2);
  }
  const only = (process.env.INTEROP_ONLY || '').split(',').filter(Boolean);
  let failed = 0;
  for (const [id, fn] of Object.entries(scenarios)) {
    if (only.length && !only.includes(id)) continue;
    const t0 = Date.now();
    let conn = null;
    try {
      if (fn.length > 0) conn = await connect();
      await within(4 * TIMEOUT, fn(conn), id);
      report(id, 'pass');
    } catch (e) {
      if (e instanceof Skip) {
        report(id, 'skip', e.message);
      } else {
        failed++;
        process.stderr.write(`--- amqplib ${id} failed: ${e.stack || e}\n`);
        report(id, 'fail', `${e.message || e}`);
      }
    } finally {
      if (conn) await closeQuietly(conn);
    }
    process.stderr.write(`--- amqplib ${id} took ${((Date.now() - t0) / 1000).toFixed(1)}s\n`);
  }
  process.exit(failed ? 1 : 0);
}

process.on('unhandledRejection', (e) => {
  process.stderr.write(`unhandled rejection: ${e && e.stack ? e.stack : e}\n`);
});

main();
