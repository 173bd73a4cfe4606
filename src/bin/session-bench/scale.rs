//! The scale part of the benchmark: latencies of get, list and delete with the fixture's 10,000
//! sessions and again with a million (100,000 users of 10), Redis memory per session at that
//! size, and the deletion of all 10,000 sessions of one user, timed, with a second Redis client
//! sending `PING` meanwhile to measure the longest time Redis could not answer.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    command_usec, create_sessions, redis_cpu, used_memory, Fixture, HttpConnection, Sample,
    REDIS_URL,
};

/// Latencies of get, list and delete at one size of the store, and the Redis CPU time each
/// request cost (the service's background work included).
pub struct Probe {
    pub live_sessions: u64,
    pub get: Sample,
    pub list: Sample,
    pub delete: Sample,
    pub redis_us: [f64; 3],
    /// Microseconds inside the command that serves each (`HGETALL` for get, `EVALSHA` for list
    /// and delete; the relay's scripts count in too), per request.
    pub command_us: [f64; 3],
}

/// Measures get (of the fixture's sessions), list (of its users, 10 sessions each) and delete
/// (of sessions made for it), one request at a time, so that latency is not queueing.
pub async fn probe(
    port: u16,
    prefix: &str,
    fixture: &Fixture,
    requests: usize,
) -> anyhow::Result<Probe> {
    let victims =
        create_sessions(port, requests, |n| crate::body_for(&format!("probe-{n}"))).await?;
    let live_sessions = live_sessions(prefix).await?;
    let mut redis = redis::Client::open(REDIS_URL)?
        .get_multiplexed_async_connection()
        .await?;
    let mut http = HttpConnection::open(port).await?;
    // Warm up the connection and both processes before timing.
    for id in fixture.ids.iter().take(500) {
        http.send("GET", &format!("/a01/session/{id}"), "").await?;
    }
    let mut samples: [Sample; 3] = Default::default();
    let (mut redis_us, mut command_us) = ([0.0; 3], [0.0; 3]);
    for (kind, sample) in samples.iter_mut().enumerate() {
        let command = if kind == 0 { "hgetall" } else { "evalsha" };
        let cpu_before = redis_cpu(&mut redis).await?;
        let usec_before = command_usec(&mut redis, command).await?;
        for (n, victim) in victims.iter().enumerate() {
            let path = match kind {
                0 => format!(
                    "/a01/session/{}",
                    fixture.ids[(n * 7919) % fixture.ids.len()]
                ),
                1 => format!(
                    "/a01/session?user_id={}",
                    fixture.users[(n * 7919) % fixture.users.len()]
                ),
                _ => format!("/a01/session/{victim}"),
            };
            let method = if kind == 2 { "DELETE" } else { "GET" };
            timed(sample, 200, http.send(method, &path, "")).await?;
        }
        redis_us[kind] = (redis_cpu(&mut redis).await? - cpu_before) * 1e6 / requests as f64;
        command_us[kind] =
            (command_usec(&mut redis, command).await? - usec_before) / requests as f64;
    }
    let [get, list, delete] = samples;
    Ok(Probe {
        live_sessions,
        get,
        list,
        delete,
        redis_us,
        command_us,
    })
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

/// Sessions on the schedules of all buckets: every live session of the prefix.
pub async fn live_sessions(prefix: &str) -> anyhow::Result<u64> {
    let mut redis = redis::Client::open(REDIS_URL)?
        .get_multiplexed_async_connection()
        .await?;
    let mut pipe = redis::pipe();
    for bucket in 0..=255u8 {
        pipe.cmd("ZCARD")
            .arg(format!("{prefix}:{{{bucket:02x}}}:exp"));
    }
    let counts: Vec<u64> = pipe.query_async(&mut redis).await?;
    Ok(counts.iter().sum())
}

/// Adds sessions of users `bench-user-1000` on, 10 each, until `target` sessions are live (the
/// fixture's users 0–999 already have 10 each). Returns the sessions added and Redis's memory
/// growth per added session.
pub async fn fill(port: u16, prefix: &str, target: u64) -> anyhow::Result<(usize, f64)> {
    let live = live_sessions(prefix).await?;
    let missing = target.saturating_sub(live) as usize;
    let mut redis = redis::Client::open(REDIS_URL)?
        .get_multiplexed_async_connection()
        .await?;
    let before = used_memory(&mut redis).await?;
    create_sessions(port, missing, |n| {
        crate::body_for(&format!("bench-user-{}", 1000 + n / 10))
    })
    .await?;
    let after = used_memory(&mut redis).await?;
    Ok((
        missing,
        after.saturating_sub(before) as f64 / missing.max(1) as f64,
    ))
}

/// Where a session's bytes go in Redis: the average `MEMORY USAGE` of session hashes, of user
/// indexes per session listed (users have 10), and of the schedules per live session.
pub struct MemoryShare {
    pub hash: f64,
    pub index: f64,
    pub schedule: f64,
}

pub async fn memory_share(prefix: &str, live: u64) -> anyhow::Result<MemoryShare> {
    let mut redis = redis::Client::open(REDIS_URL)?
        .get_multiplexed_async_connection()
        .await?;
    let hash = average_usage(&mut redis, &format!("{prefix}:*:s:*"), 1.0).await?;
    let index = average_usage(&mut redis, &format!("{prefix}:*:u:bench-user-*"), 10.0).await?;
    let mut schedule = 0.0;
    for bucket in 0..=255u8 {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("{prefix}:{{{bucket:02x}}}:exp"))
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
pub async fn delete_big_user(port: u16, sessions: usize) -> anyhow::Result<BigDelete> {
    let user = "bench-big-user";
    create_sessions(port, sessions, |_| crate::body_for(user)).await?;
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
    create_sessions(port, sessions, |_| crate::body_for(user)).await?;
    let longest_ping_idle = longest_ping_during(tokio::time::sleep(took)).await?.1;
    let (answer, longest_ping) =
        longest_ping_during(http.send("DELETE", &format!("/a01/session?user_id={user}"), ""))
            .await?;
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
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<(T, Duration)> {
    let mut redis = redis::Client::open(REDIS_URL)?
        .get_multiplexed_async_connection()
        .await?;
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
pub fn render(
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
        "\n## Scale\n\nLatency of single requests ({requests} of each kind one after another on one connection, \
         no other load), with the fixture alone and after filling the store with users of 10 sessions each:\n"
    );
    let _ = writeln!(
        out,
        "| live sessions | get p50 | get p99 | list p50 | list p99 | delete p50 | delete p99 | Redis CPU µs per get / list / delete | of which in the command |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for probe in [&mut *small, &mut *large] {
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
            probe.redis_us[0],
            probe.redis_us[1],
            probe.redis_us[2],
            probe.command_us[0],
            probe.command_us[1],
            probe.command_us[2],
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
        "\nRedis memory per session while filling ({} sessions added, key, index, schedule entries and \
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
        "\nDeleting all {} sessions of one user (REST, at the large size): {:.0} ms. Longest `PING` round trip \
         of another Redis client during such a deletion: {:.1} ms (during as long a time without it: {:.1} ms).",
        big.sessions,
        big.took.as_secs_f64() * 1000.0,
        big.longest_ping.as_secs_f64() * 1000.0,
        big.longest_ping_idle.as_secs_f64() * 1000.0,
    );
}
