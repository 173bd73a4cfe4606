//! `session-bench`: measures the service against minimal ceilings built from the same crates,
//! on the local Redis and RabbitMQ, and prints a table (optionally written to
//! `docs/BENCHMARKS.md`). A package of its own, so that building or installing the service does
//! not build it.
//!
//! ```text
//! cargo build --release --bin session-manager            # the service it measures
//! cargo run --release -p session-bench                    # full run, prints the table
//! cargo run --release -p session-bench -- --write         # also writes docs/BENCHMARKS.md
//! cargo run --release -p session-bench -- --smoke         # a few hundred ms per case (CI)
//! cargo run --release -p session-bench -- --only "REST get"   # the cases starting so
//! cargo run --release -p session-bench -- --only scale         # the scale part alone
//! cargo run --release -p session-bench -- --only scale --large 10000   # both stores alike
//! cargo run --release -p session-bench -- --only idle     # idle Redis CPU, 1 and 8 instances
//! cargo run --release -p session-bench -- --only fleet    # 1, 2, 4 instances; a 3-master cluster
//! cargo run --release -p session-bench -- --only wait     # the cost of REDIS_WAIT_REPLICAS=1
//! cargo run --release -p session-bench -- --only churn    # expiry lateness, instances come and go
//! ```
//!
//! The service runs as a child process (the `session-manager` binary next to this one, or
//! `--service`), so its peak RSS can be read; the ceilings run as child processes of this same
//! binary (`session-bench ceiling-rest|ceiling-amqp`): a bare warp handler doing one Redis round
//! trip per request, and a bare lapin consumer doing one Redis round trip and replying. Each case
//! alternates rounds of the ceiling and the service, so that drift of the machine cancels.
//! A benchmark, not a test: it asserts nothing.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
    BasicProperties, Connection, ConnectionProperties,
};
use redis::AsyncCommands;
use serde_json::{json, Value};
use session_manager_client::amqp::{AmqpClient, CallError};
use session_manager_testkit::{
    free_port, wait_for_port, Service, LOCAL_AMQP_URL as AMQP_URL, LOCAL_REDIS_URL as REDIS_URL,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::Mutex,
};

/// The same allocator as the service, so that the ceilings are built from the same parts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HTTP_CONNECTIONS: usize = 50;
const AMQP_IN_FLIGHT: usize = 64;
/// In docs/BENCHMARKS.md, the start of the hand-written notes that `--write` keeps.
const NOTES_MARKER: &str = "<!-- notes: kept by session-bench --write -->";

/// Sessions created before the run, read and updated by it.
const FIXTURE_SESSIONS: usize = 10_000;

mod fleet;
mod idle;
mod pairs;
mod scale;

/// The command line.
#[derive(Parser)]
#[command(
    name = "session-bench",
    about = "Measures session-manager against minimal ceilings"
)]
struct Cli {
    /// Run as one of the ceilings (started by the benchmark itself).
    #[command(subcommand)]
    ceiling: Option<Ceiling>,
    /// A few hundred ms per case and small stores: checks that the tool works (CI).
    #[arg(long)]
    smoke: bool,
    /// Also write the report to docs/BENCHMARKS.md, keeping its hand-written notes.
    #[arg(long)]
    write: bool,
    /// Only the cases whose name starts so (e.g. "REST get", "AMQP"), or "scale", or "idle".
    #[arg(long)]
    only: Option<String>,
    /// Sessions in the large store of the scale part (default 1,000,000; 20,000 with --smoke).
    #[arg(long)]
    large: Option<usize>,
    /// The service binary (default: the `session-manager` next to this binary).
    #[arg(long)]
    service: Option<PathBuf>,
    /// "off": sessions without ip_address and user_agent, for a service that predates them
    /// (A/B runs against an older build).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    device_fields: String,
    /// The Redis of the service, the ceilings and the fixtures (not of the scale part, which
    /// starts its own).
    #[arg(long, default_value = REDIS_URL)]
    redis_url: String,
}

/// The ceilings, each a child process of the benchmark.
#[derive(Subcommand)]
enum Ceiling {
    /// A bare warp handler doing one Redis round trip per request.
    CeilingRest {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        prefix: String,
    },
    /// A bare lapin consumer doing one Redis round trip per command, then replying.
    CeilingAmqp {
        #[arg(long)]
        queue: String,
        #[arg(long)]
        prefix: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.ceiling {
        Some(Ceiling::CeilingRest { port, prefix }) => {
            return ceiling_rest(port, prefix, &cli.redis_url).await
        }
        Some(Ceiling::CeilingAmqp { queue, prefix }) => {
            return ceiling_amqp(&queue, prefix, &cli.redis_url).await
        }
        None => {}
    }
    let smoke = cli.smoke;
    DEVICE_FIELDS.store(cli.device_fields == "on", Ordering::Relaxed);
    let service = match cli.service {
        Some(path) => path,
        None => sibling("session-manager")?,
    };
    let plan = Plan {
        service: &service,
        redis_url: &cli.redis_url,
        round: if smoke {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3)
        },
        rounds: if smoke { 1 } else { 3 },
        only: cli.only.as_deref(),
        small: if smoke { 2_000 } else { 10_000 },
        large: cli.large.unwrap_or(if smoke { 20_000 } else { 1_000_000 }),
        big_user: if smoke {
            2 * session_manager::store::DELETE_STEP + 1
        } else {
            10_000
        },
        probe_requests: if smoke { 200 } else { 2_000 },
        many_sessions: if smoke { 2_000 } else { 100_000 },
    };
    let report = run(&plan).await?;
    println!("{report}");
    if cli.write {
        std::fs::create_dir_all("docs")?;
        // The notes under NOTES_MARKER are written by hand and kept.
        let notes = std::fs::read_to_string("docs/BENCHMARKS.md")
            .ok()
            .and_then(|old| old.find(NOTES_MARKER).map(|at| old[at..].to_owned()))
            .unwrap_or_default();
        std::fs::write("docs/BENCHMARKS.md", format!("{report}\n{notes}"))?;
        eprintln!("written to docs/BENCHMARKS.md");
    }
    Ok(())
}

/// Starts the service binary on a free port with the key prefix, its queue and exchange named
/// `<names>.commands` and `<names>.events`, over the Redis at `redis_url`; returns once it
/// listens.
fn spawn_service(service: &Path, prefix: &str, names: &str, redis_url: &str) -> Service {
    Service::start(
        &mut service_command(service, prefix, names, redis_url),
        free_port(),
    )
}

/// The command that [`spawn_service`] runs, for a caller that adds settings.
fn service_command(service: &Path, prefix: &str, names: &str, redis_url: &str) -> Command {
    let mut command = Command::new(service);
    command
        .env("REDIS_URL", redis_url)
        .env("SESSION_KEY_PREFIX", prefix)
        .env("SESSION_COMMAND_QUEUE", format!("{names}.commands"))
        .env("SESSION_EVENTS_EXCHANGE", format!("{names}.events"))
        .env("RUST_LOG", "warn");
    command
}

/// A child process killed when dropped.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --bin {name}) or name it with --service",
            path.display()
        );
    }
    Ok(path)
}

/// CPU seconds (user and system) that process `pid` has used so far; 0 when it cannot be read.
pub(crate) fn process_cpu(pid: u32) -> f64 {
    // /proc/<pid>/stat: after the command name in parentheses, utime and stime are the 12th and
    // 13th fields, in clock ticks (100 a second on Linux).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |at: usize| {
        fields
            .get(at)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size of a process, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// Load: latencies of requests run by a fixed number of concurrent workers for a time.

#[derive(Default)]
struct Sample {
    ops: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    errors: usize,
    /// Redis CPU seconds while the sample was taken.
    redis_cpu: f64,
    /// CPU seconds of the service's instances (or of the ceiling) while it was taken, and of
    /// RabbitMQ (measured by the fleet part only).
    service_cpu: f64,
    broker_cpu: f64,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.ops += other.ops;
        self.elapsed += other.elapsed;
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.redis_cpu += other.redis_cpu;
        self.service_cpu += other.service_cpu;
        self.broker_cpu += other.broker_cpu;
    }

    /// `cpu` seconds per operation, in microseconds.
    fn us_per_op(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.ops.max(1) as f64
    }

    /// CPU time of the service (or the ceiling) per operation, in microseconds.
    fn service_us_per_op(&self) -> f64 {
        self.us_per_op(self.service_cpu)
    }

    /// Redis CPU time per operation, in microseconds.
    fn redis_us_per_op(&self) -> f64 {
        self.us_per_op(self.redis_cpu)
    }

    /// The share of one core Redis used.
    fn redis_busy(&self) -> f64 {
        self.redis_cpu / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let at = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[at]) / 1000.0
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 keep-alive client: the load generator must cost little CPU, since it
// shares the two cores with the service and Redis.

struct HttpConnection {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    line: String,
    /// `Authorization: Bearer <token>\r\n`, or nothing: sent with every request.
    authorization: String,
}

impl HttpConnection {
    async fn open(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer,
            line: String::new(),
            authorization: String::new(),
        })
    }

    /// Sends `token` as the bearer token of every request (none: no `Authorization` header).
    fn with_token(mut self, token: Option<&str>) -> Self {
        self.authorization = token.map_or_else(String::new, |token| {
            format!("Authorization: Bearer {token}\r\n")
        });
        self
    }

    /// Sends one request and returns the status and body.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let auth = &self.authorization;
        let request = if body.is_empty() {
            format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n")
        } else {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        self.writer.write_all(request.as_bytes()).await?;
        self.line.clear();
        self.reader.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("no status line")?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).await?;
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// One REST operation of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Get,
    Create,
    List,
    Update,
    Delete,
    Mix,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Create => "create",
            Op::List => "list",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Mix => "mix",
        }
    }

    /// The mix: 70% get, 10% create, 10% list, 5% update, 5% delete.
    fn pick(self, n: usize) -> Op {
        if self != Op::Mix {
            return self;
        }
        match n % 20 {
            0..=13 => Op::Get,
            14 | 15 => Op::Create,
            16 | 17 => Op::List,
            18 => Op::Update,
            _ => Op::Delete,
        }
    }
}

/// Sessions to read and users to list, and ids to delete (each deleted once).
struct Fixture {
    ids: Vec<String>,
    users: Vec<String>,
    deletable: Mutex<Vec<String>>,
}

/// Every benchmark session carries the device fields of a "your devices" page (contract §7.6),
/// unless `--device-fields off`.
const BODY: &str = r#"{"user_id":"bench-user-0","device_id":"bench-device","access_token":"a-token-of-some-length-0123456789abcdef","refresh_token":"r-token-of-some-length-0123456789abcdef","expiration_time":3600,"user_email":"user@example.com","ip_address":"192.0.2.10","user_agent":"Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"}"#;

/// The device fields of [`BODY`], as written there.
const DEVICE_JSON: &str = r#","ip_address":"192.0.2.10","user_agent":"Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0""#;

/// `--device-fields`: whether created sessions carry [`DEVICE_JSON`].
static DEVICE_FIELDS: AtomicBool = AtomicBool::new(true);

/// The body of the `n`th create: fixture sessions (`n` below [`FIXTURE_SESSIONS`]) belong to
/// 1000 listed users, 10 each; later creates to other users, so that lists keep their size.
fn create_body(n: usize) -> String {
    let user = if n < FIXTURE_SESSIONS {
        format!("bench-user-{}", n % 1000)
    } else {
        format!("bench-new-{}", n % 100_000)
    };
    body_for(&user)
}

/// The benchmark's create body for a session of `user_id`.
fn body_for(user_id: &str) -> String {
    match DEVICE_FIELDS.load(Ordering::Relaxed) {
        true => BODY.replace("bench-user-0", user_id),
        false => BODY
            .replace(DEVICE_JSON, "")
            .replace("bench-user-0", user_id),
    }
}

/// Creates `count` sessions over [`HTTP_CONNECTIONS`] connections, the `n`th with `body(n)`, and
/// returns their ids; `token`: the bearer token of every request.
async fn create_sessions(
    port: u16,
    token: Option<&str>,
    count: usize,
    body: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<Vec<String>> {
    let body = Arc::new(body);
    let workers: Vec<_> = (0..HTTP_CONNECTIONS)
        .map(|worker| {
            let body = body.clone();
            let token = token.map(str::to_owned);
            tokio::spawn(async move {
                let mut http = HttpConnection::open(port)
                    .await?
                    .with_token(token.as_deref());
                let mut created = Vec::new();
                for n in (worker..count).step_by(HTTP_CONNECTIONS) {
                    let (status, answer) = http.send("POST", "/a01/session", &body(n)).await?;
                    if status != 201 {
                        bail!("create answered {status}");
                    }
                    let answer: Value = serde_json::from_slice(&answer)?;
                    created.push(answer["session_id"].as_str().unwrap_or_default().to_owned());
                }
                Ok::<_, anyhow::Error>(created)
            })
        })
        .collect();
    let mut created = Vec::with_capacity(count);
    for worker in workers {
        created.extend(worker.await??);
    }
    Ok(created)
}

async fn rest_worker(
    port: u16,
    token: Option<String>,
    op: Op,
    fixture: Arc<Fixture>,
    until: Instant,
    seed: usize,
) -> anyhow::Result<Sample> {
    let mut connection = HttpConnection::open(port)
        .await?
        .with_token(token.as_deref());
    let mut sample = Sample::default();
    let started = Instant::now();
    let mut n = seed.wrapping_mul(7919);
    while Instant::now() < until {
        n = n.wrapping_add(1);
        let id = &fixture.ids[n % fixture.ids.len()];
        let user = &fixture.users[n % fixture.users.len()];
        let begun = Instant::now();
        let (status, expected) = match op.pick(n) {
            Op::Get => (
                connection
                    .send("GET", &format!("/a01/session/{id}"), "")
                    .await?
                    .0,
                200,
            ),
            Op::Create => (
                connection
                    .send("POST", "/a01/session", &create_body(FIXTURE_SESSIONS + n))
                    .await?
                    .0,
                201,
            ),
            Op::List => (
                connection
                    .send("GET", &format!("/a01/session?user_id={user}"), "")
                    .await?
                    .0,
                200,
            ),
            Op::Update => (
                connection
                    .send(
                        "PATCH",
                        &format!("/a01/session/{id}"),
                        r#"{"access_token":"renewed"}"#,
                    )
                    .await?
                    .0,
                200,
            ),
            Op::Delete | Op::Mix => {
                let Some(victim) = fixture.deletable.lock().await.pop() else {
                    break;
                };
                (
                    connection
                        .send("DELETE", &format!("/a01/session/{victim}"), "")
                        .await?
                        .0,
                    200,
                )
            }
        };
        sample
            .latencies_us
            .push(begun.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        sample.ops += 1;
        if status != expected {
            sample.errors += 1;
        }
    }
    sample.elapsed = started.elapsed();
    Ok(sample)
}

/// Runs [`HTTP_CONNECTIONS`] workers for `round`, spread evenly over the instances listening
/// on `ports`; throughput over the round. `token`: the bearer token of every request.
async fn rest_load(
    ports: &[u16],
    token: Option<&str>,
    op: Op,
    fixture: &Arc<Fixture>,
    round: Duration,
) -> anyhow::Result<Sample> {
    let until = Instant::now() + round;
    let workers: Vec<_> = (0..HTTP_CONNECTIONS)
        .map(|seed| {
            let port = ports[seed % ports.len()];
            let token = token.map(str::to_owned);
            tokio::spawn(rest_worker(port, token, op, fixture.clone(), until, seed))
        })
        .collect();
    let mut total = Sample::default();
    let mut longest = Duration::ZERO;
    for worker in workers {
        let sample = worker.await??;
        longest = longest.max(sample.elapsed);
        total.merge(sample);
    }
    total.elapsed = longest;
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// The REST ceiling: warp, one Redis round trip per request.

async fn ceiling_rest(port: u16, prefix: String, redis_url: &str) -> anyhow::Result<()> {
    let prefix: &'static str = prefix.leak();
    use warp::Filter;
    let redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let get = {
        let redis = redis.clone();
        warp::get()
            .and(warp::path!("a01" / "session" / String))
            .then(move |id: String| {
                let mut redis = redis.clone();
                async move {
                    let fields: HashMap<String, String> = redis
                        .hgetall(format!("{prefix}:s:{id}"))
                        .await
                        .unwrap_or_default();
                    warp::reply::json(&fields)
                }
            })
    };
    let create = warp::post()
        .and(warp::path!("a01" / "session"))
        .and(warp::body::json())
        .then(move |body: HashMap<String, Value>| {
            let mut redis = redis.clone();
            async move {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let fields: Vec<(String, String)> =
                    body.into_iter().map(|(k, v)| (k, v.to_string())).collect();
                let _: Result<(), _> = redis
                    .hset_multiple(format!("{prefix}:s:{id}"), &fields)
                    .await;
                warp::reply::with_status(
                    warp::reply::json(&json!({"session_id": id})),
                    warp::http::StatusCode::CREATED,
                )
            }
        });
    warp::serve(get.or(create))
        .run(([127, 0, 0, 1], port))
        .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The AMQP ceiling: lapin, one Redis round trip per command, then the reply.

async fn ceiling_amqp(queue: &str, prefix: String, redis_url: &str) -> anyhow::Result<()> {
    let prefix: &'static str = prefix.leak();
    let redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // The same kind of queue as the service's command queue: durable and quorum.
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum,
        )
        .await?;
    channel
        .basic_qos(AMQP_IN_FLIGHT as u16, BasicQosOptions::default())
        .await?;
    let replies = connection.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(Ok(delivery)) = consumer.next().await {
        let mut redis = redis.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let command: Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
            let id = command["session_id"].as_str().unwrap_or_default();
            let fields: HashMap<String, String> = redis
                .hgetall(format!("{prefix}:s:{id}"))
                .await
                .unwrap_or_default();
            let body =
                serde_json::to_vec(&json!({"status": "ok", "result": fields})).unwrap_or_default();
            if let Some(reply_to) = delivery.properties.reply_to() {
                let mut properties = BasicProperties::default();
                if let Some(correlation_id) = delivery.properties.correlation_id() {
                    properties = properties.with_correlation_id(correlation_id.clone());
                }
                let _ = replies
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await;
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        });
    }
    Ok(())
}

/// `AMQP_IN_FLIGHT` persistent commands kept in flight through one client of the client crate
/// (publisher confirms on), for `round`. Commands carry no `message_id`, as most reads do, and
/// are not published again: a reply that does not come within 10 s counts as an error.
/// `message_ids`: each command carries a fresh `message_id`, as a publisher that retries would
/// send it. `amqp_user`: the `user_id` of every command (the user of `connection`), as a
/// service with callers needs it.
async fn amqp_load(
    connection: &Connection,
    queue: &str,
    amqp_user: Option<&str>,
    op: Op,
    fixture: &Arc<Fixture>,
    round: Duration,
    message_ids: bool,
) -> anyhow::Result<Sample> {
    let client = AmqpClient::with_connection(connection, queue)
        .await?
        .with_timeout(Duration::from_secs(10));
    let client = Arc::new(match amqp_user {
        Some(user) => client.with_amqp_user(user),
        None => client,
    });
    let until = Instant::now() + round;
    let started = Instant::now();
    let workers: Vec<_> = (0..AMQP_IN_FLIGHT)
        .map(|seed| {
            let client = client.clone();
            let fixture = fixture.clone();
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let mut n = seed.wrapping_mul(7919);
                while Instant::now() < until {
                    n = n.wrapping_add(1);
                    let id = &fixture.ids[n % fixture.ids.len()];
                    let user = &fixture.users[n % fixture.users.len()];
                    let command = match op.pick(n) {
                        Op::Get => json!({"type": "GetSession", "session_id": id}),
                        Op::Create => {
                            let mut body: Value =
                                serde_json::from_str(&create_body(FIXTURE_SESSIONS + n))?;
                            body["type"] = json!("CreateSession");
                            body
                        }
                        Op::List => json!({"type": "ListSessions", "user_id": user}),
                        Op::Update => json!({"type": "UpdateSession", "session_id": id, "access_token": "renewed"}),
                        Op::Delete | Op::Mix => {
                            let Some(victim) = fixture.deletable.lock().await.pop() else {
                                break;
                            };
                            json!({"type": "DeleteSession", "session_id": victim})
                        }
                    };
                    let begun = Instant::now();
                    let message_id =
                        message_ids.then(|| uuid::Uuid::new_v4().simple().to_string());
                    match client
                        .call_raw(command.to_string().as_bytes(), message_id.as_deref())
                        .await
                    {
                        Ok(_) => {
                            let took = begun.elapsed().as_micros().min(u128::from(u32::MAX));
                            sample.latencies_us.push(took as u32);
                            sample.ops += 1;
                        }
                        Err(CallError::Timeout { .. }) => sample.errors += 1,
                        Err(error) => return Err(error.into()),
                    }
                }
                Ok::<_, anyhow::Error>(sample)
            })
        })
        .collect();
    let mut total = Sample::default();
    for worker in workers {
        total.merge(worker.await??);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

// ---------------------------------------------------------------------------------------------

/// What one run measures.
struct Plan<'a> {
    /// The service binary.
    service: &'a Path,
    /// `--redis-url`.
    redis_url: &'a str,
    round: Duration,
    rounds: usize,
    /// `--only`: the load cases whose name starts so.
    only: Option<&'a str>,
    /// The scale part's sizes (see `scale.rs`).
    small: usize,
    large: usize,
    big_user: usize,
    probe_requests: usize,
    /// The sessions of the user whose list is paged at scale.
    many_sessions: usize,
}

impl Plan<'_> {
    /// Whether to run the part named `part` (`scale`, `idle`, `fleet`, `wait`, `churn`): with no
    /// `--only`, or with `--only <part>`.
    fn runs(&self, part: &str) -> bool {
        self.only.is_none_or(|only| only == part)
    }
}

struct Row {
    case: String,
    sample: Sample,
    ceiling: Option<Sample>,
}

/// Runs the benchmark, then removes what it created (also when it failed): its queues and
/// exchanges on RabbitMQ and its keys in the shared Redis.
async fn run(plan: &Plan<'_>) -> anyhow::Result<String> {
    // Short, so that keys are about as long as under the default prefix `session-manager`.
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let report = measure(plan, &run_id).await;
    clean_up(&run_id, plan.redis_url).await?;
    report
}

async fn clean_up(run_id: &str, redis_url: &str) -> anyhow::Result<()> {
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let suffixes = [
        "",
        ".small",
        ".large",
        ".sealed",
        ".callers",
        ".idle",
        ".wait-nowait",
        ".wait-wait",
        ".churn",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain(fleet::names_suffixes());
    for names in suffixes.map(|suffix| format!("bench.{run_id}{suffix}")) {
        for queue in [
            format!("{names}.commands"),
            format!("{names}.commands.dead"),
        ] {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let events = format!("{names}.events");
        let _ = channel
            .exchange_delete(events.as_str().into(), Default::default())
            .await;
    }
    let ceiling_queue = format!("bench.{run_id}.ceiling");
    let _ = channel
        .queue_delete(ceiling_queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    for pattern in [
        format!("bench-{run_id}:*"),
        format!("bench-{run_id}-ceiling:*"),
        format!("bench-{run_id}-sealed:*"),
        format!("bench-{run_id}-callers:*"),
    ] {
        // SCAN, not KEYS: a run leaves hundreds of thousands of keys.
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = redis.scan_match(&pattern).await?;
            let mut keys = Vec::new();
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
            keys
        };
        for chunk in keys.chunks(1000) {
            let _: () = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut redis)
                .await?;
        }
    }
    Ok(())
}

async fn measure(plan: &Plan<'_>, run_id: &str) -> anyhow::Result<String> {
    let Plan {
        round,
        rounds,
        only,
        ..
    } = *plan;
    let prefix = format!("bench-{run_id}");
    let ceiling_prefix = format!("bench-{run_id}-ceiling");
    let command_queue = format!("bench.{run_id}.commands");
    let ceiling_queue = format!("bench.{run_id}.ceiling");
    let service = spawn_service(
        plan.service,
        &prefix,
        &format!("bench.{run_id}"),
        plan.redis_url,
    );
    let service_port = service.port();
    let ceiling_port = free_port();
    let exe = std::env::current_exe()?;
    let ceiling_rest = KilledOnDrop(
        Command::new(&exe)
            .args(["--redis-url", plan.redis_url])
            .args(["ceiling-rest", "--port", &ceiling_port.to_string()])
            .args(["--prefix", &ceiling_prefix])
            .spawn()?,
    );
    let ceiling_amqp = KilledOnDrop(
        Command::new(&exe)
            .args(["--redis-url", plan.redis_url])
            .args(["ceiling-amqp", "--queue", &ceiling_queue])
            .args(["--prefix", &ceiling_prefix])
            .spawn()?,
    );
    wait_for_port(ceiling_port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Fixture: sessions to read (in the service and the ceiling's keys), users with 10 each.
    let mut redis = redis::Client::open(plan.redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    // Redis memory is measured around the service's creates alone.
    let memory_before = used_memory(&mut redis).await?;
    let ids = create_sessions(service_port, None, FIXTURE_SESSIONS, create_body).await?;
    let memory_after = used_memory(&mut redis).await?;
    // The ceiling reads hashes with the same fields.
    let body: HashMap<String, Value> = serde_json::from_str(BODY)?;
    let fields: Vec<(String, String)> = body.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    for id in &ids {
        let _: () = redis
            .hset_multiple(format!("{ceiling_prefix}:s:{id}"), &fields)
            .await?;
    }
    let users = (0..1000).map(|n| format!("bench-user-{n}")).collect();
    let fixture = Arc::new(Fixture {
        ids,
        users,
        deletable: Mutex::new(Vec::new()),
    });
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;

    let targets = Targets {
        redis_url: plan.redis_url,
        service_port,
        ceiling_port,
        service_pid: service.id(),
        ceiling_rest_pid: ceiling_rest.0.id(),
        ceiling_amqp_pid: ceiling_amqp.0.id(),
        amqp: &amqp,
        command_queue: &command_queue,
        ceiling_queue: &ceiling_queue,
    };
    let mut rows = Vec::new();
    for front in [Front::Rest, Front::Amqp] {
        for op in [
            Op::Get,
            Op::Create,
            Op::List,
            Op::Update,
            Op::Delete,
            Op::Mix,
        ] {
            if !selected(only, front.name(), op) {
                continue;
            }
            let has_ceiling = front.has_ceiling(op);
            let (mut service_sample, mut ceiling_sample) = (Sample::default(), Sample::default());
            for _ in 0..rounds {
                if has_ceiling {
                    ceiling_sample.merge(targets.load(front, true, op, &fixture, round).await?);
                }
                refill(&fixture, service_port, op).await?;
                service_sample.merge(targets.load(front, false, op, &fixture, round).await?);
            }
            rows.push(Row {
                case: format!("{} {}", front.name(), op.name()),
                sample: service_sample,
                ceiling: has_ceiling.then_some(ceiling_sample),
            });
        }
    }
    let pairs_report = pairs::run(
        plan,
        run_id,
        &pairs::Plain {
            port: service_port,
            pid: service.id(),
            fixture: &fixture,
            amqp: &amqp,
            command_queue: &command_queue,
        },
    )
    .await?;
    let rss = peak_rss_mib(service.id());
    drop(service);

    let per_session = (memory_after.saturating_sub(memory_before)) as f64 / FIXTURE_SESSIONS as f64;
    drop(amqp);
    let mut report = render(&mut rows, rss, per_session, round, rounds) + &pairs_report;
    if plan.runs("scale") {
        report += &scale::run(run_id, plan).await?;
    }
    if plan.runs("idle") {
        report += &idle::run(run_id, plan).await?;
    }
    if plan.runs("fleet") {
        report += &fleet::fleet(run_id, plan).await?;
    }
    if plan.runs("wait") {
        report += &fleet::wait(run_id, plan).await?;
    }
    if plan.runs("churn") {
        report += &fleet::churn(run_id, plan).await?;
    }
    Ok(report)
}

/// The front end a case loads.
#[derive(Clone, Copy)]
enum Front {
    Rest,
    Amqp,
}

impl Front {
    fn name(self) -> &'static str {
        match self {
            Front::Rest => "REST",
            Front::Amqp => "AMQP",
        }
    }

    /// The cases measured against a ceiling.
    fn has_ceiling(self, op: Op) -> bool {
        match self {
            Front::Rest => matches!(op, Op::Get | Op::Create),
            Front::Amqp => op == Op::Get,
        }
    }
}

/// Where the service and the ceilings listen.
struct Targets<'a> {
    redis_url: &'a str,
    service_port: u16,
    ceiling_port: u16,
    /// The processes of the service and of the REST and AMQP ceilings.
    service_pid: u32,
    ceiling_rest_pid: u32,
    ceiling_amqp_pid: u32,
    amqp: &'a Connection,
    command_queue: &'a str,
    ceiling_queue: &'a str,
}

impl Targets<'_> {
    /// One round of `op` against the service or its ceiling, over `front`.
    async fn load(
        &self,
        front: Front,
        ceiling: bool,
        op: Op,
        fixture: &Arc<Fixture>,
        round: Duration,
    ) -> anyhow::Result<Sample> {
        let mut redis = redis::Client::open(self.redis_url)?
            .get_multiplexed_async_connection()
            .await?;
        let pid = match (front, ceiling) {
            (_, false) => self.service_pid,
            (Front::Rest, true) => self.ceiling_rest_pid,
            (Front::Amqp, true) => self.ceiling_amqp_pid,
        };
        let (cpu_before, process_before) = (redis_cpu(&mut redis).await?, process_cpu(pid));
        let mut sample = match front {
            Front::Rest => {
                let port = if ceiling {
                    self.ceiling_port
                } else {
                    self.service_port
                };
                rest_load(&[port], None, op, fixture, round).await
            }
            Front::Amqp => {
                let queue = if ceiling {
                    self.ceiling_queue
                } else {
                    self.command_queue
                };
                amqp_load(self.amqp, queue, None, op, fixture, round, false).await
            }
        }?;
        sample.redis_cpu = redis_cpu(&mut redis).await? - cpu_before;
        sample.service_cpu = process_cpu(pid) - process_before;
        Ok(sample)
    }
}

/// Whether `--only <case>` (e.g. `"REST get"`, or `"AMQP"`) selects this case.
fn selected(only: Option<&str>, front: &str, op: Op) -> bool {
    only.is_none_or(|only| format!("{front} {}", op.name()).starts_with(only))
}

/// Before a round that deletes, creates sessions for it to delete (not timed).
async fn refill(fixture: &Arc<Fixture>, port: u16, op: Op) -> anyhow::Result<()> {
    if !matches!(op, Op::Delete | Op::Mix) {
        return Ok(());
    }
    let wanted: usize = if op == Op::Delete { 30_000 } else { 5_000 };
    let mut deletable = fixture.deletable.lock().await;
    let missing = wanted.saturating_sub(deletable.len());
    deletable
        .extend(create_sessions(port, None, missing, |n| create_body(FIXTURE_SESSIONS + n)).await?);
    Ok(())
}

/// A number from one section of Redis's `INFO`.
async fn info_field(
    redis: &mut redis::aio::MultiplexedConnection,
    section: &str,
    name: &str,
) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg(section).query_async(redis).await?;
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no {name} in INFO {section}"))
}

async fn used_memory(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    Ok(info_field(redis, "memory", "used_memory").await? as u64)
}

/// Microseconds Redis has spent inside one command so far (`INFO commandstats`).
async fn command_usec(
    redis: &mut redis::aio::MultiplexedConnection,
    command: &str,
) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|stats| stats.split(',').find_map(|pair| pair.strip_prefix("usec=")))
        .and_then(|usec| usec.parse().ok())
        .unwrap_or(0.0))
}

/// Redis's CPU time so far (user and system, all threads), in seconds.
async fn redis_cpu(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    Ok(info_field(redis, "cpu", "used_cpu_user").await?
        + info_field(redis, "cpu", "used_cpu_sys").await?)
}

fn render(rows: &mut [Row], rss: f64, per_session: f64, round: Duration, rounds: usize) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Benchmarks\n\nRun by `cargo run --release -p session-bench -- --write` on a machine with {cores} cores, \
         against the local Redis and RabbitMQ; REST over HTTP/1.1 keep-alive with {HTTP_CONNECTIONS} connections, \
         AMQP with {AMQP_IN_FLIGHT} persistent commands in flight. Each case: {rounds} round(s) of {:.1} s, \
         alternating with its ceiling (a bare warp handler / lapin consumer doing one Redis round trip).\n",
        round.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| case | ops/s | p50 ms | p99 ms | errors | service CPU µs/op | Redis CPU µs/op | Redis busy | ceiling ops/s | ceiling CPU µs/op | ceiling Redis CPU µs/op | service/ceiling |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows.iter_mut() {
        let rate = row.sample.rate();
        let (p50, p99) = (
            row.sample.percentile_ms(0.50),
            row.sample.percentile_ms(0.99),
        );
        let (ceiling, ceiling_cpu, ceiling_redis, ratio) = match &row.ceiling {
            Some(ceiling) => (
                format!("{:.0}", ceiling.rate()),
                format!("{:.1}", ceiling.service_us_per_op()),
                format!("{:.1}", ceiling.redis_us_per_op()),
                format!("{:.2}", rate / ceiling.rate().max(1e-9)),
            ),
            None => ("".into(), "".into(), "".into(), "".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {rate:.0} | {p50:.2} | {p99:.2} | {} | {:.1} | {:.1} | {:.0}% | {ceiling} | {ceiling_cpu} | {ceiling_redis} | {ratio} |",
            row.case,
            row.sample.errors,
            row.sample.service_us_per_op(),
            row.sample.redis_us_per_op(),
            row.sample.redis_busy() * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\nService peak RSS: {rss:.1} MiB. Redis memory per session ({FIXTURE_SESSIONS} sessions \
        with {} bytes of field values, key, index and schedule entries included): {per_session:.0} B.",
        field_bytes()
    );
    out
}

/// Bytes of the client-set field values of each benchmark session (the session id and the
/// service's three timestamps come on top).
fn field_bytes() -> usize {
    let body: HashMap<String, Value> =
        serde_json::from_str(&body_for("bench-user-0")).unwrap_or_default();
    body.values()
        .map(|value| match value {
            Value::String(text) => text.len(),
            other => other.to_string().len(),
        })
        .sum()
}
