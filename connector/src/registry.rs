//! The registry of issued connectors and their revocations, kept in the shared
//! [`Store`] so every edge replica agrees.
//!
//! - `connectors/<id>`: what was issued (group, certificate serial, registration
//!   time and admin, the identity's absolute end);
//! - `connector_seen/<id>`: first and last seen, last address;
//! - `connector_revoked/<id>`: a revocation (kept apart, so no other write can
//!   overwrite it);
//! - `admin_token_uses/<jti or token hash>`: registrations made with a token,
//!   until it expires;
//! - feed `connector_revocations`: each revocation, so replicas drop the
//!   connector's tunnels at once.
//!
//! Each edge keeps the revoked ids in memory (loaded at start, followed on the
//! feed, reloaded in full every [`RESYNC_EVERY`]), so the tunnel and API paths
//! never wait on the store.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::shutdown::Shutdown;
use crate::store::{FeedCursor, Store, StoreError};

const NS_CONNECTORS: &str = "connectors";
const NS_SEEN: &str = "connector_seen";
const NS_REVOKED: &str = "connector_revoked";
const NS_TOKEN_USES: &str = "admin_token_uses";
const FEED_REVOCATIONS: &str = "connector_revocations";
/// The full list of revocations is read again this often (a missed feed entry
/// cannot last longer).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How long a reader waits on the feed per read.
const FEED_WAIT: Duration = Duration::from_millis(500);
/// Records outlive the identity's end by this much (then the store drops them).
const KEEP_AFTER_END: Duration = Duration::from_secs(30 * 86_400);

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the edge issued to one connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorRecord {
    /// Connector id (`c-<16 hex>`).
    pub id: String,
    /// Its group.
    pub group: String,
    /// Serial (hex) of its newest certificate.
    pub serial: String,
    /// Registration time, seconds since the epoch.
    pub registered_at: u64,
    /// The admin (`sub`) whose token registered it; `adopted` for a connector first
    /// seen with a certificate issued before the registry existed.
    pub registered_by: String,
    /// The identity's absolute end, seconds since the epoch: no certificate is
    /// issued past it.
    pub identity_expires_at: u64,
}

/// When and from where a connector was seen (tunnel or API call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// First seen, seconds since the epoch.
    pub first_seen: u64,
    /// Last seen, seconds since the epoch.
    pub last_seen: u64,
    /// The address it came from last.
    pub last_address: String,
}

/// A revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked connector id.
    pub id: String,
    /// When, seconds since the epoch.
    pub at: u64,
    /// Who (the admin's `sub`).
    pub by: String,
    /// Why, if given.
    #[serde(default)]
    pub reason: Option<String>,
}

/// One connector as `connectors list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorEntry {
    /// Connector id.
    pub id: String,
    /// Group (empty when only a revocation is known).
    pub group: String,
    /// Newest certificate serial.
    pub serial: String,
    /// Registration time.
    pub registered_at: Option<u64>,
    /// Registering admin.
    pub registered_by: Option<String>,
    /// Absolute end of the identity.
    pub identity_expires_at: Option<u64>,
    /// First seen.
    pub first_seen: Option<u64>,
    /// Last seen.
    pub last_seen: Option<u64>,
    /// Last address.
    pub last_address: Option<String>,
    /// The revocation, if revoked.
    pub revoked: Option<Revocation>,
}

/// The registry (one per edge process).
pub struct Registry {
    store: Store,
    revoked: RwLock<HashSet<String>>,
    revocations: broadcast::Sender<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn decode<T: serde::de::DeserializeOwned>(ns: &str, key: &str, bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!("store entry {ns}/{key} unreadable, ignored: {e}");
            None
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn ttl_until(end: u64) -> Duration {
    Duration::from_secs(end.saturating_sub(unix_now())) + KEEP_AFTER_END
}

impl Registry {
    /// The registry on `store`, with the revocations loaded.
    pub async fn open(store: Store) -> Result<Arc<Registry>, StoreError> {
        let this = Arc::new(Registry {
            store,
            revoked: RwLock::new(HashSet::new()),
            revocations: broadcast::channel(256).0,
        });
        this.resync().await?;
        Ok(this)
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Ids revoked from now on (by this replica or another), as they become known.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.revocations.subscribe()
    }

    /// Whether `id` is revoked, as this replica knows it (no store round trip).
    pub fn is_revoked(&self, id: &str) -> bool {
        match self.revoked.read() {
            Ok(r) => r.contains(id),
            Err(p) => p.into_inner().contains(id),
        }
    }

    /// Whether `id` is revoked, asking the store (for renewals: fails closed).
    pub async fn is_revoked_now(&self, id: &str) -> Result<bool, StoreError> {
        if self.is_revoked(id) {
            return Ok(true);
        }
        let revoked = self.store.get(NS_REVOKED, id).await?.is_some();
        if revoked {
            self.learn(id);
        }
        Ok(revoked)
    }

    fn learn(&self, id: &str) {
        let new = match self.revoked.write() {
            Ok(mut r) => r.insert(id.to_string()),
            Err(p) => p.into_inner().insert(id.to_string()),
        };
        if new {
            let _ = self.revocations.send(id.to_string());
        }
    }

    async fn resync(&self) -> Result<(), StoreError> {
        let all = self.store.list(NS_REVOKED).await?;
        for (id, _) in all {
            self.learn(&id);
        }
        Ok(())
    }

    /// Records a newly registered connector.
    pub async fn register(&self, record: &ConnectorRecord) -> Result<(), StoreError> {
        self.store
            .put(
                NS_CONNECTORS,
                &record.id,
                &encode(record),
                Some(ttl_until(record.identity_expires_at)),
            )
            .await
    }

    /// The record of `id`, if the registry has one.
    pub async fn record(&self, id: &str) -> Result<Option<ConnectorRecord>, StoreError> {
        Ok(self
            .store
            .get(NS_CONNECTORS, id)
            .await?
            .and_then(|b| decode(NS_CONNECTORS, id, &b)))
    }

    /// Notes that `id` was seen from `address` now.
    pub async fn seen(&self, id: &str, address: &str) -> Result<(), StoreError> {
        let now = unix_now();
        let first_seen = self
            .store
            .get(NS_SEEN, id)
            .await?
            .and_then(|b| decode::<Seen>(NS_SEEN, id, &b))
            .map(|s| s.first_seen)
            .unwrap_or(now);
        let seen = Seen {
            first_seen,
            last_seen: now,
            last_address: address.to_string(),
        };
        self.store
            .put(NS_SEEN, id, &encode(&seen), Some(KEEP_AFTER_END * 24))
            .await
    }

    /// Revokes `id`: persisted, announced on the feed, known here at once.
    pub async fn revoke(
        &self,
        id: &str,
        by: &str,
        reason: Option<String>,
    ) -> Result<Revocation, StoreError> {
        let revocation = Revocation {
            id: id.to_string(),
            at: unix_now(),
            by: by.to_string(),
            reason,
        };
        let ttl = self
            .record(id)
            .await?
            .map(|r| ttl_until(r.identity_expires_at));
        self.store
            .put(NS_REVOKED, id, &encode(&revocation), ttl)
            .await?;
        self.store
            .publish(FEED_REVOCATIONS, &encode(&revocation))
            .await?;
        info!(connector_id = id, by, "connector revoked");
        self.learn(id);
        Ok(revocation)
    }

    /// Every connector known, with what was seen of it and its revocation.
    pub async fn list(&self) -> Result<Vec<ConnectorEntry>, StoreError> {
        let mut out: BTreeMap<String, ConnectorEntry> = BTreeMap::new();
        let blank = |id: &str| ConnectorEntry {
            id: id.to_string(),
            group: String::new(),
            serial: String::new(),
            registered_at: None,
            registered_by: None,
            identity_expires_at: None,
            first_seen: None,
            last_seen: None,
            last_address: None,
            revoked: None,
        };
        for (id, b) in self.store.list(NS_CONNECTORS).await? {
            if let Some(r) = decode::<ConnectorRecord>(NS_CONNECTORS, &id, &b) {
                let e = out.entry(id.clone()).or_insert_with(|| blank(&id));
                e.group = r.group;
                e.serial = r.serial;
                e.registered_at = Some(r.registered_at);
                e.registered_by = Some(r.registered_by);
                e.identity_expires_at = Some(r.identity_expires_at);
            }
        }
        for (id, b) in self.store.list(NS_SEEN).await? {
            if let Some(s) = decode::<Seen>(NS_SEEN, &id, &b) {
                let e = out.entry(id.clone()).or_insert_with(|| blank(&id));
                e.first_seen = Some(s.first_seen);
                e.last_seen = Some(s.last_seen);
                e.last_address = Some(s.last_address);
            }
        }
        for (id, b) in self.store.list(NS_REVOKED).await? {
            if let Some(r) = decode::<Revocation>(NS_REVOKED, &id, &b) {
                out.entry(id.clone()).or_insert_with(|| blank(&id)).revoked = Some(r);
            }
        }
        let mut v: Vec<ConnectorEntry> = out.into_values().collect();
        v.sort_by(|a, b| {
            a.registered_at
                .cmp(&b.registered_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(v)
    }

    /// Counts one registration with the token `key` (its `jti`, or a hash) until
    /// `ttl`; `true` while at most `quota` registrations were made with it.
    pub async fn use_token(
        &self,
        key: &str,
        ttl: Duration,
        quota: u32,
    ) -> Result<bool, StoreError> {
        let n = self.store.incr(NS_TOKEN_USES, key, ttl).await?;
        Ok(n <= u64::from(quota))
    }

    /// Follows the revocation feed until `shutdown`: revocations by other replicas
    /// become known within about [`FEED_WAIT`]; the full list is read again every
    /// [`RESYNC_EVERY`] and whenever the feed cannot be followed.
    pub async fn follow(self: Arc<Self>, shutdown: Shutdown) {
        let mut cursor: Option<FeedCursor> = None;
        let mut last_resync = tokio::time::Instant::now();
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let step = async {
                let at = match &cursor {
                    Some(c) => c.clone(),
                    None => {
                        let end = self.store.feed_end(FEED_REVOCATIONS).await?;
                        // Anything published before `end` is in the list.
                        self.resync().await?;
                        last_resync = tokio::time::Instant::now();
                        end
                    }
                };
                match self
                    .store
                    .read_feed(FEED_REVOCATIONS, &at, FEED_WAIT)
                    .await?
                {
                    Some(entries) => {
                        let mut next = at;
                        for e in entries {
                            if let Some(r) =
                                decode::<Revocation>(FEED_REVOCATIONS, "entry", &e.data)
                            {
                                self.learn(&r.id);
                            }
                            next = e.cursor;
                        }
                        Ok::<_, StoreError>(Some(next))
                    }
                    None => Ok(None),
                }
            };
            let result = tokio::select! {
                _ = shutdown.wait() => return,
                r = step => r,
            };
            match result {
                Ok(next) => cursor = next,
                Err(e) => {
                    warn!("following the revocation feed: {e}");
                    cursor = None;
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            if last_resync.elapsed() >= RESYNC_EVERY {
                if let Err(e) = self.resync().await {
                    warn!("reloading revocations: {e}");
                }
                last_resync = tokio::time::Instant::now();
            }
        }
    }
}
