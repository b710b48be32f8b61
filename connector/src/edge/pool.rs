//! The live tunnels and how one is picked for a request: the least-loaded ready
//! tunnel of the app's group whose connector is healthy.
//!
//! Outlier ejection: a connector with `consecutive_errors` gateway errors in a row
//! (tunnel failures, 502/503/504 answers) is taken out of rotation for
//! `base_ejection_ms`, doubled at each further ejection up to `max_ejection_ms`.
//! When its time is over it is back on probation: one more error ejects it again,
//! a success clears its record. Least-outstanding picking alone favours a
//! connector that fails fast; ejection stops that. If every connector of a group
//! is ejected, the least loaded is used all the same (failing open beats failing
//! every request).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::body::BoxBody;
use crate::config::OutlierConfig;
use crate::pki::ConnectorIdentity;

/// A live tunnel as tests and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    /// Tunnel number (per edge process).
    pub id: u64,
    /// Connector id.
    pub connector_id: String,
    /// Group.
    pub group: String,
    /// Serial of the client certificate presented.
    pub cert_serial: String,
    /// Streams in flight.
    pub inflight: usize,
    /// Streams served since it opened.
    pub served: u64,
}

struct Tunnel {
    identity: ConnectorIdentity,
    sender: http2::SendRequest<BoxBody>,
    inflight: Arc<AtomicUsize>,
    served: Arc<AtomicU64>,
    kill: Arc<Kill>,
}

/// Ends one tunnel connection from outside (revocation, the end of the drain).
#[derive(Default)]
pub(crate) struct Kill {
    notify: Notify,
    killed: AtomicBool,
}

impl Kill {
    fn kill(&self) {
        // Set before the pool lets go of the tunnel's sender, whose drop may end
        // the connection's task first.
        self.killed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Waits for the kill.
    pub(crate) async fn killed(&self) {
        self.notify.notified().await;
    }

    /// Whether the tunnel was killed (its streams in flight must end too).
    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
struct Health {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Back from an ejection, not yet proven healthy.
    probation: bool,
}

#[derive(Default)]
struct Inner {
    tunnels: BTreeMap<u64, Tunnel>,
    health: HashMap<String, Health>,
    /// Tunnels removed from the pool whose connections have not ended yet.
    closing: BTreeMap<u64, Arc<Kill>>,
}

/// The pool of live tunnels.
#[derive(Default)]
pub(crate) struct TunnelPool {
    inner: Mutex<Inner>,
    next: AtomicU64,
    /// Rotates the choice among equally loaded tunnels.
    turn: AtomicU64,
    /// Tunnel connections still running (in the pool or closing).
    running: AtomicUsize,
    ended: Notify,
    /// Told when a tunnel joins.
    joined: Notify,
}

/// A tunnel picked for one request.
pub(crate) struct Picked {
    pub id: u64,
    pub connector: String,
    pub sender: http2::SendRequest<BoxBody>,
    pub inflight: Arc<AtomicUsize>,
    pub served: Arc<AtomicU64>,
}

/// A tunnel's place in the pool; dropping it removes the tunnel.
pub(crate) struct Registration<'a> {
    pool: &'a TunnelPool,
    pub id: u64,
    pub kill: Arc<Kill>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut inner = self.pool.lock();
        if inner.tunnels.remove(&self.id).is_none() {
            inner.closing.remove(&self.id);
        }
        drop(inner);
        self.pool.running.fetch_sub(1, Ordering::Relaxed);
        self.pool.ended.notify_waiters();
    }
}

impl TunnelPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds a tunnel; it stays until the returned registration is dropped.
    pub(crate) fn insert(
        &self,
        identity: ConnectorIdentity,
        sender: http2::SendRequest<BoxBody>,
    ) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let kill = Arc::new(Kill::default());
        self.running.fetch_add(1, Ordering::Relaxed);
        self.lock().tunnels.insert(
            id,
            Tunnel {
                identity,
                sender,
                inflight: Arc::new(AtomicUsize::new(0)),
                served: Arc::new(AtomicU64::new(0)),
                kill: kill.clone(),
            },
        );
        self.joined.notify_waiters();
        Registration {
            pool: self,
            id,
            kill,
        }
    }

    /// [`TunnelPool::pick`], waiting until `deadline` for a tunnel to join when
    /// none fits (a connector reconnecting, the edge just started).
    pub(crate) async fn pick_or_wait(
        &self,
        group: &str,
        tried: &[u64],
        avoid: &[String],
        deadline: tokio::time::Instant,
    ) -> Option<Picked> {
        loop {
            let joined = self.joined.notified();
            tokio::pin!(joined);
            joined.as_mut().enable();
            if let Some(p) = self.pick(group, tried, avoid) {
                return Some(p);
            }
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                return self.pick(group, tried, avoid);
            }
        }
    }

    /// The live tunnels.
    pub(crate) fn list(&self) -> Vec<TunnelInfo> {
        self.lock()
            .tunnels
            .iter()
            .filter(|(_, t)| !t.sender.is_closed())
            .map(|(id, t)| TunnelInfo {
                id: *id,
                connector_id: t.identity.id.clone(),
                group: t.identity.group.clone(),
                cert_serial: t.identity.serial.clone(),
                inflight: t.inflight.load(Ordering::Relaxed),
                served: t.served.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The least-loaded ready tunnel of `group`, not in `tried`; a healthy connector
    /// not in `avoid` first, then any healthy one, then any.
    pub(crate) fn pick(&self, group: &str, tried: &[u64], avoid: &[String]) -> Option<Picked> {
        let now = Instant::now();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let Inner {
            tunnels, health, ..
        } = &mut *inner;
        let mut best: Option<(u8, usize, u64, u64)> = None;
        for (id, t) in tunnels.iter() {
            if t.identity.group != group || tried.contains(id) || !t.sender.is_ready() {
                continue;
            }
            let ejected = health
                .get(&t.identity.id)
                .and_then(|h| h.ejected_until)
                .is_some_and(|until| until > now);
            let rank = match (ejected, avoid.contains(&t.identity.id)) {
                (false, false) => 0,
                (false, true) => 1,
                (true, _) => 2,
            };
            let load = t.inflight.load(Ordering::Relaxed);
            let order = id.wrapping_sub(turn);
            if best.is_none_or(|(r, l, o, _)| (rank, load, order) < (r, l, o)) {
                best = Some((rank, load, order, *id));
            }
        }
        let (_, _, _, id) = best?;
        let t = tunnels.get(&id)?;
        Some(Picked {
            id,
            connector: t.identity.id.clone(),
            sender: t.sender.clone(),
            inflight: t.inflight.clone(),
            served: t.served.clone(),
        })
    }

    /// Records the outcome of a request on `connector`; returns `true` when it was
    /// ejected by this failure.
    pub(crate) fn report(
        &self,
        connector: &str,
        ok: bool,
        outlier: &OutlierConfig,
        ejected_gauge: &AtomicI64,
    ) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        if ok {
            if let Some(h) = inner.health.get_mut(connector) {
                if h.ejected_until.is_some_and(|u| u <= now) || h.ejected_until.is_none() {
                    if h.ejected_until.take().is_some() {
                        ejected_gauge.fetch_sub(1, Ordering::Relaxed);
                    }
                    inner.health.remove(connector);
                } else {
                    h.consecutive = 0;
                }
            }
            return false;
        }
        let h = inner.health.entry(connector.to_string()).or_default();
        if let Some(until) = h.ejected_until {
            if until > now {
                // Already out (a request picked before the ejection).
                return false;
            }
            h.ejected_until = None;
            h.probation = true;
            ejected_gauge.fetch_sub(1, Ordering::Relaxed);
        }
        h.consecutive += 1;
        if h.consecutive < outlier.consecutive_errors && !h.probation {
            return false;
        }
        h.ejections += 1;
        h.consecutive = 0;
        h.probation = false;
        let factor = 1u64 << (h.ejections - 1).min(16);
        let ms = outlier
            .base_ejection_ms
            .saturating_mul(factor)
            .min(outlier.max_ejection_ms);
        h.ejected_until = Some(now + Duration::from_millis(ms));
        ejected_gauge.fetch_add(1, Ordering::Relaxed);
        warn!(
            connector_id = connector,
            ejection_ms = ms,
            ejections = h.ejections,
            "connector keeps failing: out of rotation"
        );
        true
    }

    /// Ends every tunnel of `connector` at once (revoked).
    pub(crate) fn kill_connector(&self, connector: &str) -> usize {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner
            .tunnels
            .iter()
            .filter(|(_, t)| t.identity.id == connector)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(t) = inner.tunnels.get(id) {
                t.kill.kill();
            }
            if let Some(t) = inner.tunnels.remove(id) {
                inner.closing.insert(*id, t.kill);
            }
        }
        if !ids.is_empty() {
            info!(
                connector_id = connector,
                tunnels = ids.len(),
                "revoked: tunnels dropped"
            );
        }
        ids.len()
    }

    /// Forgets every tunnel: each closes (GOAWAY) once its streams are done.
    pub(crate) fn close_all(&self) {
        let mut inner = self.lock();
        for (id, t) in std::mem::take(&mut inner.tunnels) {
            inner.closing.insert(id, t.kill);
        }
    }

    /// Ends every tunnel now.
    pub(crate) fn kill_all(&self) {
        let inner = self.lock();
        for t in inner.tunnels.values() {
            t.kill.kill();
        }
        for kill in inner.closing.values() {
            kill.kill();
        }
    }

    /// Waits until no tunnel connection runs.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let ended = self.ended.notified();
            if self.running.load(Ordering::Relaxed) == 0 {
                return;
            }
            ended.await;
        }
    }
}
