//! The only place the tests reach into the broker's internals (its module
//! paths and fields): a few named questions and switches on [`TestBroker`].
//! When src/ moves things around, this file follows and the suites do not.
#![allow(dead_code)]

use super::TestBroker;
use lepus::broker::exchange::Exchange;
use lepus::broker::queue::Queue;
use lepus::broker::Broker;
use lepus::store::io::FaultyIo;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

impl TestBroker {
    fn broker(&self) -> &Arc<Broker> {
        &self.handle.as_ref().expect("the broker is running").broker
    }

    /// A queue as the broker holds it, `None` if there is no such queue. The
    /// vhost must exist.
    pub fn queue(&self, vhost: &str, name: &str) -> Option<Arc<Queue>> {
        self.broker()
            .vhost(vhost)
            .unwrap_or_else(|| panic!("no vhost {vhost:?}"))
            .queue(name)
    }

    /// An exchange as the broker holds it, `None` if there is no such
    /// exchange. The vhost must exist.
    pub fn exchange(&self, vhost: &str, name: &str) -> Option<Arc<Exchange>> {
        self.broker()
            .vhost(vhost)
            .unwrap_or_else(|| panic!("no vhost {vhost:?}"))
            .exchange(name)
    }

    /// Whether the queue exists, looked up in the broker: unlike a passive
    /// declare this is no use of the queue (it renews no x-expires lease).
    /// The vhost must exist.
    pub fn has_queue(&self, vhost: &str, name: &str) -> bool {
        self.queue(vhost, name).is_some()
    }

    pub fn vhost_exists(&self, name: &str) -> bool {
        self.broker().vhost(name).is_some()
    }

    pub fn user_exists(&self, name: &str) -> bool {
        self.broker().users.read().contains_key(name)
    }

    pub fn add_vhost(&self, name: &str) {
        self.broker()
            .add_vhost(name)
            .unwrap_or_else(|e| panic!("add vhost {name}: {e:?}"));
    }

    pub fn delete_vhost(&self, name: &str) {
        self.broker()
            .delete_vhost(name)
            .unwrap_or_else(|e| panic!("delete vhost {name}: {e:?}"));
    }

    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) {
        self.broker()
            .set_permissions(user, vhost, configure, write, read)
            .unwrap_or_else(|e| panic!("set permissions of {user} on {vhost}: {e:?}"));
    }

    /// Raise a resource alarm with these reasons (none: clear it), as the
    /// housekeeping check would.
    pub fn set_alarm(&self, reasons: &[&str]) {
        self.broker()
            .set_alarm(reasons.iter().map(|r| r.to_string()).collect());
    }

    pub fn clear_alarm(&self) {
        self.set_alarm(&[]);
    }

    /// Whether a resource alarm is on.
    pub fn alarm_on(&self) -> bool {
        *self.broker().alarm.borrow()
    }

    /// The reasons of the current alarm.
    pub fn alarm_reasons(&self) -> Vec<String> {
        self.broker().alarm_reasons.lock().clone()
    }

    /// AMQP connections the broker has open.
    pub fn connection_count(&self) -> usize {
        self.broker().connections.lock().len()
    }

    /// Channels registered for direct reply-to (tokens that name a channel).
    pub fn reply_to_tokens(&self) -> usize {
        self.broker().reply_to.len()
    }

    /// Bytes of message data the store holds.
    pub fn store_bytes_used(&self) -> u64 {
        self.broker().store.bytes_used()
    }

    /// Segment files the store has.
    pub fn store_segment_count(&self) -> usize {
        self.broker().store.segment_count()
    }

    /// Compact sparse segments now; how many messages moved.
    pub fn compact(&self) -> usize {
        self.broker().compact()
    }

    /// The running broker, weakly: to see it is gone after a stop.
    pub fn weak_broker(&self) -> Weak<Broker> {
        Arc::downgrade(self.broker())
    }

    /// Start on store I/O that fails when told to.
    pub async fn start_with_faults(
        dir: tempfile::TempDir,
        config: lepus::config::Config,
    ) -> (TestBroker, Faults) {
        let io = Arc::new(FaultyIo::default());
        let handle = lepus::server::start_with_io(config.clone(), io.clone())
            .await
            .expect("broker starts");
        let b = TestBroker {
            handle: Some(handle),
            dir,
            config,
        };
        (b, Faults(io))
    }
}

/// The replication seam (`lepus::store::replica`): an observer that records
/// every durable write, and the follower side that replays them.
pub use lepus::store::replica::{differences, Mirror, Op, Recorder};

/// Entries a delayed exchange's time index holds in memory before it writes
/// a run file.
pub const DELAY_INDEX_SPILL: usize = lepus::broker::delayed::SPILL;

impl TestBroker {
    /// Start with `observer` attached to the store's I/O: it sees every
    /// durable write (the replication seam).
    pub async fn start_observed(
        dir: tempfile::TempDir,
        config: lepus::config::Config,
        observer: Arc<Recorder>,
    ) -> TestBroker {
        let handle = lepus::server::start_with_io(config.clone(), observed(observer))
            .await
            .expect("broker starts");
        TestBroker {
            handle: Some(handle),
            dir,
            config,
        }
    }

    /// [`TestBroker::restart`] with `observer` attached again.
    pub async fn restart_observed(&mut self, observer: Arc<Recorder>) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        let h = lepus::server::start_with_io(self.config.clone(), observed(observer))
            .await
            .expect("broker restarts");
        self.handle = Some(h);
    }

    pub fn put_user(&self, name: &str, password: &str) {
        self.broker()
            .put_user(name, lepus::broker::hash_password(password), vec![])
            .unwrap_or_else(|e| panic!("put user {name}: {e:?}"));
    }

    pub fn delete_user(&self, name: &str) {
        self.broker()
            .delete_user(name)
            .unwrap_or_else(|e| panic!("delete user {name}: {e:?}"));
    }

    fn delayed(&self, vhost: &str, exchange: &str) -> Arc<Exchange> {
        let ex = self
            .exchange(vhost, exchange)
            .unwrap_or_else(|| panic!("no exchange {exchange:?}"));
        assert!(ex.delayed.is_some(), "{exchange:?} does not delay");
        ex
    }

    /// A delayed exchange's pending messages: how many, and the first 20 as
    /// (due ms, store position).
    pub fn delayed_pending(&self, vhost: &str, exchange: &str) -> (u64, Vec<(u64, u64)>) {
        let ex = self.delayed(vhost, exchange);
        let d = ex.delayed.as_ref().unwrap();
        let first = d.list(20).into_iter().map(|(due, p)| (due, p.0)).collect();
        (d.pending(), first)
    }

    /// Messages a delayed exchange has released so far.
    pub fn delayed_released(&self, vhost: &str, exchange: &str) -> u64 {
        let ex = self.delayed(vhost, exchange);
        let d = ex.delayed.as_ref().unwrap();
        d.released.load(Ordering::Relaxed)
    }

    /// Store and schedule `n` persistent messages on a delayed exchange
    /// through the broker's own API (fast enough for a few hundred
    /// thousand): bodies "bulk <i>", an x-delay header of `delay_ms`.
    pub async fn schedule_delayed(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        n: usize,
        delay_ms: i64,
    ) {
        let ex = self.delayed(vhost, exchange);
        let (exchange, routing_key) = (exchange.to_owned(), routing_key.to_owned());
        tokio::task::spawn_blocking(move || {
            let d = ex.delayed.as_ref().unwrap();
            let mut headers = lapin::types::FieldTable::default();
            headers.insert(
                "x-delay".into(),
                lapin::types::AMQPValue::LongLongInt(delay_ms),
            );
            let props = lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers);
            let mut prefix = vec![];
            for i in 0..n {
                let body = format!("bulk {i}");
                let header = lepus::protocol::props::encode_header(body.len() as u64, &props);
                d.store_and_schedule(
                    &exchange,
                    &routing_key,
                    &header,
                    body.as_bytes(),
                    true,
                    delay_ms as u64,
                    &mut prefix,
                )
                .expect("stored");
            }
        })
        .await
        .unwrap();
    }
}

fn observed(observer: Arc<Recorder>) -> Arc<lepus::store::io::Observed<lepus::store::io::RealIo>> {
    Arc::new(lepus::store::io::Observed::new(
        lepus::store::io::RealIo,
        observer,
    ))
}

/// The switches of a broker started with [`TestBroker::start_with_faults`].
pub struct Faults(Arc<FaultyIo>);

impl Faults {
    /// Every fsync fails (EIO) while on.
    pub fn fail_all_syncs(&self, on: bool) {
        self.0.fail_all_syncs.store(on, Ordering::SeqCst);
    }

    /// The next `n` segment allocations fail (ENOSPC).
    pub fn fail_allocations(&self, n: u32) {
        self.0.fail_allocations.store(n, Ordering::SeqCst);
    }
}

/// Read and remove everything in a queue, through the broker's own API
/// (not as a consumer): the bodies, in queue order.
pub fn take_bodies(q: &Queue) -> Vec<Vec<u8>> {
    let taken = q.take(usize::MAX);
    let mut out = Vec::with_capacity(taken.len());
    for (_, pos, _) in taken {
        out.push(
            q.store()
                .with_message(pos, |m| m.body.to_vec())
                .expect("message in store"),
        );
        q.drop_taken(pos);
    }
    out
}

impl TestBroker {
    /// Serve one AMQP connection over `transport` (any byte stream), as the
    /// listener does for a TCP socket.
    pub fn serve_stream<T: lepus::connection::Transport>(
        &self,
        transport: T,
        peer: std::net::SocketAddr,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(lepus::connection::serve(
            self.broker().clone(),
            transport,
            peer,
            stop,
        ))
    }
}
