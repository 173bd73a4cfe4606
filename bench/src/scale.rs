//! The scale part of the benchmark: two stores side by side, each a private `redis-server`
//! with its own `session-manager`, one holding 10,000 sessions and one 1,000,000 (users of 10
//! sessions each); latencies of get, list and delete measured in blocks that alternate between
//! them, so that drift of the machine cancels; Redis memory per session of the large one; and
//! the deletion of all 10,000 sessions of one user in it, timed, with a second Redis client
//! sending `PING` meanwhile to measure the longest time Redis could not answer; pages of 100 of a
//! user with 10 sessions and of one with 100,000; and a `rewrap` of the large store with a key,
//! with `SLOWLOG` recording its longest command.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use session_manager::store::{Bucket, Keys};
use session_manager_testkit::{PrivateRedis, Service};

use crate::{
    command_usec, create_sessions, redis_cpu, spawn_service, used_memory, HttpConnection, Plan,
    Sample,
};

/// Blocks of the latency probe per store.
const BLOCKS: usize = 10;

/// A store of the scale part: a private Redis and a service instance over it.
struct Store {
    redis_url: String,
    port: u16,
    prefix: String,
    /// Sessions to read and users to list.
    ids: Vec<String>,
    users: Vec<String>,
    _redis: PrivateRedis,
    _service: Service,
}

impl Store {
    /// Starts a private Redis and a service over it and fills it with `sessions` sessions of
    /// users of 10 each; returns it and Redis's memory growth per session.
    async fn start(
        plan: &Plan<'_>,
        run_id: &str,
        name: &str,
        sessions: usize,
    ) -> anyhow::Result<(Self, f64)> {
        let redis = PrivateRedis::start(&[]);
        let redis_url = format!("redis://127.0.0.1:{}/", redis.port);
        let prefix = "session-manager".to_owned();
        let names = format!("bench.{run_id}.{name}");
        let service = spawn_service(plan.service, &prefix, &names, &redis_url);
        let port = service.port();
        let mut connection = connect(&redis_url).await?;
        let before = used_memory(&mut connection).await?;
        let ids = create_sessions(port, None, sessions, |n| {
            crate::body_for(&format!("bench-user-{}", n / 10))
        })
        .await?;
        let per_session =
            used_memory(&mut connection).await?.saturating_sub(before) as f64 / sessions as f64;
        let store = Self {
            redis_url,
            port,
            prefix,
            ids: ids
                .into_iter()
                .step_by((sessions / 10_000).max(1))
                .collect(),
            users: (0..sessions.div_ceil(10).min(1000))
                .map(|n| format!("bench-user-{}", n * (sessions / 10_000).max(1)))
                .collect(),
            _redis: redis,
            _service: service,
        };
        Ok((store, per_session))
    }
}

async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Runs the scale part and returns its section of the report.
pub async fn run(run_id: &str, plan: &Plan<'_>) -> anyhow::Result<String> {
    eprintln!(
        "scale: filling a store of {} sessions and one of {}",
        plan.small, plan.large
    );
    let (small, _) = Store::start(plan, run_id, "small", plan.small).await?;
    let (large, per_session) = Store::start(plan, run_id, "large", plan.large).await?;
    // What an idle instance costs its Redis (the relay's tick over every bucket).
    let mut idle_cpu = [0.0; 2];
    for (store, idle) in [&small, &large].into_iter().zip(&mut idle_cpu) {
        let mut redis = connect(&store.redis_url).await?;
        let before = redis_cpu(&mut redis).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        *idle = (redis_cpu(&mut redis).await? - before) / 5.0;
    }
    let requests = plan.probe_requests / BLOCKS;
    let mut probes = [Probe::default(), Probe::default()];
    for _ in 0..BLOCKS {
        for (store, probe) in [&small, &large].into_iter().zip(&mut probes) {
            probe_block(store, requests, probe).await?;
        }
    }
    let [mut small_probe, mut large_probe] = probes;
    let share = memory_share(&large).await?;
    let big = delete_big_user(&large, plan.big_user).await?;
    let listing = list_at_scale(&large, plan.many_sessions, plan.probe_requests).await?;
    let rewrap = rewrap(plan, &large).await?;
    let mut out = String::new();
    render(
        &mut out,
        &mut small_probe,
        &mut large_probe,
        (plan.large, per_session),
        &share,
        &big,
    );
    let _ = writeln!(
        out,
        "\nRedis CPU while idle, with its service instance running (the relay's tick over all 256 \
         buckets, 4 times a second): {:.1}% of a core with the small store, {:.1}% with the large one.",
        idle_cpu[0] * 100.0,
        idle_cpu[1] * 100.0
    );
    let _ = writeln!(
        out,
        "\nPages of users with 10, {LIST_LIMIT} and {} sessions in the large store, at `limit={LIST_LIMIT}` \
         and at `limit={SMALL_LIMIT}` ({} requests each, in blocks alternating between them):\n\n\
         | user's sessions | limit | entries a page | p50 ms | p99 ms | errors |\n|---:|---:|---:|---:|---:|---:|",
        plan.many_sessions,
        plan.probe_requests / BLOCKS * BLOCKS,
    );
    let mut p50s = Vec::new();
    for (sessions, limit, mut sample) in listing.users {
        let p50 = sample.percentile_ms(0.5);
        p50s.push(p50);
        let _ = writeln!(
            out,
            "| {sessions} | {limit} | {} | {p50:.3} | {:.3} | {} |",
            sessions.min(limit as usize),
            sample.percentile_ms(0.99),
            sample.errors
        );
    }
    let ratio = |of: usize, to: usize| p50s[of] / p50s[to].max(1e-9);
    let _ = writeln!(
        out,
        "\n{many}-session user against, p50: the {LIST_LIMIT}-session user at `limit={LIST_LIMIT}` {:.2} \
         (pages of {LIST_LIMIT} each); the 10-session user at `limit={SMALL_LIMIT}` {:.2} (pages of 10 \
         each); the 10-session user at `limit={LIST_LIMIT}` {:.2} (a page of {LIST_LIMIT} against one \
         of 10).",
        ratio(2, 1),
        ratio(4, 3),
        ratio(2, 0),
        many = plan.many_sessions,
    );
    let _ = writeln!(
        out,
        "\n`session-manager rewrap` of the large store (its sessions written in plain text, while its \
         instance runs), with a key set: {} values re-sealed in {:.1} s ({:.0} values/s). Longest Redis \
         command meanwhile (`SLOWLOG`, which logs those over {} µs): {}. Longest `PING` round trip of \
         another Redis client meanwhile: {:.1} ms.",
        rewrap.resealed,
        rewrap.took.as_secs_f64(),
        rewrap.resealed as f64 / rewrap.took.as_secs_f64().max(1e-9),
        SLOWLOG_OVER_US,
        match rewrap.longest_call_us {
            Some(us) => format!("{:.1} ms (`{}`…)", us as f64 / 1000.0, rewrap.longest_call),
            None => "none logged".to_owned(),
        },
        rewrap.longest_ping.as_secs_f64() * 1000.0,
    );
    Ok(out)
}

/// The page size of the list-at-scale probe.
const LIST_LIMIT: u32 = 100;

/// The page size at which the users with 10 and with many sessions are also timed: a page of
/// the same size for both.
const SMALL_LIMIT: u32 = 10;

/// List latencies of users with 10, [`LIST_LIMIT`] and many sessions at `limit=`[`LIST_LIMIT`],
/// then of those with 10 and many at `limit=`[`SMALL_LIMIT`], in that order: (user's sessions,
/// limit, sample).
struct ListAtScale {
    users: Vec<(usize, u32, Sample)>,
}

/// Gives one user [`LIST_LIMIT`] sessions and another `many` in the store, then times pages of
/// them and of a user with 10 (see [`ListAtScale`]), in blocks alternating between them.
async fn list_at_scale(store: &Store, many: usize, requests: usize) -> anyhow::Result<ListAtScale> {
    let hundred = "bench-hundred-user";
    let lots = "bench-many-user";
    create_sessions(store.port, None, LIST_LIMIT as usize, |_| {
        crate::body_for(hundred)
    })
    .await?;
    create_sessions(store.port, None, many, |_| crate::body_for(lots)).await?;
    let ten = store.users[0].clone();
    let mut users = vec![
        (10, ten.clone(), LIST_LIMIT, Sample::default()),
        (
            LIST_LIMIT as usize,
            hundred.to_owned(),
            LIST_LIMIT,
            Sample::default(),
        ),
        (many, lots.to_owned(), LIST_LIMIT, Sample::default()),
        (10, ten, SMALL_LIMIT, Sample::default()),
        (many, lots.to_owned(), SMALL_LIMIT, Sample::default()),
    ];
    let mut http = HttpConnection::open(store.port).await?;
    for _ in 0..BLOCKS {
        for (_, who, limit, sample) in &mut users {
            let path = format!("/a01/session?user_id={who}&limit={limit}");
            for _ in 0..requests / BLOCKS {
                timed(sample, 200, http.send("GET", &path, "")).await?;
            }
        }
    }
    Ok(ListAtScale {
        users: users
            .into_iter()
            .map(|(sessions, _, limit, sample)| (sessions, limit, sample))
            .collect(),
    })
}

/// Commands slower than this are logged by `SLOWLOG` during the rewrap.
const SLOWLOG_OVER_US: u64 = 1000;

/// A rewrap of a whole store.
struct Rewrap {
    resealed: u64,
    took: Duration,
    /// The longest command Redis ran meanwhile, if any took over [`SLOWLOG_OVER_US`].
    longest_call_us: Option<u64>,
    /// That command, its first words.
    longest_call: String,
    longest_ping: Duration,
}

/// Runs `session-manager rewrap` with a key over the store, while another client pings Redis
/// and `SLOWLOG` records every command over [`SLOWLOG_OVER_US`].
async fn rewrap(plan: &Plan<'_>, store: &Store) -> anyhow::Result<Rewrap> {
    let mut redis = connect(&store.redis_url).await?;
    for (name, value) in [
        ("slowlog-log-slower-than", SLOWLOG_OVER_US),
        ("slowlog-max-len", 100_000),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async::<()>(&mut redis)
            .await?;
    }
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async::<()>(&mut redis)
        .await?;
    let mut command = std::process::Command::new(plan.service);
    command
        .arg("rewrap")
        .env("REDIS_URL", &store.redis_url)
        .env("SESSION_KEY_PREFIX", &store.prefix)
        .env("SESSION_ENCRYPTION_KEY", crate::pairs::KEY)
        .env("RUST_LOG", "warn");
    let begun = Instant::now();
    let run = tokio::task::spawn_blocking(move || command.output());
    let (output, longest_ping) = longest_ping_during(&store.redis_url, run).await?;
    let took = begun.elapsed();
    let output = output??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("rewrap failed: {stderr}");
    }
    // "rewrap: done: <keys> keys scanned, <values> values re-sealed"
    let resealed = stderr
        .lines()
        .find_map(|line| line.strip_prefix("rewrap: done: "))
        .and_then(|done| done.split(", ").nth(1))
        .and_then(|values| values.split(' ').next())
        .and_then(|values| values.parse().ok())
        .with_context(|| format!("no count in the rewrap's report: {stderr}"))?;
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100_000)
        .query_async(&mut redis)
        .await?;
    // Each entry: [id, timestamp, microseconds, [command, arguments…], …].
    let longest = slow
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(fields) = entry else {
                return None;
            };
            let us = match fields.get(2)? {
                redis::Value::Int(us) => u64::try_from(*us).ok()?,
                _ => return None,
            };
            let command = match fields.get(3)? {
                redis::Value::Array(args) => args
                    .iter()
                    .take(3)
                    .filter_map(|arg| match arg {
                        redis::Value::BulkString(bytes) => Some(
                            String::from_utf8_lossy(&bytes[..bytes.len().min(24)]).into_owned(),
                        ),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            };
            Some((us, command))
        })
        .max();
    let longest_call_us = longest.as_ref().map(|(us, _)| *us);
    let longest_call = longest.map(|(_, command)| command).unwrap_or_default();
    Ok(Rewrap {
        resealed,
        took,
        longest_call_us,
        longest_call,
        longest_ping,
    })
}

/// Latencies of get, list and delete at one size of the store, and the Redis CPU time each
/// request cost (the service's background work included).
#[derive(Default)]
pub struct Probe {
    pub live_sessions: u64,
    pub get: Sample,
    pub list: Sample,
    pub delete: Sample,
    /// Redis CPU seconds, and seconds inside the command that serves each kind (`HMGET` for
    /// get, `EVALSHA` for list and delete; the relay's scripts count in too).
    pub redis_cpu: [f64; 3],
    pub command_s: [f64; 3],
}

impl Probe {
    fn sample(&mut self, kind: usize) -> &mut Sample {
        match kind {
            0 => &mut self.get,
            1 => &mut self.list,
            _ => &mut self.delete,
        }
    }

    /// Microseconds per request of Redis CPU and inside the command, for each kind.
    fn per_request(&self, seconds: &[f64; 3]) -> [f64; 3] {
        let requests = self.get.ops.max(1) as f64;
        seconds.map(|s| s * 1e6 / requests)
    }
}

/// One block of the probe: get (of the store's sessions), list (of its users, 10 sessions each)
/// and delete (of sessions made for it), one request at a time, so that latency is not
/// queueing.
async fn probe_block(store: &Store, requests: usize, probe: &mut Probe) -> anyhow::Result<()> {
    let victims = create_sessions(store.port, None, requests, |n| {
        crate::body_for(&format!("probe-{n}"))
    })
    .await?;
    probe.live_sessions = live_sessions(store).await?;
    let mut redis = connect(&store.redis_url).await?;
    let mut http = HttpConnection::open(store.port).await?;
    // Warm up the connection and both processes before timing.
    for id in store.ids.iter().take(50) {
        http.send("GET", &format!("/a01/session/{id}"), "").await?;
    }
    for kind in 0..3 {
        let command = if kind == 0 { "hmget" } else { "evalsha" };
        let cpu_before = redis_cpu(&mut redis).await?;
        let usec_before = command_usec(&mut redis, command).await?;
        for (n, victim) in victims.iter().enumerate() {
            let spread = (probe.get.ops + n) * 7919;
            let path = match kind {
                0 => format!("/a01/session/{}", store.ids[spread % store.ids.len()]),
                1 => format!(
                    "/a01/session?user_id={}",
                    store.users[spread % store.users.len()]
                ),
                _ => format!("/a01/session/{victim}"),
            };
            let method = if kind == 2 { "DELETE" } else { "GET" };
            timed(probe.sample(kind), 200, http.send(method, &path, "")).await?;
        }
        probe.redis_cpu[kind] += redis_cpu(&mut redis).await? - cpu_before;
        probe.command_s[kind] += (command_usec(&mut redis, command).await? - usec_before) / 1e6;
    }
    Ok(())
}

async fn timed(
    sample: &mut Sample,
    expected: u16,
    request: impl std::future::Future<Output = anyhow::Result<(u16, Vec<u8>)>>,
) -> anyhow::Result<()> {
    let begun = Instant::now();
    let (status, _) = request.await?;
    sample.latencies_us.push(begun.elapsed().as_micros() as u32);
    sample.ops += 1;
    sample.elapsed += begun.elapsed();
    if status != expected {
        sample.errors += 1;
    }
    Ok(())
}

/// Sessions on the schedules of all buckets: every live session of the store.
async fn live_sessions(store: &Store) -> anyhow::Result<u64> {
    let mut redis = connect(&store.redis_url).await?;
    let mut pipe = redis::pipe();
    let keys = Keys::new(&store.prefix);
    for bucket in Bucket::all() {
        pipe.cmd("ZCARD").arg(keys.schedule(bucket));
    }
    let counts: Vec<u64> = pipe.query_async(&mut redis).await?;
    Ok(counts.iter().sum())
}

/// Where a session's bytes go in Redis: the average `MEMORY USAGE` of session hashes, of user
/// indexes per session listed (users have 10), and of the schedules per live session.
pub struct MemoryShare {
    pub hash: f64,
    pub index: f64,
    pub schedule: f64,
}

async fn memory_share(store: &Store) -> anyhow::Result<MemoryShare> {
    let live = live_sessions(store).await?;
    let prefix = &store.prefix;
    let mut redis = connect(&store.redis_url).await?;
    let hash = average_usage(&mut redis, &format!("{prefix}:*:s:*"), 1.0).await?;
    let index = average_usage(&mut redis, &format!("{prefix}:*:u:bench-user-*"), 10.0).await?;
    let mut schedule = 0.0;
    let keys = Keys::new(prefix);
    for bucket in Bucket::all() {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(keys.schedule(bucket))
            .query_async(&mut redis)
            .await?;
        schedule += bytes.unwrap_or(0) as f64;
    }
    Ok(MemoryShare {
        hash,
        index,
        schedule: schedule / live.max(1) as f64,
    })
}

/// The average `MEMORY USAGE` of up to 200 keys matching `pattern`, divided by `per_key`.
async fn average_usage(
    redis: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    per_key: f64,
) -> anyhow::Result<f64> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(redis)
            .await?;
        keys.extend(found);
        cursor = next;
        if cursor == 0 || keys.len() >= 200 {
            break;
        }
    }
    keys.truncate(200);
    let mut total = 0.0;
    for key in &keys {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(redis)
            .await?;
        total += bytes.unwrap_or(0) as f64;
    }
    Ok(total / keys.len().max(1) as f64 / per_key)
}

/// Deleting all sessions of one user.
pub struct BigDelete {
    pub sessions: usize,
    pub took: Duration,
    /// The longest `PING` round trip of another client during the deletion, and during as
    /// long a time just before it.
    pub longest_ping: Duration,
    pub longest_ping_idle: Duration,
}

/// Creates `sessions` sessions of one user, then deletes them all over REST while a second
/// client pings Redis.
async fn delete_big_user(store: &Store, sessions: usize) -> anyhow::Result<BigDelete> {
    let port = store.port;
    let user = "bench-big-user";
    create_sessions(port, None, sessions, |_| crate::body_for(user)).await?;
    let mut http = HttpConnection::open(port).await?;

    let begun = Instant::now();
    let (status, body) = http
        .send("DELETE", &format!("/a01/session?user_id={user}"), "")
        .await?;
    let took = begun.elapsed();
    let closed: serde_json::Value = serde_json::from_slice(&body)?;
    let closed = closed["session_ids"].as_array().map_or(0, Vec::len);
    if status != 200 || closed != sessions {
        bail!("deleting the big user answered {status} with {closed} of {sessions} ids");
    }
    // The same deletion again, pinged: the first one had no pinger, so that its time is not
    // shared with it.
    create_sessions(port, None, sessions, |_| crate::body_for(user)).await?;
    let redis = &store.redis_url;
    let longest_ping_idle = longest_ping_during(redis, tokio::time::sleep(took))
        .await?
        .1;
    let path = format!("/a01/session?user_id={user}");
    let deletion = http.send("DELETE", &path, "");
    let (answer, longest_ping) = longest_ping_during(redis, deletion).await?;
    let (status, _) = answer?;
    if status != 200 {
        bail!("deleting the big user again answered {status}");
    }
    Ok(BigDelete {
        sessions,
        took,
        longest_ping,
        longest_ping_idle,
    })
}

/// Runs `work` while another connection sends `PING` after `PING`; returns the work's output and
/// the longest round trip.
async fn longest_ping_during<T>(
    redis_url: &str,
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<(T, Duration)> {
    let mut redis = connect(redis_url).await?;
    let done = Arc::new(AtomicBool::new(false));
    let pinger = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let begun = Instant::now();
                redis::cmd("PING").query_async::<()>(&mut redis).await?;
                longest = longest.max(begun.elapsed());
            }
            Ok::<_, redis::RedisError>(longest)
        })
    };
    let output = work.await;
    done.store(true, Ordering::Relaxed);
    Ok((output, pinger.await??))
}

/// The scale section of the report.
fn render(
    out: &mut String,
    small: &mut Probe,
    large: &mut Probe,
    filled: (usize, f64),
    share: &MemoryShare,
    big: &BigDelete,
) {
    let requests = small.get.ops;
    let _ = writeln!(
        out,
        "\n## Scale\n\nTwo stores side by side, each a private `redis-server` with its own `session-manager`, \
         filled with users of 10 sessions each. Latency of single requests ({requests} of each kind per store, one \
         after another on one connection, no other load), in {BLOCKS} blocks alternating between the stores:\n"
    );
    let _ = writeln!(
        out,
        "| live sessions | get p50 | get p99 | list p50 | list p99 | delete p50 | delete p99 | Redis CPU µs per get / list / delete | of which in the command |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for probe in [&mut *small, &mut *large] {
        let (redis_us, command_us) = (
            probe.per_request(&probe.redis_cpu),
            probe.per_request(&probe.command_s),
        );
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} / {:.1} |",
            probe.live_sessions,
            probe.get.percentile_ms(0.5),
            probe.get.percentile_ms(0.99),
            probe.list.percentile_ms(0.5),
            probe.list.percentile_ms(0.99),
            probe.delete.percentile_ms(0.5),
            probe.delete.percentile_ms(0.99),
            redis_us[0],
            redis_us[1],
            redis_us[2],
            command_us[0],
            command_us[1],
            command_us[2],
        );
    }
    let ratio = |large: &mut Sample, small: &mut Sample| {
        large.percentile_ms(0.5) / small.percentile_ms(0.5).max(1e-9)
    };
    let _ = writeln!(
        out,
        "\nLarge/small p50: get {:.2}, list {:.2}, delete {:.2}. Errors: {}.",
        ratio(&mut large.get, &mut small.get),
        ratio(&mut large.list, &mut small.list),
        ratio(&mut large.delete, &mut small.delete),
        small.get.errors
            + small.list.errors
            + small.delete.errors
            + large.get.errors
            + large.list.errors
            + large.delete.errors,
    );
    let _ = writeln!(
        out,
        "\nRedis memory per session while filling the large store ({} sessions, key, index, schedule entries and \
         Redis's own overhead included): {:.0} B, of which (`MEMORY USAGE`, averaged): the session hash \
         with its key {:.0} B, its share of the user's index {:.0} B, its share of the schedules {:.0} B; \
         the rest, {:.0} B, is Redis's bookkeeping of each key outside it (entries in the key and \
         expiry dictionaries) and the index keys' own.",
        filled.0,
        filled.1,
        share.hash,
        share.index,
        share.schedule,
        filled.1 - share.hash - share.index - share.schedule
    );
    let _ = writeln!(
        out,
        "\nDeleting all {} sessions of one user (REST, in the large store): {:.0} ms. Longest `PING` round trip \
         of another Redis client during such a deletion: {:.1} ms (during as long a time without it: {:.1} ms).",
        big.sessions,
        big.took.as_secs_f64() * 1000.0,
        big.longest_ping.as_secs_f64() * 1000.0,
        big.longest_ping_idle.as_secs_f64() * 1000.0,
    );
}
