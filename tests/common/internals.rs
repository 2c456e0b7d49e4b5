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
