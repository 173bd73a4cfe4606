//! The idle part: Redis's CPU while instances run with nothing to do, with one instance and with
//! eight, on a private Redis. The relays share the buckets' periodic work through leases
//! (`store::lease`), so eight instances should cost Redis about what one does (issue 10: at most
//! 1.5 times).

use std::time::Duration;

use session_manager_testkit::PrivateRedis;

use crate::{redis_cpu, spawn_service, Plan};

/// Runs the idle part and returns its section of the report.
pub async fn run(run_id: &str, plan: &Plan<'_>) -> anyhow::Result<String> {
    let (settle, window) = if plan.rounds == 1 {
        (Duration::from_secs(3), Duration::from_secs(2))
    } else {
        (Duration::from_secs(6), Duration::from_secs(15))
    };
    let mut rows = Vec::new();
    for instances in [1, 8] {
        eprintln!("idle: {instances} instance(s)");
        // A fresh Redis each time, so that no lease of the runs before is left.
        let redis = PrivateRedis::start(&[]);
        let url = format!("redis://127.0.0.1:{}/", redis.port);
        let names = format!("bench.{run_id}.idle");
        let services: Vec<_> = (0..instances)
            .map(|_| spawn_service(plan.service, "session-manager", &names, &url))
            .collect();
        tokio::time::sleep(settle).await;
        let mut connection = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let before = redis_cpu(&mut connection).await?;
        tokio::time::sleep(window).await;
        let used = redis_cpu(&mut connection).await? - before;
        rows.push((instances, used * 1000.0 / window.as_secs_f64()));
        drop(services);
        drop(redis);
    }
    let one = rows[0].1;
    let mut report = String::from(
        "\n### Idle instances\n\nRedis CPU while the instances have nothing to do (a private \
         Redis, no sessions), in ms of CPU per second:\n\n| instances | Redis CPU ms/s | of one |\n|---:|---:|---:|\n",
    );
    for (instances, ms) in rows {
        report += &format!("| {instances} | {ms:.1} | {:.2} |\n", ms / one);
    }
    Ok(report)
}
