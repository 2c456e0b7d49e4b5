// The interop matrix's scenarios with the RabbitMQ Java client (Debian's
// librabbitmq-client-java, amqp-client 5.x).
//
// interop/run.sh compiles this with javac against /usr/share/java/amqp-client.jar
// and slf4j, and runs it with INTEROP_URL set. Prints
// "RESULT <id> pass|fail|skip <why>" per scenario.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.ShutdownSignalException;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

public class Interop {
    static final String URL = System.getenv("INTEROP_URL");
    static final String TARGET = System.getenv().getOrDefault("INTEROP_TARGET", "other");
    static final int HEARTBEAT = Integer.parseInt(System.getenv().getOrDefault("INTEROP_HEARTBEAT", "2"));
    static final int TIMEOUT_MS = 10_000;
    static final int DELAY_MS = 300;
    static final String SKIP_DELAYED = "broker lacks x-delayed-message";

    static class Skip extends Exception {
        Skip(String why) { super(why); }
    }

    interface Scenario {
        void run() throws Exception;
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    static String unique(String prefix) {
        return "interop-" + prefix + "-" + UUID.randomUUID().toString().substring(0, 10);
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String str(byte[] b) {
        return b == null ? null : new String(b, StandardCharsets.UTF_8);
    }

    static Connection connect(int heartbeat) throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(URL);
        // A broker error must show, not be recovered from.
        f.setAutomaticRecoveryEnabled(false);
        f.setTopologyRecoveryEnabled(false);
        f.setConnectionTimeout(TIMEOUT_MS);
        f.setHandshakeTimeout(TIMEOUT_MS);
        f.setRequestedHeartbeat(heartbeat);
        return f.newConnection("lepus-interop");
    }

    static Connection connect() throws Exception {
        return connect(60);
    }

    static void closeQuietly(Connection c) {
        try {
            if (c != null && c.isOpen()) c.close(TIMEOUT_MS);
        } catch (Exception ignored) {
        }
    }

    static int count(Connection conn, String q) throws Exception {
        Channel ch = conn.createChannel();
        try {
            return ch.queueDeclarePassive(q).getMessageCount();
        } finally {
            ch.close();
        }
    }

    static GetResponse getWithin(Channel ch, String q, long ms) throws Exception {
        long end = System.currentTimeMillis() + ms;
        while (true) {
            GetResponse r = ch.basicGet(q, true);
            if (r != null || System.currentTimeMillis() > end) return r;
            Thread.sleep(20);
        }
    }

    /** The first delivery of a consumer on q (unacked); the consumer is cancelled after. */
    static Object[] nextDelivery(Channel ch, String q) throws Exception {
        CompletableFuture<Object[]> got = new CompletableFuture<>();
        String tag = ch.basicConsume(q, false, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String consumerTag, Envelope env, AMQP.BasicProperties props, byte[] body) {
                got.complete(new Object[] {env, props, body});
            }
        });
        Object[] d = got.get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
        ch.basicCancel(tag);
        return d;
    }

    /** Dead-lettered once from queue for reason, having been published to the default
     *  exchange with routing key queue: the x-death entry and the x-first-death-* headers. */
    static void checkXDeath(Map<String, Object> headers, String reason, String queue, String originalExpiration) {
        check(headers != null && headers.get("x-death") instanceof List, "no x-death header: " + headers);
        List<?> deaths = (List<?>) headers.get("x-death");
        check(deaths.size() == 1, "x-death is " + deaths);
        Map<?, ?> d = (Map<?, ?>) deaths.get(0);
        check(reason.equals(String.valueOf(d.get("reason"))), "x-death reason " + d.get("reason") + ", expected " + reason);
        check(queue.equals(String.valueOf(d.get("queue"))), "x-death queue " + d.get("queue") + ", expected " + queue);
        check(d.get("count") != null && ((Number) d.get("count")).longValue() == 1, "x-death count " + d.get("count"));
        check("".equals(String.valueOf(d.get("exchange"))), "x-death exchange " + d.get("exchange") + ", expected ''");
        Object keys = d.get("routing-keys");
        check(keys instanceof List && ((List<?>) keys).size() == 1 && queue.equals(String.valueOf(((List<?>) keys).get(0))),
                "x-death routing-keys " + keys + ", expected [" + queue + "]");
        check(d.get("time") != null, "x-death has no time: " + d);
        if (originalExpiration != null) {
            check(originalExpiration.equals(String.valueOf(d.get("original-expiration"))),
                    "x-death original-expiration " + d.get("original-expiration") + ", expected " + originalExpiration);
        }
        check(reason.equals(String.valueOf(headers.get("x-first-death-reason"))), "x-first-death-reason " + headers.get("x-first-death-reason"));
        check(queue.equals(String.valueOf(headers.get("x-first-death-queue"))), "x-first-death-queue " + headers.get("x-first-death-queue"));
        check("".equals(String.valueOf(headers.get("x-first-death-exchange"))), "x-first-death-exchange " + headers.get("x-first-death-exchange"));
    }

    static String[] dlxQueues(Channel ch, String prefix) throws IOException {
        String q = unique(prefix);
        String dlq = q + "-dead";
        ch.queueDeclare(dlq, false, false, false, null);
        Map<String, Object> args = new HashMap<>();
        args.put("x-dead-letter-exchange", "");
        args.put("x-dead-letter-routing-key", dlq);
        ch.queueDeclare(q, false, false, false, args);
        return new String[] {q, dlq};
    }

    // ----------------------------------------------------------- scenarios

    static void basic() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String q = unique("java-consume");
            ch.queueDeclare(q, false, false, false, null);
            int n = 20;
            for (int i = 0; i < n; i++) ch.basicPublish("", q, null, bytes("m" + i));
            ch.basicQos(5);
            List<String> got = Collections.synchronizedList(new ArrayList<>());
            CountDownLatch all = new CountDownLatch(n);
            String tag = ch.basicConsume(q, false, new DefaultConsumer(ch) {
                @Override
                public void handleDelivery(String consumerTag, Envelope env, AMQP.BasicProperties props, byte[] body)
                        throws IOException {
                    got.add(str(body));
                    getChannel().basicAck(env.getDeliveryTag(), false);
                    all.countDown();
                }
            });
            check(all.await(TIMEOUT_MS, TimeUnit.MILLISECONDS), "consumed " + got.size() + " of " + n);
            ch.basicCancel(tag);
            List<String> want = new ArrayList<>();
            for (int i = 0; i < n; i++) want.add("m" + i);
            check(got.equals(want), "consumed " + got);
            ch.close();
            check(count(conn, q) == 0, "messages back in the queue after acking all");
            ch = conn.createChannel();
            ch.basicPublish("", q, null, bytes("again"));
            Object[] d = nextDelivery(ch, q);
            check("again".equals(str((byte[]) d[2])), "got " + str((byte[]) d[2]));
            ch.close(); // unacked: requeued
            ch = conn.createChannel();
            GetResponse r = ch.basicGet(q, true);
            check(r != null, "the unacked message was not requeued");
            check(r.getEnvelope().isRedeliver(), "the requeued message is not marked redelivered");
            ch.queueDelete(q);
        } finally {
            closeQuietly(conn);
        }
    }

    static void confirms() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String q = unique("java-confirm");
            ch.queueDeclare(q, true, false, false, null);
            ch.confirmSelect();
            int n = 50;
            for (int i = 0; i < n; i++) {
                ch.basicPublish("", q, new AMQP.BasicProperties.Builder().deliveryMode(2).build(), bytes("message " + i));
            }
            // Throws on a nack or a timeout.
            ch.waitForConfirmsOrDie(TIMEOUT_MS);
            check(count(conn, q) == n, "queue has " + count(conn, q) + " messages");
            ch.queueDelete(q);
        } finally {
            closeQuietly(conn);
        }
    }

    static void mandatory() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            CompletableFuture<Object[]> returned = new CompletableFuture<>();
            ch.addReturnListener((replyCode, replyText, exchange, routingKey, props, body) ->
                    returned.complete(new Object[] {replyCode, replyText, routingKey, body}));
            ch.confirmSelect();
            String key = unique("java-no-such-queue");
            ch.basicPublish("", key, true, null, bytes("nowhere"));
            Object[] r = returned.get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
            check((Integer) r[0] == 312, "return reply code " + r[0]);
            check("NO_ROUTE".equals(r[1]), "return reply text " + r[1]);
            check(key.equals(r[2]), "returned routing key " + r[2]);
            check("nowhere".equals(str((byte[]) r[3])), "returned body " + str((byte[]) r[3]));
            ch.waitForConfirmsOrDie(TIMEOUT_MS);
        } finally {
            closeQuietly(conn);
        }
    }

    static void dlx() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String[] qs = dlxQueues(ch, "java-dlx");
            Map<String, Object> h = new HashMap<>();
            h.put("h", "v");
            ch.basicPublish("", qs[0], new AMQP.BasicProperties.Builder().headers(h).build(), bytes("reject me"));
            Object[] d = nextDelivery(ch, qs[0]);
            ch.basicReject(((Envelope) d[0]).getDeliveryTag(), false);
            GetResponse dead = getWithin(ch, qs[1], TIMEOUT_MS);
            check(dead != null, "nothing in the dead-letter queue");
            check("reject me".equals(str(dead.getBody())), "dead-lettered body " + str(dead.getBody()));
            Map<String, Object> headers = dead.getProps().getHeaders();
            check(headers != null && "v".equals(String.valueOf(headers.get("h"))), "headers lost: " + headers);
            checkXDeath(headers, "rejected", qs[0], null);
            check(count(conn, qs[0]) == 0, "the rejected message is still in the queue");
            ch.queueDelete(qs[0]);
            ch.queueDelete(qs[1]);
        } finally {
            closeQuietly(conn);
        }
    }

    static void ttl() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String[] qs = dlxQueues(ch, "java-ttl");
            ch.basicPublish("", qs[0], new AMQP.BasicProperties.Builder().expiration("200").build(), bytes("short"));
            ch.basicPublish("", qs[0], new AMQP.BasicProperties.Builder().expiration("60000").build(), bytes("long"));
            Thread.sleep(600);
            GetResponse r = ch.basicGet(qs[0], true);
            check(r != null, "the unexpired message was not delivered");
            check("long".equals(str(r.getBody())), "got " + str(r.getBody()) + ": the expired message was delivered");
            r = ch.basicGet(qs[0], true);
            check(r == null, "a second message was delivered: " + (r == null ? "" : str(r.getBody())));
            GetResponse dead = getWithin(ch, qs[1], TIMEOUT_MS);
            check(dead != null, "the expired message was not dead-lettered");
            check("short".equals(str(dead.getBody())), "dead-lettered " + str(dead.getBody()));
            checkXDeath(dead.getProps().getHeaders(), "expired", qs[0], "200");
            check(dead.getProps().getExpiration() == null, "the dead-lettered message still has expiration " + dead.getProps().getExpiration());
            ch.queueDelete(qs[0]);
            ch.queueDelete(qs[1]);
        } finally {
            closeQuietly(conn);
        }
    }

    static void cancel() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String q = unique("java-cancel");
            ch.queueDeclare(q, false, false, false, null);
            CompletableFuture<String> cancelled = new CompletableFuture<>();
            String tag = ch.basicConsume(q, false, new DefaultConsumer(ch) {
                @Override
                public void handleCancel(String consumerTag) {
                    cancelled.complete(consumerTag);
                }
            });
            Channel other = conn.createChannel();
            other.queueDelete(q);
            String got = cancelled.get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
            check(tag.equals(got), "cancel notification for " + got + ", expected " + tag);
            check(ch.isOpen(), "the consumer's channel was closed");
        } finally {
            closeQuietly(conn);
        }
    }

    static void large() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String q = unique("java-large");
            ch.queueDeclare(q, true, false, false, null);
            ch.confirmSelect();
            byte[] body = new byte[4 * 1024 * 1024];
            new SecureRandom().nextBytes(body);
            // Persistent into a durable queue: confirmed once on disk.
            ch.basicPublish("", q, new AMQP.BasicProperties.Builder().deliveryMode(2).build(), body);
            ch.waitForConfirmsOrDie(TIMEOUT_MS);
            Object[] d = nextDelivery(ch, q);
            byte[] got = (byte[]) d[2];
            check(got.length == body.length, "got " + got.length + " bytes of " + body.length);
            check(Arrays.equals(got, body), "the body differs");
            ch.basicAck(((Envelope) d[0]).getDeliveryTag(), false);
            ch.queueDelete(q);
        } finally {
            closeQuietly(conn);
        }
    }

    static void heartbeat() throws Exception {
        Connection conn = connect(HEARTBEAT);
        try {
            AtomicReference<ShutdownSignalException> shut = new AtomicReference<>();
            conn.addShutdownListener(shut::set);
            check(conn.getHeartbeat() == HEARTBEAT, "negotiated heartbeat " + conn.getHeartbeat() + ", asked " + HEARTBEAT);
            Channel ch = conn.createChannel();
            // The client sends heartbeats from its own thread and closes the
            // connection (MissedHeartbeatException) when the broker's stop.
            Thread.sleep(3L * HEARTBEAT * 1000 + 500);
            check(conn.isOpen(), "connection closed during the idle period: " + shut.get());
            String q = unique("java-hb");
            ch.queueDeclare(q, false, false, false, null);
            ch.basicPublish("", q, null, bytes("alive"));
            GetResponse r = getWithin(ch, q, TIMEOUT_MS);
            check(r != null && "alive".equals(str(r.getBody())), "round trip after idling failed");
            ch.queueDelete(q);
        } finally {
            closeQuietly(conn);
        }
    }

    static void tx() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String q = unique("java-tx");
            ch.queueDeclare(q, false, false, false, null);
            ch.txSelect();
            ch.basicPublish("", q, null, bytes("committed"));
            check(count(conn, q) == 0, "published in a transaction, visible before commit");
            ch.txCommit();
            check(count(conn, q) == 1, "after commit the queue has " + count(conn, q) + " messages");
            ch.basicPublish("", q, null, bytes("rolled back"));
            ch.txRollback();
            check(count(conn, q) == 1, "after rollback the queue has " + count(conn, q) + " messages");
            GetResponse r = ch.basicGet(q, false);
            check(r != null && "committed".equals(str(r.getBody())), "got " + (r == null ? null : str(r.getBody())));
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            ch.txCommit();
            ch.close();
            check(count(conn, q) == 0, "after committing the ack the queue has messages");
            conn.createChannel().queueDelete(q);
        } finally {
            closeQuietly(conn);
        }
    }

    static int replyCode(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof ShutdownSignalException) {
                Object reason = ((ShutdownSignalException) t).getReason();
                if (reason instanceof AMQP.Connection.Close) return ((AMQP.Connection.Close) reason).getReplyCode();
                if (reason instanceof AMQP.Channel.Close) return ((AMQP.Channel.Close) reason).getReplyCode();
            }
        }
        return -1;
    }

    static void delayed() throws Exception {
        Connection conn = connect();
        try {
            Channel ch = conn.createChannel();
            String ex = unique("java-delayed");
            Map<String, Object> args = new HashMap<>();
            args.put("x-delayed-type", "direct");
            try {
                ch.exchangeDeclare(ex, "x-delayed-message", false, false, args);
            } catch (IOException e) {
                int code = replyCode(e);
                if (!TARGET.equals("lepus") && (code == 503 || code == 404)) throw new Skip(SKIP_DELAYED);
                throw e;
            }
            String q = unique("java-delayed");
            ch.queueDeclare(q, false, false, false, null);
            ch.queueBind(q, ex, "k");
            Map<String, Object> h = new HashMap<>();
            h.put("x-delay", DELAY_MS);
            long t0 = System.nanoTime();
            ch.basicPublish(ex, "k", new AMQP.BasicProperties.Builder().headers(h).build(), bytes("later"));
            GetResponse r = ch.basicGet(q, true);
            check(r == null, "the delayed message was there at once");
            r = getWithin(ch, q, 5000);
            long took = (System.nanoTime() - t0) / 1_000_000;
            check(r != null, "the delayed message did not arrive within 5 s");
            check("later".equals(str(r.getBody())), "got " + str(r.getBody()));
            check(took >= DELAY_MS - 50, "arrived after " + took + " ms, before its " + DELAY_MS + " ms delay");
            check(took <= DELAY_MS + 1500, "arrived after " + took + " ms for a " + DELAY_MS + " ms delay");
            ch.queueDelete(q);
            ch.exchangeDelete(ex);
        } finally {
            closeQuietly(conn);
        }
    }

    static void report(String id, String status, String why) {
        String w = why == null ? "" : why.replaceAll("\\s+", " ").trim();
        if (w.length() > 300) w = w.substring(0, 300);
        System.out.println(("RESULT " + id + " " + status + " " + w).trim());
        System.out.flush();
    }

    public static void main(String[] argv) {
        if (URL == null || URL.isEmpty()) {
            System.err.println("INTEROP_URL is not set");
            System.exit(2);
        }
        Map<String, Scenario> scenarios = new LinkedHashMap<>();
        scenarios.put("basic", Interop::basic);
        scenarios.put("confirms", Interop::confirms);
        scenarios.put("mandatory", Interop::mandatory);
        scenarios.put("dlx", Interop::dlx);
        scenarios.put("ttl", Interop::ttl);
        scenarios.put("cancel", Interop::cancel);
        scenarios.put("large", Interop::large);
        scenarios.put("heartbeat", Interop::heartbeat);
        scenarios.put("tx", Interop::tx);
        scenarios.put("delayed", Interop::delayed);
        String only = System.getenv().getOrDefault("INTEROP_ONLY", "");
        List<String> wanted = only.isEmpty() ? null : Arrays.asList(only.split(","));
        int failed = 0;
        for (Map.Entry<String, Scenario> e : scenarios.entrySet()) {
            if (wanted != null && !wanted.contains(e.getKey())) continue;
            long t0 = System.nanoTime();
            try {
                e.getValue().run();
                report(e.getKey(), "pass", "");
            } catch (Skip s) {
                report(e.getKey(), "skip", s.getMessage());
            } catch (Throwable t) {
                failed++;
                System.err.println("--- java " + e.getKey() + " failed:");
                t.printStackTrace();
                String msg = t.getMessage();
                if (t.getCause() != null && t.getCause().getMessage() != null) msg = msg + " (" + t.getCause().getMessage() + ")";
                report(e.getKey(), "fail", t.getClass().getSimpleName() + ": " + msg);
            }
            System.err.printf("--- java %s took %.1fs%n", e.getKey(), (System.nanoTime() - t0) / 1e9);
        }
        System.exit(failed > 0 ? 1 : 0);
    }
}
