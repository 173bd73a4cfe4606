//! The store's own Redis Cluster client: one reconnecting connection per master, each request
//! sent to the master that owns its key's hash slot, by a slot map learned from `CLUSTER SLOTS`.
//! A master that cannot be reached fails only the requests of its own slots. (redis-rs's cluster
//! connection stops every request while it recovers from a single dead node: with one master of
//! three killed, no request to the other two was answered for a minute.) The map is learned again
//! when a node answers `MOVED` (the request is then sent once more) or cannot be reached, so that
//! a replica promoted in its master's place takes over its slots.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    Arg, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisResult,
    ServerErrorKind, TlsCertificates, Value,
};
use tokio::time::Instant;

use super::wait::{connection_lost, Waits};
use crate::telemetry::Chain;

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16_384;
/// The slot map is learned again at most this often.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(250);
/// How long one node may take to answer `CLUSTER SLOTS`.
const ASK_SLOTS_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a command goes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The master of this slot.
    Slot(u16),
    /// Every master, each of which must answer (`PING`).
    EveryMaster,
    /// Every master; one answer is enough (`SCRIPT LOAD`: the script's node is the one that
    /// counts, and its `EVALSHA` fails if that one did not load it).
    EveryReachableMaster,
    /// Any master (a command without key).
    AnyMaster,
}

/// A master: its address and its connection.
#[derive(Clone)]
struct Master {
    host: String,
    port: u16,
    connection: ConnectionManager,
    /// The `WAIT`s of that connection.
    waits: Arc<Waits>,
}

impl Master {
    /// Sends `cmd` over this master's connection, noting a lost connection for its `WAIT`s.
    async fn request(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let answer = self.connection.req_packed_command(cmd).await;
        self.waits.note(&answer);
        answer
    }
}

/// Which master serves which slots.
#[derive(Default)]
struct SlotMap {
    /// `(first slot, last slot, index into masters)`, by first slot.
    ranges: Vec<(u16, u16, usize)>,
    masters: Vec<Master>,
}

impl SlotMap {
    /// Which address serves which slots.
    fn layout(&self) -> Vec<(u16, u16, &str, u16)> {
        self.ranges
            .iter()
            .map(|&(first, last, at)| {
                let master = &self.masters[at];
                (first, last, master.host.as_str(), master.port)
            })
            .collect()
    }

    fn master_of(&self, slot: u16) -> Option<&Master> {
        let at = self.ranges.partition_point(|(_, last, _)| *last < slot);
        let (first, _, master) = self.ranges.get(at)?;
        (*first <= slot).then(|| &self.masters[*master])
    }
}

/// A cluster connection; share it through an `Arc`.
pub struct Cluster {
    seed: ConnectionInfo,
    certificates: Option<TlsCertificates>,
    config: ConnectionManagerConfig,
    map: RwLock<Arc<SlotMap>>,
    /// When the map was last learned; held while it is learned, so that one task learns it.
    learned: tokio::sync::Mutex<Option<Instant>>,
    /// Whether a background task is about to learn the map (one is enough).
    learning_soon: std::sync::atomic::AtomicBool,
    /// Lost connections to any master, and changes of the slot map, counted for the `WAIT`s of
    /// every master: a `WAIT` sent to a slot's master after either may not be on the connection
    /// that made the writes it is to cover.
    losses: Arc<std::sync::atomic::AtomicU64>,
}

impl Cluster {
    /// Connects through the seed node `url`, which must answer now with the slot map.
    pub async fn connect(
        url: &str,
        certificates: Option<TlsCertificates>,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Arc<Self>> {
        let cluster = Arc::new(Self {
            seed: url.into_connection_info()?,
            certificates,
            config,
            map: RwLock::default(),
            learned: tokio::sync::Mutex::new(None),
            learning_soon: std::sync::atomic::AtomicBool::new(false),
            losses: Arc::default(),
        });
        let map = cluster.learn().await?;
        *cluster.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(cluster)
    }

    fn map(&self) -> Arc<SlotMap> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The masters' addresses, as the slot map has them.
    pub fn masters(&self) -> Vec<(String, u16)> {
        let map = self.map();
        map.masters
            .iter()
            .map(|master| (master.host.clone(), master.port))
            .collect()
    }

    /// Sends `cmd` to the master at `host:port`.
    pub async fn send_to(&self, host: &str, port: u16, cmd: &Cmd) -> RedisResult<Value> {
        let master = self
            .map()
            .masters
            .iter()
            .find(|master| master.host == host && master.port == port)
            .cloned();
        let Some(mut master) = master else {
            return Err(unreachable(format!("{host}:{port} is no master now")));
        };
        master.request(cmd).await
    }

    /// Sends `cmd` where its key's slot lives (or to every or any master).
    pub async fn send(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<Value> {
        match target(cmd) {
            Target::Slot(slot) => self.send_to_slot(slot, cmd).await,
            target @ (Target::EveryMaster | Target::EveryReachableMaster) => {
                let masters = self.map().masters.clone();
                let answers = futures_util::future::join_all(
                    masters
                        .into_iter()
                        .map(|mut master| async move { master.request(cmd).await }),
                )
                .await;
                let (answered, failed): (Vec<_>, Vec<_>) =
                    answers.into_iter().partition(Result::is_ok);
                let first = |answers: Vec<RedisResult<Value>>| answers.into_iter().next();
                let answer = match target {
                    Target::EveryMaster => first(failed).or_else(|| first(answered)),
                    _ => first(answered).or_else(|| first(failed)),
                };
                answer.unwrap_or_else(|| Err(unreachable("the cluster has no master".into())))
            }
            Target::AnyMaster => {
                let master = self.map().masters.first().cloned();
                let Some(mut master) = master else {
                    return Err(unreachable("the cluster has no master".into()));
                };
                master.request(cmd).await
            }
        }
    }

    /// Sends `wait` (a `WAIT`) to the master of `key`'s slot, shared with the callers whose
    /// writes that master's connection had made before it went out.
    pub async fn wait_by_key(self: &Arc<Self>, key: &[u8], wait: &Cmd) -> RedisResult<i64> {
        let mut master = self.master_for(slot(key))?;
        let waits = master.waits.clone();
        let answer = waits
            .wait(|| async move {
                let answer = master.connection.req_packed_command(wait).await?;
                Ok(redis::from_redis_value(answer)?)
            })
            .await;
        self.learn_soon_if_unreachable(&answer);
        answer
    }

    /// The master of `slot`, as the slot map has it.
    fn master_for(self: &Arc<Self>, slot: u16) -> RedisResult<Master> {
        self.map().master_of(slot).cloned().ok_or_else(|| {
            self.learn_soon();
            unreachable(format!("no master serves slot {slot}"))
        })
    }

    async fn send_to_slot(self: &Arc<Self>, slot: u16, cmd: &Cmd) -> RedisResult<Value> {
        let mut moved_once = false;
        loop {
            let answer = self.master_for(slot)?.request(cmd).await;
            if moved(&answer) && !moved_once {
                // The slot has another master now (a failover or resharding): learn, send again.
                moved_once = true;
                self.learn_again().await;
                continue;
            }
            self.learn_soon_if_unreachable(&answer);
            return answer;
        }
    }

    /// Learns the slot map again in the background when `answer` says that its node could not
    /// be reached.
    fn learn_soon_if_unreachable<T>(self: &Arc<Self>, answer: &RedisResult<T>) {
        if answer.as_ref().is_err_and(connection_lost) {
            self.learn_soon();
        }
    }

    /// Learns the slot map again in the background (a node could not be reached: perhaps a
    /// replica has taken its place).
    fn learn_soon(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.learning_soon.swap(true, Ordering::AcqRel) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            cluster.learning_soon.store(false, Ordering::Release);
            cluster.learn_again().await;
        });
    }

    /// Learns the slot map again, unless it was learned a moment ago.
    async fn learn_again(&self) {
        let mut learned = self.learned.lock().await;
        if learned.is_some_and(|at| at.elapsed() < REFRESH_AT_MOST_EVERY) {
            return;
        }
        match self.learn().await {
            Ok(map) => {
                let addresses = |map: &SlotMap| {
                    let mut addresses: Vec<String> = map
                        .masters
                        .iter()
                        .map(|master| format!("{}:{}", master.host, master.port))
                        .collect();
                    addresses.sort();
                    addresses
                };
                let masters = addresses(&map);
                let known = self.map();
                if masters != addresses(&known) {
                    tracing::info!(?masters, "the Redis Cluster's masters changed");
                }
                if map.layout() != known.layout() {
                    self.losses
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
            }
            Err(error) => {
                tracing::debug!(error = %Chain(&error), "cannot learn the cluster's slot map now")
            }
        }
        *learned = Some(Instant::now());
    }

    /// Asks the known masters, then the seed, for `CLUSTER SLOTS`; the first answer wins.
    async fn learn(&self) -> RedisResult<SlotMap> {
        let known = self.map();
        let mut askable: Vec<ConnectionManager> = known
            .masters
            .iter()
            .map(|master| master.connection.clone())
            .collect();
        askable.push(self.connection_to(&self.seed)?);
        let mut last_error = unreachable("no node to ask".into());
        for mut connection in askable {
            let mut ask = redis::cmd("CLUSTER");
            ask.arg("SLOTS");
            let asked = ask.query_async::<Vec<Value>>(&mut connection);
            match tokio::time::timeout(ASK_SLOTS_TIMEOUT, asked).await {
                Ok(Ok(ranges)) => return self.slot_map(&known, ranges),
                Ok(Err(error)) => last_error = error,
                Err(_) => last_error = unreachable("CLUSTER SLOTS timed out".into()),
            }
        }
        Err(last_error)
    }

    /// The slot map of a `CLUSTER SLOTS` answer, keeping the connections of known masters.
    fn slot_map(&self, known: &SlotMap, ranges: Vec<Value>) -> RedisResult<SlotMap> {
        let mut map = SlotMap::default();
        // Each range: [first slot, last slot, [host, port, id, …] of its master, replicas…].
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Some(first), Some(last), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let (Some(host), Some(port)) = (master.first(), master.get(1)) else {
                continue;
            };
            let host: String = redis::from_redis_value_ref(host)?;
            let port: u16 = redis::from_redis_value_ref(port)?;
            let index = match map
                .masters
                .iter()
                .position(|m| m.host == host && m.port == port)
            {
                Some(index) => index,
                None => {
                    let reused = known
                        .masters
                        .iter()
                        .find(|m| m.host == host && m.port == port);
                    let (connection, waits) = match reused {
                        Some(master) => (master.connection.clone(), master.waits.clone()),
                        None => (
                            self.connection_to(&self.node_info(&host, port))?,
                            Arc::new(Waits::counting_losses_in(self.losses.clone())),
                        ),
                    };
                    map.masters.push(Master {
                        host,
                        port,
                        connection,
                        waits,
                    });
                    map.masters.len() - 1
                }
            };
            map.ranges.push((
                redis::from_redis_value_ref(first)?,
                redis::from_redis_value_ref(last)?,
                index,
            ));
        }
        map.ranges.sort_unstable();
        Ok(map)
    }

    /// The seed's connection settings (password, database, TLS) for the node `host:port`.
    fn node_info(&self, host: &str, port: u16) -> ConnectionInfo {
        let addr = match self.seed.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        self.seed.clone().set_addr(addr)
    }

    /// A lazy, reconnecting connection to a node.
    fn connection_to(&self, info: &ConnectionInfo) -> RedisResult<ConnectionManager> {
        let client = match &self.certificates {
            Some(certificates) => {
                redis::Client::build_with_tls(info.clone(), certificates.clone())?
            }
            None => redis::Client::open(info.clone())?,
        };
        ConnectionManager::new_lazy_with_config(client, self.config.clone())
    }
}

/// Where `cmd` goes: the slot of its first key, or every or any master for keyless commands.
fn target(cmd: &Cmd) -> Target {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next().map(<[u8]>::to_ascii_uppercase);
    let key = match name.as_deref() {
        Some(b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO") => {
            let _script = args.next();
            let keys = args
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u32>().ok());
            keys.filter(|keys| *keys > 0).and_then(|_| args.next())
        }
        Some(b"PING") => return Target::EveryMaster,
        Some(b"SCRIPT") => return Target::EveryReachableMaster,
        Some(b"INFO" | b"CLUSTER" | b"SCAN" | b"WAIT") | None => None,
        Some(_) => args.next(),
    };
    key.map_or(Target::AnyMaster, |key| Target::Slot(slot(key)))
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (`{…}`), or of the whole key.
fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS
}

/// Whether Redis answered `MOVED`, as an error or as a server error value.
fn moved(answer: &RedisResult<Value>) -> bool {
    match answer {
        Err(error) => error.kind() == ErrorKind::Server(ServerErrorKind::Moved),
        Ok(Value::ServerError(error)) => error.kind() == Some(ServerErrorKind::Moved),
        Ok(_) => false,
    }
}

/// An error that counts as Redis out of reach.
fn unreachable(why: String) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::NotConnected, why).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_of_redis_cluster() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12_739);
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty first tag: the whole key.
        let whole = |key: &[u8]| crc16::State::<crc16::XMODEM>::calculate(key) % SLOTS;
        assert_eq!(slot(b"foo{}{bar}"), whole(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn commands_go_to_the_slot_of_their_first_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc")
            .arg(2)
            .arg("p:{ab}:x")
            .arg("p:{ab}:y")
            .arg("v");
        assert_eq!(target(&eval), Target::Slot(slot(b"ab")));
        let mut no_keys = redis::cmd("EVALSHA");
        no_keys.arg("abc").arg(0).arg("v");
        assert_eq!(target(&no_keys), Target::AnyMaster);
        let mut hgetall = redis::cmd("HGETALL");
        hgetall.arg("p:{cd}:s");
        assert_eq!(target(&hgetall), Target::Slot(slot(b"cd")));
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(target(&load), Target::EveryReachableMaster);
        assert_eq!(target(&redis::cmd("PING")), Target::EveryMaster);
    }
}
