//! The edge's shared store: what every edge replica must agree on (the connector
//! registry and its revocations, admin-token uses; next, session revocations).
//!
//! One API, two backends:
//!
//! - **embedded** ([redb], one file in the edge's state directory): durable across
//!   restarts, for one edge process on one machine (the file is locked by it);
//! - **Redis**: for a fleet; every replica talks to the same server.
//!
//! The API is small on purpose, so later users (revocation feeds for the filters)
//! fit it: namespaced entries with an optional expiry ([`Store::put`],
//! [`Store::get`], [`Store::list`], [`Store::delete`]), counters with an expiry
//! ([`Store::incr`], e.g. uses of a token until it expires), and append-only feeds
//! that replicas follow ([`Store::publish`], [`Store::read_feed`]): a writer
//! publishes a change, every reader sees it within its polling wait. Feeds keep
//! their most recent [`FEED_KEEP`] entries; a reader that falls further behind
//! (or starts) reads the namespaced entries again, which are the truth.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tracing::warn;

/// How many entries a feed keeps.
pub const FEED_KEEP: u64 = 10_000;

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// An embedded database file (one edge process).
    Embedded {
        /// The database file.
        path: PathBuf,
    },
    /// A Redis server shared by every edge replica.
    Redis {
        /// `redis://[user:password@]host:port[/db]` or `redis+unix:///path`.
        url: String,
        /// Prefix of every key, so several deployments can share a server.
        prefix: String,
    },
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSettings::Embedded { path } => write!(f, "embedded store {}", path.display()),
            StoreSettings::Redis { url, prefix } => write!(
                f,
                "redis store {} (prefix {prefix})",
                crate::config::redact_url(url)
            ),
        }
    }
}

/// A store failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("embedded store {path}: {message}")]
    Embedded {
        /// The database file.
        path: String,
        /// What failed.
        message: String,
    },
    /// Redis failed or is unreachable.
    #[error("redis store: {0}")]
    Redis(String),
}

/// A position in a feed (opaque; [`FeedCursor::start`] reads from the oldest kept entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedCursor(String);

impl FeedCursor {
    /// Before every entry.
    pub fn start() -> Self {
        Self("0".into())
    }
}

/// One feed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Its position (read after it to get the next ones).
    pub cursor: FeedCursor,
    /// What was published.
    pub data: Vec<u8>,
}

/// The store (cheap to clone).
#[derive(Clone)]
pub struct Store {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Embedded(Arc<Embedded>),
    Redis(Arc<RedisStore>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Embedded(e) => write!(f, "Store::Embedded({})", e.path.display()),
            Inner::Redis(r) => write!(f, "Store::Redis(prefix {})", r.prefix),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store. Redis is reached within `timeout` or the
    /// open fails (the edge refuses to start without its shared state).
    pub async fn open(settings: &StoreSettings, timeout: Duration) -> Result<Store, StoreError> {
        let inner = match settings {
            StoreSettings::Embedded { path } => Inner::Embedded(Arc::new(Embedded::open(path)?)),
            StoreSettings::Redis { url, prefix } => {
                Inner::Redis(Arc::new(RedisStore::open(url, prefix, timeout).await?))
            }
        };
        Ok(Store { inner })
    }

    /// Which backend, for logs and metrics: `embedded` or `redis`.
    pub fn kind(&self) -> &'static str {
        match &self.inner {
            Inner::Embedded(_) => "embedded",
            Inner::Redis(_) => "redis",
        }
    }

    /// Sets `ns`/`key` to `value`, expiring after `ttl` (never with `None`).
    pub async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let (e, k, v) = (e.clone(), Embedded::key(ns, key), value.to_vec());
                blocking(move || e.put(&k, &v, ttl)).await
            }
            Inner::Redis(r) => r.put(ns, key, value, ttl).await,
        }
    }

    /// The value of `ns`/`key`, unless absent or expired.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let (e, k) = (e.clone(), Embedded::key(ns, key));
                blocking(move || e.get(&k)).await
            }
            Inner::Redis(r) => r.get(ns, key).await,
        }
    }

    /// Removes `ns`/`key`; whether it was there.
    pub async fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let (e, k) = (e.clone(), Embedded::key(ns, key));
                blocking(move || e.delete(&k)).await
            }
            Inner::Redis(r) => r.delete(ns, key).await,
        }
    }

    /// Every live entry of `ns`, by key.
    pub async fn list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let (e, ns) = (e.clone(), ns.to_string());
                blocking(move || e.list(&ns)).await
            }
            Inner::Redis(r) => r.list(ns).await,
        }
    }

    /// Adds one to the counter `ns`/`key` and returns the new count. A new counter
    /// expires after `ttl`; later increments keep that expiry.
    pub async fn incr(&self, ns: &str, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let (e, k) = (e.clone(), Embedded::key(ns, key));
                blocking(move || e.incr(&k, ttl)).await
            }
            Inner::Redis(r) => r.incr(ns, key, ttl).await,
        }
    }

    /// Appends `data` to `feed`.
    pub async fn publish(&self, feed: &str, data: &[u8]) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let (e2, f, d) = (e.clone(), feed.to_string(), data.to_vec());
                blocking(move || e2.publish(&f, &d)).await?;
                e.published.send_modify(|n| *n += 1);
                Ok(())
            }
            Inner::Redis(r) => r.publish(feed, data).await,
        }
    }

    /// The end of `feed` now: reading after it returns only what is published later.
    pub async fn feed_end(&self, feed: &str) -> Result<FeedCursor, StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let (e, f) = (e.clone(), feed.to_string());
                blocking(move || e.feed_end(&f)).await
            }
            Inner::Redis(r) => r.feed_end(feed).await,
        }
    }

    /// Entries of `feed` after `after`, waiting up to `wait` for one to arrive.
    /// `Ok(None)` means the reader fell behind what the feed keeps: read the
    /// namespaced entries again and continue from [`Store::feed_end`].
    pub async fn read_feed(
        &self,
        feed: &str,
        after: &FeedCursor,
        wait: Duration,
    ) -> Result<Option<Vec<FeedEntry>>, StoreError> {
        match &self.inner {
            Inner::Embedded(e) => {
                let mut published = e.published.subscribe();
                published.borrow_and_update();
                let read = || {
                    let (e, f, a) = (e.clone(), feed.to_string(), after.clone());
                    async move { blocking(move || e.read_feed(&f, &a)).await }
                };
                let got = read().await?;
                if !matches!(&got, Some(v) if v.is_empty()) {
                    return Ok(got);
                }
                let _ = tokio::time::timeout(wait, published.changed()).await;
                read().await
            }
            Inner::Redis(r) => r.read_feed(feed, after, wait).await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Embedded {
            path: String::new(),
            message: format!("store task failed: {e}"),
        })?
}

// ------------------------------------------------------------------ embedded

/// `"ns\u{0}key"` → (expires at, ms since the epoch, 0 = never; value).
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// (feed, sequence number) → data.
const FEED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("feed");

struct Embedded {
    db: redb::Database,
    path: PathBuf,
    published: tokio::sync::watch::Sender<u64>,
}

impl Embedded {
    fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = redb::Database::create(path).map_err(|e| StoreError::Embedded {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let this = Self {
            db,
            path: path.to_path_buf(),
            published: tokio::sync::watch::channel(0).0,
        };
        // Create the tables, so reads of a fresh database find them.
        this.write(|txn| {
            txn.open_table(KV)?;
            txn.open_table(FEED)?;
            Ok(())
        })?;
        Ok(this)
    }

    fn key(ns: &str, key: &str) -> String {
        format!("{ns}\u{0}{key}")
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Embedded {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let out = f(&txn).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn put(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let expires = ttl.map(|t| now_ms() + t.as_millis() as u64).unwrap_or(0);
        self.write(|txn| {
            txn.open_table(KV)?.insert(key, (expires, value))?;
            Ok(())
        })
    }

    fn live(expires: u64) -> bool {
        expires == 0 || expires > now_ms()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(KV).map_err(|e| self.err(e))?;
        let got = table.get(key).map_err(|e| self.err(e))?;
        Ok(got.and_then(|g| {
            let (expires, v) = g.value();
            Self::live(expires).then(|| v.to_vec())
        }))
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(KV)?;
            let removed = t.remove(key)?;
            Ok(removed.map(|g| Self::live(g.value().0)).unwrap_or(false))
        })
    }

    fn list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let lo = format!("{ns}\u{0}");
        let hi = format!("{ns}\u{1}");
        let mut expired = Vec::new();
        let mut out = Vec::new();
        {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let table = txn.open_table(KV).map_err(|e| self.err(e))?;
            for item in table
                .range(lo.as_str()..hi.as_str())
                .map_err(|e| self.err(e))?
            {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let (expires, value) = v.value();
                let k = k.value().to_string();
                if Self::live(expires) {
                    out.push((k[lo.len()..].to_string(), value.to_vec()));
                } else {
                    expired.push(k);
                }
            }
        }
        if !expired.is_empty() {
            // Listing is where expired entries are swept.
            let _ = self.write(|txn| {
                let mut t = txn.open_table(KV)?;
                for k in &expired {
                    t.remove(k.as_str())?;
                }
                Ok(())
            });
        }
        Ok(out)
    }

    fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(KV)?;
            let current = t.get(key)?.and_then(|g| {
                let (expires, v) = g.value();
                let n = <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)?;
                Self::live(expires).then_some((expires, n))
            });
            let (expires, n) = match current {
                Some((e, n)) => (e, n + 1),
                None => (now_ms() + ttl.as_millis() as u64, 1),
            };
            t.insert(key, (expires, &n.to_be_bytes()[..]))?;
            Ok(n)
        })
    }

    fn publish(&self, feed: &str, data: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut t = txn.open_table(FEED)?;
            let last = t
                .range((feed, 0)..=(feed, u64::MAX))?
                .next_back()
                .transpose()?
                .map(|(k, _)| k.value().1)
                .unwrap_or(0);
            let seq = last + 1;
            t.insert((feed, seq), data)?;
            if seq > FEED_KEEP {
                let cut = seq - FEED_KEEP;
                t.retain_in((feed, 0)..=(feed, cut), |_, _| false)?;
            }
            Ok(())
        })
    }

    fn seq(cursor: &FeedCursor) -> u64 {
        cursor.0.parse().unwrap_or(0)
    }

    fn feed_end(&self, feed: &str) -> Result<FeedCursor, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(FEED).map_err(|e| self.err(e))?;
        let last = t
            .range((feed, 0)..=(feed, u64::MAX))
            .map_err(|e| self.err(e))?
            .next_back()
            .transpose()
            .map_err(|e| self.err(e))?
            .map(|(k, _)| k.value().1)
            .unwrap_or(0);
        Ok(FeedCursor(last.to_string()))
    }

    fn read_feed(
        &self,
        feed: &str,
        after: &FeedCursor,
    ) -> Result<Option<Vec<FeedEntry>>, StoreError> {
        let after = Self::seq(after);
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(FEED).map_err(|e| self.err(e))?;
        let mut range = t
            .range((feed, 0)..=(feed, u64::MAX))
            .map_err(|e| self.err(e))?;
        let oldest = range
            .next()
            .transpose()
            .map_err(|e| self.err(e))?
            .map(|(k, _)| k.value().1);
        if let Some(oldest) = oldest {
            if after + 1 < oldest {
                return Ok(None);
            }
        }
        let mut out = Vec::new();
        for item in t
            .range((feed, after + 1)..=(feed, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(FeedEntry {
                cursor: FeedCursor(k.value().1.to_string()),
                data: v.value().to_vec(),
            });
        }
        Ok(Some(out))
    }
}

// --------------------------------------------------------------------- redis

struct RedisStore {
    client: redis::Client,
    conn: redis::aio::ConnectionManager,
    /// The connection that waits on feeds (a blocking read would hold up `conn`).
    feed_conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    prefix: String,
    timeout: Duration,
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

impl RedisStore {
    async fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            timeout + Duration::from_millis(500),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StoreError::Redis(format!("no answer from {url} within {timeout:?}")))?
        .map_err(redis_err)?;
        Ok(Self {
            client,
            conn,
            feed_conn: tokio::sync::Mutex::new(None),
            prefix: prefix.to_string(),
            timeout,
        })
    }

    fn key(&self, ns: &str, key: &str) -> String {
        format!("{}:{ns}:{key}", self.prefix)
    }

    fn feed_key(&self, feed: &str) -> String {
        format!("{}:feed:{feed}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(redis_err)
    }

    async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(ns, key)).arg(value);
        if let Some(t) = ttl {
            cmd.arg("PX").arg((t.as_millis() as u64).max(1));
        }
        self.query::<()>(&cmd).await
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GET").arg(self.key(ns, key))).await
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let n: u64 = self.query(redis::cmd("DEL").arg(self.key(ns, key))).await?;
        Ok(n > 0)
    }

    async fn list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let head = self.key(ns, "");
        // `*`, `?` and `[` are the only pattern characters; our prefixes and
        // namespaces never hold them, but escape anyway.
        let pattern: String = head
            .chars()
            .flat_map(|c| {
                if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                    vec!['\\', c]
                } else {
                    vec![c]
                }
            })
            .chain(['*'])
            .collect();
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(chunk)).await?;
            for (k, v) in chunk.iter().zip(values) {
                if let Some(v) = v {
                    out.push((k[head.len()..].to_string(), v));
                }
            }
        }
        Ok(out)
    }

    async fn incr(&self, ns: &str, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let k = self.key(ns, key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&k)
            .arg(0)
            .arg("NX")
            .arg("PX")
            .arg((ttl.as_millis() as u64).max(1))
            .ignore()
            .cmd("INCR")
            .arg(&k);
        let mut conn = self.conn.clone();
        let (n,): (u64,) = pipe.query_async(&mut conn).await.map_err(redis_err)?;
        Ok(n)
    }

    async fn publish(&self, feed: &str, data: &[u8]) -> Result<(), StoreError> {
        self.query::<String>(
            redis::cmd("XADD")
                .arg(self.feed_key(feed))
                .arg("MAXLEN")
                .arg("~")
                .arg(FEED_KEEP)
                .arg("*")
                .arg("d")
                .arg(data),
        )
        .await
        .map(|_| ())
    }

    async fn feed_end(&self, feed: &str) -> Result<FeedCursor, StoreError> {
        let reply: redis::streams::StreamRangeReply = self
            .query(
                redis::cmd("XREVRANGE")
                    .arg(self.feed_key(feed))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        Ok(FeedCursor(
            reply
                .ids
                .first()
                .map(|i| i.id.clone())
                .unwrap_or_else(|| "0-0".into()),
        ))
    }

    async fn read_feed(
        &self,
        feed: &str,
        after: &FeedCursor,
        wait: Duration,
    ) -> Result<Option<Vec<FeedEntry>>, StoreError> {
        let key = self.feed_key(feed);
        // Fell behind? The oldest kept entry is newer than the one after `after`.
        if after.0 != "0" && after.0 != "0-0" {
            let first: redis::streams::StreamRangeReply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(1),
                )
                .await?;
            if let Some(oldest) = first.ids.first() {
                if stream_id_lt(&after.0, &oldest.id) && !self.exists_id(&key, &after.0).await? {
                    return Ok(None);
                }
            }
        }
        let mut guard = self.feed_conn.lock().await;
        if guard.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(wait + self.timeout));
            *guard = Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(redis_err)?,
            );
        }
        let Some(conn) = guard.as_mut() else {
            return Ok(Some(Vec::new()));
        };
        let after_id = if after.0 == "0" {
            "0-0"
        } else {
            after.0.as_str()
        };
        let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg((wait.as_millis() as u64).max(1))
                .arg("STREAMS")
                .arg(&key)
                .arg(after_id)
                .query_async(conn)
                .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                *guard = None;
                return Err(redis_err(e));
            }
        };
        let mut out = Vec::new();
        for k in reply.map(|r| r.keys).unwrap_or_default() {
            for id in k.ids {
                let data = match id.map.get("d") {
                    Some(redis::Value::BulkString(b)) => b.clone(),
                    Some(other) => {
                        warn!("feed {feed}: unexpected entry {other:?}");
                        continue;
                    }
                    None => continue,
                };
                out.push(FeedEntry {
                    cursor: FeedCursor(id.id),
                    data,
                });
            }
        }
        Ok(Some(out))
    }

    async fn exists_id(&self, key: &str, id: &str) -> Result<bool, StoreError> {
        let r: redis::streams::StreamRangeReply = self
            .query(redis::cmd("XRANGE").arg(key).arg(id).arg(id))
            .await?;
        Ok(!r.ids.is_empty())
    }
}

/// `a < b` for Redis stream ids `ms-seq`.
fn stream_id_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(store: &Store) {
        store.put("ns", "a", b"1", None).await.unwrap();
        store
            .put("ns", "b", b"2", Some(Duration::from_millis(150)))
            .await
            .unwrap();
        store.put("other", "a", b"x", None).await.unwrap();
        assert_eq!(store.get("ns", "a").await.unwrap(), Some(b"1".to_vec()));
        let mut listed = store.list("ns").await.unwrap();
        listed.sort();
        assert_eq!(
            listed,
            vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.get("ns", "b").await.unwrap(), None, "expired");
        assert_eq!(store.list("ns").await.unwrap().len(), 1);
        assert!(store.delete("ns", "a").await.unwrap());
        assert!(!store.delete("ns", "a").await.unwrap());

        let ttl = Duration::from_millis(200);
        assert_eq!(store.incr("uses", "t", ttl).await.unwrap(), 1);
        assert_eq!(store.incr("uses", "t", ttl).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(store.incr("uses", "t", ttl).await.unwrap(), 1, "expired");

        let start = store.feed_end("f").await.unwrap();
        store.publish("f", b"one").await.unwrap();
        store.publish("f", b"two").await.unwrap();
        let got = store
            .read_feed("f", &start, Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
        let end = got.last().unwrap().cursor.clone();
        assert_eq!(store.feed_end("f").await.unwrap(), end);
        // A reader waiting on the feed is woken by a publish.
        let reader = {
            let store = store.clone();
            let end = end.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let got = store
                    .read_feed("f", &end, Duration::from_secs(5))
                    .await
                    .unwrap()
                    .unwrap();
                (got, t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.publish("f", b"three").await.unwrap();
        let (got, waited) = reader.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, b"three");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[tokio::test]
    async fn embedded_store_keeps_entries_counters_and_feeds_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let settings = StoreSettings::Embedded { path: path.clone() };
        {
            let store = Store::open(&settings, Duration::from_secs(1))
                .await
                .unwrap();
            exercise(&store).await;
            store.put("keep", "k", b"v", None).await.unwrap();
        }
        let store = Store::open(&settings, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(store.get("keep", "k").await.unwrap(), Some(b"v".to_vec()));
        let got = store
            .read_feed("f", &FeedCursor::start(), Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(stream_id_lt("9-0", "10-0"));
        assert!(stream_id_lt("10-1", "10-2"));
        assert!(!stream_id_lt("10-2", "10-2"));
    }

    #[tokio::test]
    async fn redis_store_behaves_like_the_embedded_one() {
        let redis = portcullis_e2e::redis::Redis::start().unwrap();
        let store = Store::open(
            &StoreSettings::Redis {
                url: redis.url(),
                prefix: "t".into(),
            },
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        exercise(&store).await;
    }
}
