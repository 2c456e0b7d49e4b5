//! Everything the cluster keeps in etcd, and nothing else: etcd is the one
//! source of truth for who leads and who is in sync. No consensus runs here.
//!
//! Keys (under the configured prefix, `/lepus` by default):
//! - `members/<name>`: each running node's addresses, under the node's lease
//!   (gone when the node dies and its lease expires). Created only if absent,
//!   so a node name in use is refused.
//! - `leader`: the leader's member record, under its lease. Written by
//!   [`Etcd::campaign`] only when absent.
//! - `isr`: `{epoch, leader, isr}`, the in-sync replica set (the leader and
//!   the followers that have every confirmed write). No lease: it outlives
//!   every node. Only a member of it may take `leader`; the campaign and
//!   every later change compare the revision they read, so two writers can
//!   never both succeed.
//! - `secret`: the replication port's shared secret when none is configured.

use crate::config::ClusterConfig;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node's addresses, as registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// host:port of its AMQP listener, its HTTP API (HTTPS with
    /// `mgmt_tls`), its replication port.
    pub amqp: String,
    pub http: String,
    pub repl: String,
    /// host:port of its amqps listener ("" without TLS).
    #[serde(default)]
    pub amqps: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsrState {
    /// Incremented by every successful campaign.
    pub epoch: u64,
    pub leader: String,
    /// Node names, the leader included.
    pub isr: Vec<String>,
}

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    /// The node's lease (shared by clones: a follower renews it after it
    /// expired, say while the process was stopped).
    lease: Arc<AtomicI64>,
    /// A follower may take a new lease when its old one expired; a leader
    /// may not (its leadership ended with it).
    pub renewable: Arc<AtomicBool>,
    pub ttl: Duration,
    pub me: Member,
    endpoints: String,
}

pub type EtcdResult<T> = Result<T, String>;

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("etcd: {what}: {e}")
}

impl Etcd {
    /// Connect and take a lease. An unreachable etcd is an error within a
    /// few seconds, naming the endpoints.
    pub async fn connect(c: &ClusterConfig, me: Member) -> EtcdResult<Etcd> {
        let endpoints = c.etcd_endpoints.join(",");
        let unreachable = |e: String| format!("cannot reach etcd at {endpoints}: {e}");
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3));
        let mut client = tokio::time::timeout(
            Duration::from_secs(5),
            Client::connect(&c.etcd_endpoints, Some(opts)),
        )
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
        let ttl_s = c.lease_ttl_ms.div_ceil(1000) as i64;
        let lease = tokio::time::timeout(Duration::from_secs(5), client.lease_grant(ttl_s, None))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Etcd {
            client,
            prefix: c.prefix.trim_end_matches('/').to_owned(),
            lease: Arc::new(AtomicI64::new(lease.id())),
            renewable: Arc::new(AtomicBool::new(true)),
            ttl: Duration::from_secs(lease.ttl().max(1) as u64),
            me,
            endpoints,
        })
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    fn key(&self, k: &str) -> String {
        format!("{}/{k}", self.prefix)
    }

    fn my_record(&self) -> String {
        serde_json::to_string(&self.me).expect("member serializes")
    }

    /// Register this node under its name. A name held by another live node
    /// is refused; a name left by a node that just died (its lease not yet
    /// expired) is waited for, up to one lease TTL.
    pub async fn register(&mut self) -> EtcdResult<()> {
        let key = self.key(&format!("members/{}", self.me.name));
        let deadline = Instant::now() + self.ttl + Duration::from_secs(1);
        let mut logged = false;
        loop {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.my_record(),
                    Some(PutOptions::new().with_lease(self.lease())),
                )]);
            let r = self.client.txn(txn).await.map_err(|e| err("register", e))?;
            if r.succeeded() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node name {:?} is already taken by a running node (etcd key {key} at {})",
                    self.me.name, self.endpoints
                ));
            }
            if !logged {
                tracing::info!(node = %self.me.name, "node name still registered (a previous run's lease?); waiting for it to expire");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The replication secret: the configured one, or the one the first node
    /// generated and stored.
    pub async fn secret(&mut self, configured: &str) -> EtcdResult<Vec<u8>> {
        if !configured.is_empty() {
            return Ok(configured.as_bytes().to_vec());
        }
        let key = self.key("secret");
        let fresh: String = {
            use rand::Rng;
            let b: [u8; 32] = rand::thread_rng().gen();
            b.iter().map(|x| format!("{x:02x}")).collect()
        };
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh, None)]);
        self.client.txn(txn).await.map_err(|e| err("secret", e))?;
        let r = self
            .client
            .get(key, None)
            .await
            .map_err(|e| err("secret", e))?;
        r.kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .ok_or_else(|| "etcd: the secret vanished".to_string())
    }

    /// Keep the lease alive. Returns when it is lost: no successful refresh
    /// for a whole TTL (etcd unreachable), or etcd says it expired. From then
    /// on another node may lead. While [`Etcd::renewable`] (a follower), a
    /// lost lease is replaced by a new one and the member record written
    /// again instead.
    pub async fn keep_alive(mut self) -> String {
        loop {
            let why = self.keep_one_alive().await;
            if !self.renewable.load(Ordering::SeqCst) {
                return why;
            }
            tracing::warn!(reason = %why, "etcd lease lost while following; taking a new one");
            loop {
                match self.renew().await {
                    Ok(()) => break,
                    Err(e) => {
                        if !self.renewable.load(Ordering::SeqCst) {
                            return why;
                        }
                        tracing::warn!(error = %e, "cannot renew the etcd lease yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }

    async fn renew(&mut self) -> EtcdResult<()> {
        let ttl_s = self.ttl.as_secs().max(1) as i64;
        let l = self
            .client
            .lease_grant(ttl_s, None)
            .await
            .map_err(|e| err("lease", e))?;
        let key = self.key(&format!("members/{}", self.me.name));
        self.client
            .put(
                key,
                self.my_record(),
                Some(PutOptions::new().with_lease(l.id())),
            )
            .await
            .map_err(|e| err("register", e))?;
        self.lease.store(l.id(), Ordering::SeqCst);
        Ok(())
    }

    async fn keep_one_alive(&mut self) -> String {
        let mut last_ok = Instant::now();
        let every = self.ttl / 3;
        let lost = |endpoints: &str, ttl: Duration| {
            format!(
                "no lease refresh for {} ms (etcd at {endpoints} unreachable?)",
                ttl.as_millis()
            )
        };
        loop {
            match self.client.lease_keep_alive(self.lease()).await {
                Ok((mut keeper, mut stream)) => loop {
                    let round =
                        tokio::time::timeout(every.max(Duration::from_millis(300)), async {
                            keeper.keep_alive().await?;
                            stream.message().await
                        })
                        .await;
                    match round {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => last_ok = Instant::now(),
                        Ok(Ok(Some(_))) => return "etcd says the lease expired".into(),
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "etcd lease refresh failed");
                            break;
                        }
                        Err(_) => tracing::warn!("etcd lease refresh timed out"),
                    }
                    if last_ok.elapsed() >= self.ttl {
                        return lost(&self.endpoints, self.ttl);
                    }
                    tokio::time::sleep(every).await;
                },
                Err(e) => tracing::warn!(error = %e, "etcd lease refresh failed"),
            }
            if last_ok.elapsed() >= self.ttl {
                return lost(&self.endpoints, self.ttl);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Give up the lease (and so the leadership and the member record) now.
    pub async fn resign(&mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.lease_revoke(self.lease()),
        )
        .await;
    }

    /// The current leader, if any.
    pub async fn leader(&mut self) -> EtcdResult<Option<Member>> {
        let r = self
            .client
            .get(self.key("leader"), None)
            .await
            .map_err(|e| err("read leader", e))?;
        Ok(r.kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }

    /// The ISR and the revision it was read at (None: never written).
    pub async fn isr(&mut self) -> EtcdResult<Option<(IsrState, i64)>> {
        let r = self
            .client
            .get(self.key("isr"), None)
            .await
            .map_err(|e| err("read isr", e))?;
        match r.kvs().first() {
            None => Ok(None),
            Some(kv) => serde_json::from_slice(kv.value())
                .map(|s| Some((s, kv.mod_revision())))
                .map_err(|e| err("isr value", e)),
        }
    }

    /// Every registered (live) node.
    pub async fn members(&mut self) -> EtcdResult<Vec<Member>> {
        let r = self
            .client
            .get(self.key("members/"), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| err("read members", e))?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// Try to become the leader, given the ISR as read (`None`: a new
    /// cluster). Succeeds only if there is no leader and the ISR is unchanged
    /// since it was read; the ISR becomes this node alone, at the next epoch
    /// (the followers rejoin once they have copied this node's data).
    pub async fn campaign(
        &mut self,
        read: Option<&(IsrState, i64)>,
    ) -> EtcdResult<Option<IsrState>> {
        let leader = self.key("leader");
        let isr_key = self.key("isr");
        let next = IsrState {
            epoch: read.map_or(1, |(s, _)| s.epoch + 1),
            leader: self.me.name.clone(),
            isr: vec![self.me.name.clone()],
        };
        let isr_unchanged = match read {
            None => Compare::version(isr_key.clone(), CompareOp::Equal, 0),
            Some((_, rev)) => Compare::mod_revision(isr_key.clone(), CompareOp::Equal, *rev),
        };
        let txn = Txn::new()
            .when([
                Compare::version(leader.clone(), CompareOp::Equal, 0),
                isr_unchanged,
            ])
            .and_then([
                TxnOp::put(
                    leader,
                    self.my_record(),
                    Some(PutOptions::new().with_lease(self.lease())),
                ),
                TxnOp::put(
                    isr_key,
                    serde_json::to_string(&next).expect("isr serializes"),
                    None,
                ),
            ]);
        let r = self.client.txn(txn).await.map_err(|e| err("campaign", e))?;
        Ok(r.succeeded().then_some(next))
    }

    /// Write the ISR, as the leader: only while `leader` is still this node's
    /// record. `Ok(false)`: this node is no longer the leader.
    pub async fn set_isr(&mut self, state: &IsrState) -> EtcdResult<bool> {
        let txn = Txn::new()
            .when([Compare::value(
                self.key("leader"),
                CompareOp::Equal,
                self.my_record(),
            )])
            .and_then([TxnOp::put(
                self.key("isr"),
                serde_json::to_string(state).expect("isr serializes"),
                None,
            )]);
        let r = self
            .client
            .txn(txn)
            .await
            .map_err(|e| err("write isr", e))?;
        Ok(r.succeeded())
    }
}
