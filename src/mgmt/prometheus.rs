//! `/metrics`: the Prometheus text exposition format (version 0.0.4), no
//! authentication, on the management port.
//!
//! Every family has its HELP and TYPE lines once, then its samples; label
//! values are escaped (backslash, double quote, newline).

use super::stats::Sample;
use super::App;
use crate::broker::Broker;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;

pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&app),
    )
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

fn render(app: &App) -> String {
    let b = &app.broker;
    let mut o = Out(String::with_capacity(8192));
    let mut vhosts: Vec<_> = b.vhosts.read().values().cloned().collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut queues = vec![];
    for v in &vhosts {
        let mut qs: Vec<_> = v.queues.read().values().cloned().collect();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        queues.extend(qs);
    }

    // Per queue.
    // (name, type, help, value from the queue's sample and consumer count)
    type PerQueue = (
        &'static str,
        &'static str,
        &'static str,
        fn(&Sample, u32) -> u64,
    );
    let per_queue: Vec<PerQueue> = vec![
        (
            "lepus_queue_messages_ready",
            "gauge",
            "Messages ready for delivery in the queue.",
            |s, _| s.ready,
        ),
        (
            "lepus_queue_messages_unacked",
            "gauge",
            "Messages delivered from the queue and not yet acknowledged.",
            |s, _| s.unacked,
        ),
        (
            "lepus_queue_consumers",
            "gauge",
            "Consumers of the queue.",
            |_, c| c as u64,
        ),
        (
            "lepus_queue_messages_published_total",
            "counter",
            "Messages the queue has taken since the broker started.",
            |s, _| s.published,
        ),
        (
            "lepus_queue_messages_delivered_total",
            "counter",
            "Messages delivered from the queue (consume and get) since the broker started.",
            |s, _| s.delivered,
        ),
        (
            "lepus_queue_messages_acked_total",
            "counter",
            "Messages acknowledged from the queue since the broker started.",
            |s, _| s.acked,
        ),
        (
            "lepus_queue_messages_redelivered_total",
            "counter",
            "Messages redelivered from the queue since the broker started.",
            |s, _| s.redelivered,
        ),
    ];
    let samples: Vec<_> = queues
        .iter()
        .map(|q| (q, Sample::of(q), q.consumer_count()))
        .collect();
    for (name, kind, help, f) in &per_queue {
        o.family(name, kind, help);
        for (q, s, c) in &samples {
            o.sample(
                name,
                &[("vhost", &q.vhost_name), ("queue", &q.name)],
                f(s, *c),
            );
        }
    }

    // Broker-wide.
    let totals = app.stats.totals(&queues);
    o.single(
        "lepus_messages_ready",
        "gauge",
        "Messages ready for delivery, all queues.",
        totals.ready,
    );
    o.single(
        "lepus_messages_unacked",
        "gauge",
        "Messages delivered and not yet acknowledged, all queues.",
        totals.unacked,
    );
    o.single(
        "lepus_messages_published_total",
        "counter",
        "Messages taken by queues since the broker started (a message routed to two queues counts twice).",
        totals.published,
    );
    o.single(
        "lepus_messages_delivered_total",
        "counter",
        "Messages delivered since the broker started.",
        totals.delivered,
    );
    o.single(
        "lepus_messages_acked_total",
        "counter",
        "Messages acknowledged since the broker started.",
        totals.acked,
    );
    o.single(
        "lepus_messages_redelivered_total",
        "counter",
        "Messages redelivered since the broker started.",
        totals.redelivered,
    );
    let (conns, channels) = {
        let c = b.connections.lock();
        (
            c.len(),
            c.values().map(|(i, _)| i.channels as u64).sum::<u64>(),
        )
    };
    o.single(
        "lepus_connections",
        "gauge",
        "Open client connections.",
        conns,
    );
    o.single("lepus_channels", "gauge", "Open channels.", channels);
    o.single("lepus_queues", "gauge", "Queues.", queues.len());
    o.single(
        "lepus_consumers",
        "gauge",
        "Consumers, all queues.",
        samples.iter().map(|(_, _, c)| *c as u64).sum::<u64>(),
    );
    o.single("lepus_vhosts", "gauge", "Virtual hosts.", vhosts.len());

    // Store.
    let st = &b.store;
    o.single(
        "lepus_store_disk_bytes",
        "gauge",
        "Bytes of message segment files on disk (the active segment at its preallocated size).",
        st.disk_bytes(),
    );
    o.single(
        "lepus_store_used_bytes",
        "gauge",
        "Bytes of message records in live segments.",
        st.bytes_used(),
    );
    o.single(
        "lepus_store_segments",
        "gauge",
        "Message segment files.",
        st.segment_count(),
    );
    let (buckets, count, sum) = st.fsync_histogram.snapshot();
    o.family(
        "lepus_store_fsync_seconds",
        "histogram",
        "Latency of the store's group-commit fdatasync calls.",
    );
    for (le, c) in &buckets {
        o.sample(
            "lepus_store_fsync_seconds_bucket",
            &[("le", &le.to_string())],
            c,
        );
    }
    o.sample("lepus_store_fsync_seconds_bucket", &[("le", "+Inf")], count);
    o.sample("lepus_store_fsync_seconds_sum", &[], sum);
    o.sample("lepus_store_fsync_seconds_count", &[], count);

    // Alarms.
    let reasons = b.alarm_reasons.lock().clone();
    o.family(
        "lepus_alarm",
        "gauge",
        "1 while a resource alarm blocks publishers, by resource.",
    );
    for resource in ["disk", "memory", "cluster"] {
        let on = reasons.iter().any(|r| r.starts_with(resource));
        o.sample("lepus_alarm", &[("resource", resource)], on as u8);
    }
    o.single(
        "lepus_alarm_active",
        "gauge",
        "1 while any resource alarm blocks publishers.",
        (!reasons.is_empty()) as u8,
    );

    delayed(b, &mut o);
    cluster(b, &mut o);
    o.0
}

/// Replication, when this broker leads a cluster.
fn cluster(broker: &Broker, o: &mut Out) {
    let Some(c) = broker.cluster.get() else {
        return;
    };
    let nodes = c.nodes();
    let followers: Vec<_> = nodes.iter().filter(|n| n.role == "follower").collect();
    o.single(
        "lepus_cluster_isr_size",
        "gauge",
        "Nodes in the in-sync replica set, the leader included.",
        nodes.iter().filter(|n| n.isr).count(),
    );
    o.single(
        "lepus_cluster_min_insync",
        "gauge",
        "Followers that must have a persistent message on disk before it is confirmed.",
        c.min_insync(),
    );
    o.single(
        "lepus_cluster_failovers_total",
        "counter",
        "Leader changes since the cluster formed.",
        c.failovers(),
    );
    o.single(
        "lepus_cluster_replication_bytes_total",
        "counter",
        "Bytes of the replication stream (copies included) sent by this leader.",
        c.replication_bytes(),
    );
    o.family(
        "lepus_cluster_follower_lag_bytes",
        "gauge",
        "Stream bytes sent to a follower and not yet acknowledged as on its disk.",
    );
    for n in &followers {
        o.sample(
            "lepus_cluster_follower_lag_bytes",
            &[("node", &n.name)],
            n.lag_bytes,
        );
    }
    o.family(
        "lepus_cluster_follower_lag_seconds",
        "gauge",
        "Age of the oldest write a follower has not acknowledged.",
    );
    for n in &followers {
        o.sample(
            "lepus_cluster_follower_lag_seconds",
            &[("node", &n.name)],
            n.lag_ms as f64 / 1000.0,
        );
    }
    o.family(
        "lepus_cluster_follower_in_sync",
        "gauge",
        "1 while a follower is in the in-sync replica set.",
    );
    for n in &followers {
        o.sample(
            "lepus_cluster_follower_in_sync",
            &[("node", &n.name)],
            n.isr as u8,
        );
    }
}

/// Messages waiting in delayed-message exchanges, per exchange.
fn delayed(broker: &Broker, o: &mut Out) {
    let mut vhosts: Vec<_> = broker.vhosts.read().values().cloned().collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    o.family(
        "lepus_delayed_messages",
        "gauge",
        "Messages waiting in a delayed-message exchange for their x-delay to pass.",
    );
    for v in vhosts {
        let mut xs: Vec<_> = v
            .exchanges
            .read()
            .values()
            .filter(|e| e.delayed.is_some())
            .cloned()
            .collect();
        xs.sort_by(|a, b| a.name.cmp(&b.name));
        for e in xs {
            if let Some(d) = &e.delayed {
                o.sample(
                    "lepus_delayed_messages",
                    &[("vhost", &v.name), ("exchange", &e.name)],
                    d.pending(),
                );
            }
        }
    }
}
