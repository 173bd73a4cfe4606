//! The connection to Redis: one multiplexed, reconnecting connection to a standalone server, or
//! a cluster connection that routes each script call to the node owning its hash slot. Which
//! one is set by `REDIS_CLUSTER`, or, when it is `auto`, by asking the server: at start, or, when
//! Redis cannot be asked then, at the first request it answers. A standalone connection that
//! Redis answers with `MOVED` (a cluster node) says so in the log and stays unready. Over
//! `rediss://`, each is TLS, verified against the CA file or the system's roots, with the client
//! certificate of the [`TlsSettings`] if any.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    ClientTlsConfig, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisFuture, RedisResult,
    ServerErrorKind, TlsCertificates, Value,
};

use super::{cluster::Cluster, wait::Waits};
use crate::{
    telemetry::Chain,
    tls::{self, TlsSettings, Transport},
};

/// Redis answers within this time or the request fails (redis-rs would default to 500 ms,
/// too short for a large DeleteUserSessions).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `REDIS_CLUSTER=auto` waits for the answer to `INFO cluster`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// After Redis could not be asked whether it is a cluster, how long requests fail at once before
/// one asks again.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// How to talk to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server.
    Standalone,
    /// A Redis Cluster (the URL names a seed node).
    Cluster,
    /// Ask the server (`INFO cluster`): at start, or at the first request it answers.
    Auto,
}

/// A standalone or cluster connection; cheap to clone.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnecting.
    Standalone {
        /// The connection.
        connection: ConnectionManager,
        /// Set once the server answered `MOVED`: it is a cluster node.
        moved: Arc<AtomicBool>,
        /// Its `WAIT`s.
        waits: Arc<Waits>,
    },
    /// A cluster, routing by hash slot.
    Cluster(Arc<Cluster>),
    /// `REDIS_CLUSTER=auto` while Redis has not been asked: decided at the first request that
    /// it answers.
    Undecided(Arc<Undecided>),
}

/// What deciding later needs.
pub struct Undecided {
    url: String,
    certificates: Option<TlsCertificates>,
    decided: tokio::sync::OnceCell<RedisConnection>,
    /// When Redis last could not be asked, and why: requests meanwhile fail at once instead of
    /// each asking again.
    failed: std::sync::Mutex<Option<(tokio::time::Instant, String)>>,
}

impl Undecided {
    /// The connection, deciding its kind now if it is not decided yet.
    async fn connection(&self) -> RedisResult<RedisConnection> {
        let decided = self.decided.get_or_try_init(|| async {
            if let Some((at, why)) = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                if at.elapsed() < ASK_AGAIN_AFTER {
                    return Err(
                        std::io::Error::new(std::io::ErrorKind::NotConnected, why.clone()).into(),
                    );
                }
            }
            let decided = async {
                let client = client(&self.url, &self.certificates)?;
                let cluster = is_cluster(&client).await?;
                tracing::info!(
                    cluster,
                    "Redis answers; connected to it as {}",
                    kind(cluster)
                );
                connect(&self.url, client, self.certificates.clone(), cluster).await
            };
            let decided = decided.await;
            if let Err(error) = &decided {
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((tokio::time::Instant::now(), Chain(error).to_string()));
            }
            decided
        });
        decided.await.cloned()
    }
}

fn kind(cluster: bool) -> &'static str {
    if cluster {
        "a Redis Cluster"
    } else {
        "a standalone server"
    }
}

impl RedisConnection {
    /// Whether `url` is a Redis URL this service can use, and whether it asks for TLS; `Err`
    /// says what is wrong with it, without quoting it (it may hold a password).
    pub fn transport(url: &str) -> Result<Transport, &'static str> {
        let client = redis::Client::open(url).map_err(|_| "is not a valid Redis URL")?;
        match client.get_connection_info().addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => Err(
                "asks for #insecure, which this service does not support: a rediss:// server's certificate is always verified",
            ),
            ConnectionAddr::TcpTls { .. } => Ok(Transport::Tls),
            _ => Ok(Transport::Plain),
        }
    }

    /// Connects according to `mode`, over TLS with `tls` for a `rediss://` URL. A standalone
    /// connection is lazy, so the service starts while Redis is down (or its certificate does
    /// not verify); a cluster connection needs its seed node now to learn the slots; `auto`
    /// with a server that cannot be asked now decides at the first request it answers.
    pub async fn open(url: &str, tls: &TlsSettings, mode: RedisMode) -> RedisResult<Self> {
        // redis-rs builds its TLS configurations with the process's default provider.
        tls::provider();
        let certificates = certificates(tls);
        let client = client(url, &certificates)?;
        let cluster = match mode {
            RedisMode::Standalone => false,
            RedisMode::Cluster => true,
            RedisMode::Auto => match is_cluster(&client).await {
                Ok(cluster) => cluster,
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "Redis cannot be asked at start whether it is a cluster; deciding at the first request it answers");
                    return Ok(Self::Undecided(Arc::new(Undecided {
                        url: url.to_owned(),
                        certificates,
                        decided: tokio::sync::OnceCell::new(),
                        failed: std::sync::Mutex::new(None),
                    })));
                }
            },
        };
        connect(url, client, certificates, cluster).await
    }

    /// This connection with its kind decided.
    async fn decided(&self) -> RedisResult<Self> {
        match self {
            Self::Undecided(undecided) => undecided.connection().await,
            decided => Ok(decided.clone()),
        }
    }

    /// `WAIT replicas timeout` on the master that holds `key` (the connection its writes went
    /// over), shared with the callers whose writes were done before it went out: how many
    /// replicas have every write made so far.
    pub(super) async fn wait(
        &self,
        key: &str,
        replication: super::Replication,
    ) -> RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replication.replicas)
            .arg(replication.timeout.as_millis() as u64);
        match self.decided().await? {
            Self::Cluster(cluster) => cluster.wait_by_key(key.as_bytes(), &wait).await,
            Self::Standalone {
                mut connection,
                waits,
                ..
            } => {
                waits
                    .wait(|| async move { wait.query_async(&mut connection).await })
                    .await
            }
            Self::Undecided(_) => Err((ErrorKind::Client, "the connection is not decided").into()),
        }
    }

    /// Whether a server talked to as a standalone one has answered `MOVED`, which makes it a
    /// cluster node: the service is configured wrong (`REDIS_CLUSTER=no`) and cannot serve.
    pub fn answered_moved(&self) -> bool {
        match self {
            Self::Standalone { moved, .. } => moved.load(Ordering::Relaxed),
            Self::Undecided(undecided) => undecided
                .decided
                .get()
                .is_some_and(RedisConnection::answered_moved),
            Self::Cluster(_) => false,
        }
    }
}

/// A client for `url`, with `certificates` when there are any.
fn client(url: &str, certificates: &Option<TlsCertificates>) -> RedisResult<redis::Client> {
    match certificates {
        Some(certificates) => redis::Client::build_with_tls(url, certificates.clone()),
        None => redis::Client::open(url),
    }
}

/// Connects to `url` as a cluster or as a standalone server.
async fn connect(
    url: &str,
    client: redis::Client,
    certificates: Option<TlsCertificates>,
    cluster: bool,
) -> RedisResult<RedisConnection> {
    // Few, short reconnect attempts per request, so that while Redis (or a node of it) is down a
    // request fails as `unavailable` within seconds instead of waiting out a long backoff.
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_millis(500));
    tokio::spawn(advise_on_hash_encoding(client.clone()));
    if cluster {
        let cluster = Cluster::connect(url, certificates, config).await?;
        return Ok(RedisConnection::Cluster(cluster));
    }
    Ok(RedisConnection::Standalone {
        connection: ConnectionManager::new_lazy_with_config(client, config)?,
        moved: Arc::default(),
        waits: Arc::default(),
    })
}

/// A server that `SCAN` walks: the standalone server, or one master of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ScanNode {
    /// The one server.
    Standalone,
    /// A cluster master, by the address the cluster gives for it.
    Master {
        /// Its host.
        host: String,
        /// Its port.
        port: u16,
    },
}

impl RedisConnection {
    /// The servers that together hold every key: the server, or each master of the cluster
    /// (from `CLUSTER SLOTS`).
    pub(super) async fn scan_nodes(&self) -> RedisResult<Vec<ScanNode>> {
        Ok(match self.decided().await? {
            Self::Cluster(cluster) => cluster
                .masters()
                .into_iter()
                .map(|(host, port)| ScanNode::Master { host, port })
                .collect(),
            _ => vec![ScanNode::Standalone],
        })
    }

    /// One `SCAN` step on `node`: the next cursor (0 when the walk is done) and the keys of this
    /// step that match `pattern`.
    pub(super) async fn scan_step(
        &self,
        node: &ScanNode,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut command = redis::cmd("SCAN");
        command
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match (self.decided().await?, node) {
            (Self::Cluster(cluster), ScanNode::Master { host, port }) => {
                let answer = cluster.send_to(host, *port, &command).await?;
                Ok(redis::from_redis_value(answer)?)
            }
            (mut connection, _) => command.query_async(&mut connection).await,
        }
    }
}

/// What redis-rs takes of `tls`; `None` when nothing is set (a `rediss://` URL then verifies
/// against the system's roots).
fn certificates(tls: &TlsSettings) -> Option<TlsCertificates> {
    (!tls.is_empty()).then(|| TlsCertificates {
        client_tls: tls.client_pem().map(|(certificates, key)| ClientTlsConfig {
            client_cert: certificates.to_vec(),
            client_key: key.to_vec(),
        }),
        root_cert: tls.ca_pem().map(<[u8]>::to_vec),
    })
}

/// Asks the server whether it is a cluster node; `Err` when it cannot be asked now (down, or its
/// certificate does not verify).
async fn is_cluster(client: &redis::Client) -> RedisResult<bool> {
    let info: String = ask(client, &["INFO", "cluster"]).await?;
    Ok(info.contains("cluster_enabled:1"))
}

/// The answer of the server to the command of words `command`, over a connection of its own
/// made for it; `Err` when it cannot be asked now, or does not answer within [`PROBE_TIMEOUT`].
async fn ask<T: redis::FromRedisValue>(client: &redis::Client, command: &[&str]) -> RedisResult<T> {
    let asked = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd(command[0])
            .arg(&command[1..])
            .query_async(&mut connection)
            .await
    };
    tokio::time::timeout(PROBE_TIMEOUT, asked)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("Redis did not answer {} within 2 s", command.join(" ")),
            )
            .into())
        })
}

/// The `hash-max-listpack-value` (bytes) from which a session hash with a user agent or sealed
/// values stays a compact listpack; the README and docker-compose set it.
const ADVISED_LISTPACK_VALUE: u64 = 512;

/// Warns when the server keeps a hash as a compact listpack only while its values are shorter
/// than [`ADVISED_LISTPACK_VALUE`] (Redis's default is 64 bytes): a user agent, or any sealed
/// value, then turns a session hash into a hash table, with about twice the memory and slower
/// reads. Asked once, beside the connection being made; says nothing when the server cannot be
/// reached then or will not tell (`CONFIG` disabled, as some hosted Redis services do).
async fn advise_on_hash_encoding(client: redis::Client) {
    // The old name, which Redis 7 still answers to, so that Redis 6 answers too.
    let asked = ask::<Vec<String>>(&client, &["CONFIG", "GET", "hash-max-ziplist-value"]);
    let answer = match asked.await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::debug!(error = %Chain(&error), "Redis does not tell its hash-max-listpack-value");
            return;
        }
    };
    let value = answer.get(1).and_then(|value| value.parse::<u64>().ok());
    if let Some(value) = value.filter(|value| *value < ADVISED_LISTPACK_VALUE) {
        tracing::warn!(
            hash_max_listpack_value = value,
            "Redis keeps a session hash compact only while every value is at most {value} bytes; a user agent or a sealed token is longer, and turns it into a hash table with about twice the memory and slower reads. Set hash-max-listpack-value {ADVISED_LISTPACK_VALUE} in Redis's configuration (see the README's storage section)."
        );
    }
}

/// Notes a `MOVED` answer of a server talked to as a standalone one (an error, or a server
/// error among the values of an answer), and says once in the log what it means.
fn note_moved<'v>(
    moved: &AtomicBool,
    result: Result<impl IntoIterator<Item = &'v Value>, &redis::RedisError>,
) {
    let answered_moved = match result {
        Err(error) => error.kind() == ErrorKind::Server(ServerErrorKind::Moved),
        Ok(values) => values.into_iter().any(|value| {
            matches!(value, Value::ServerError(error) if error.kind() == Some(ServerErrorKind::Moved))
        }),
    };
    if answered_moved && !moved.swap(true, Ordering::Relaxed) {
        tracing::error!("Redis answered MOVED: it is a Redis Cluster node, but REDIS_CLUSTER=no has the service talk to it as a standalone server; set REDIS_CLUSTER=yes (or auto) and restart. Not ready until then.");
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone {
                connection,
                moved,
                waits,
            } => Box::pin(async move {
                let result = connection.req_packed_command(cmd).await;
                note_moved(moved, result.as_ref().map(std::iter::once));
                waits.note(&result);
                result
            }),
            Self::Cluster(cluster) => Box::pin(cluster.send(cmd)),
            Self::Undecided(undecided) => Box::pin(async move {
                let mut connection = undecided.connection().await?;
                connection.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone {
                connection,
                moved,
                waits,
            } => Box::pin(async move {
                let result = connection
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                note_moved(moved, result.as_ref());
                waits.note(&result);
                result
            }),
            // The store sends no pipelines to a cluster.
            Self::Cluster(_) => Box::pin(async {
                Err((
                    ErrorKind::Client,
                    "pipelines are not sent to a Redis Cluster",
                )
                    .into())
            }),
            Self::Undecided(undecided) => Box::pin(async move {
                let mut connection = undecided.connection().await?;
                connection
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone { connection, .. } => connection.get_db(),
            Self::Cluster(_) => 0,
            Self::Undecided(undecided) => undecided.decided.get().map_or(0, |c| c.get_db()),
        }
    }
}
