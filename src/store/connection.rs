//! The connection to Redis: one multiplexed, reconnecting connection to a standalone server, or
//! a cluster connection that routes each script call to the node owning its hash slot. Which
//! one is decided at start (`REDIS_CLUSTER`, or by asking the server when it is `auto`). Over
//! `rediss://`, each is TLS, verified against the CA file or the system's roots, with the client
//! certificate of the [`TlsSettings`] if any.

use std::time::Duration;

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    ClientTlsConfig, Cmd, ConnectionAddr, Pipeline, RedisFuture, RedisResult, TlsCertificates,
    Value,
};

use crate::{
    telemetry::Chain,
    tls::{self, TlsSettings, Transport},
};

/// Redis answers within this time or the request fails (redis-rs would default to 500 ms,
/// too short for a large DeleteUserSessions).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to talk to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server.
    Standalone,
    /// A Redis Cluster (the URL names a seed node).
    Cluster,
    /// Ask the server at start (`INFO cluster`); standalone when it cannot be reached then.
    Auto,
}

/// A standalone or cluster connection; cheap to clone.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnecting.
    Standalone(ConnectionManager),
    /// A cluster, routing by hash slot.
    Cluster(ClusterConnection),
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
    /// not verify); a cluster connection needs its seed node now to learn the slots.
    pub async fn open(url: &str, tls: &TlsSettings, mode: RedisMode) -> RedisResult<Self> {
        // redis-rs builds its TLS configurations with the process's default provider.
        tls::provider();
        let certificates = certificates(tls);
        let client = match &certificates {
            Some(certificates) => redis::Client::build_with_tls(url, certificates.clone())?,
            None => redis::Client::open(url)?,
        };
        let cluster = match mode {
            RedisMode::Standalone => false,
            RedisMode::Cluster => true,
            RedisMode::Auto => is_cluster(&client).await,
        };
        if cluster {
            let mut builder = ClusterClientBuilder::new(vec![url])
                .response_timeout(RESPONSE_TIMEOUT)
                .connection_timeout(CONNECT_TIMEOUT)
                .retries(2);
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            let connection = builder.build()?.get_async_connection().await?;
            return Ok(Self::Cluster(connection));
        }
        // Few, short reconnect attempts per request, so that while Redis is down a request
        // fails as `unavailable` within seconds instead of waiting out a long backoff.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500));
        Ok(Self::Standalone(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }
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
        let Self::Cluster(connection) = self else {
            return Ok(vec![ScanNode::Standalone]);
        };
        let ranges: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection.clone())
            .await?;
        let mut nodes = Vec::new();
        // Each range: [first slot, last slot, [host, port, id, …] of its master, replicas…].
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(master)) = parts.get(2) else {
                continue;
            };
            let (Some(host), Some(port)) = (master.first(), master.get(1)) else {
                continue;
            };
            let node = ScanNode::Master {
                host: redis::from_redis_value_ref(host)?,
                port: redis::from_redis_value_ref(port)?,
            };
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        Ok(nodes)
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
        match (self, node) {
            (Self::Cluster(connection), ScanNode::Master { host, port }) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let answer = connection.clone().route_command(command, routing).await?;
                Ok(redis::from_redis_value(answer)?)
            }
            (connection, _) => command.query_async(&mut connection.clone()).await,
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

/// Asks the server whether it is a cluster node. One that cannot be asked (down, or its
/// certificate does not verify) is taken for a standalone server, and the log says why.
async fn is_cluster(client: &redis::Client) -> bool {
    let probe = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut connection)
            .await?;
        Ok::<_, redis::RedisError>(info.contains("cluster_enabled:1"))
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(error)) => {
            tracing::warn!(error = %Chain(&error), "Redis not reachable at start; assuming a standalone server");
            false
        }
        Err(_) => {
            tracing::warn!(
                "Redis did not answer within 2 s at start; assuming a standalone server"
            );
            false
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}
