//! The fleet parts (issue 10): several instances side by side.
//!
//! - `fleet`: the REST and AMQP mix on 1, 2 and 4 instances over one private Redis and the
//!   local broker, then over a private three-master Redis Cluster, and once more in the
//!   reverse order: aggregate throughput and Redis CPU per operation (per node on the cluster).
//! - `wait`: what `REDIS_WAIT_REPLICAS=1` costs creates, on a private master with one replica.
//! - `churn`: how late expiry events are published while instances come and go (a graceful
//!   stop and a fresh start every few seconds), and after one is killed (its bucket leases then
//!   run out before the others take them over).

use std::{
    any::Any,
    collections::HashMap,
    fmt::Write as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
    Connection, ConnectionProperties,
};
use serde_json::Value;
use session_manager_testkit::{free_port, PrivateCluster, PrivateRedis, Service};
use tokio::sync::Mutex;

use crate::{
    amqp_load, create_body, create_sessions, process_cpu, redis_cpu, refill, rest_load,
    service_command, spawn_service, Fixture, Op, Plan, Sample, AMQP_URL, FIXTURE_SESSIONS,
};

/// The configurations of the `fleet` part, in the first pass's order: whether on a cluster, and
/// how many instances.
const CONFIGURATIONS: [(bool, usize); 6] = [
    (false, 1),
    (false, 2),
    (false, 4),
    (true, 1),
    (true, 2),
    (true, 4),
];

/// The passes over [`CONFIGURATIONS`]: forward, then backward, so that the machine's drift
/// during a run weighs on both ends alike.
const PASSES: usize = 2;

/// The configurations merged over the passes.
struct FleetRow {
    redis: &'static str,
    instances: usize,
    rest: Sample,
    amqp: Sample,
    /// REST ops/s of each pass, in pass order.
    rest_per_pass: Vec<f64>,
    /// Redis CPU seconds per node over the REST and the AMQP rounds, by position in the node
    /// list.
    cpu_per_node: Vec<f64>,
}

/// The suffixes of the names (`bench.{run_id}{suffix}`) of the `fleet` part's queues and
/// exchanges: one per configuration and pass, so that a command left in a queue (its answer
/// timed out) is never consumed in another configuration, against another Redis.
pub fn names_suffixes() -> Vec<String> {
    (1..=PASSES)
        .flat_map(|pass| {
            CONFIGURATIONS
                .iter()
                .map(move |&(cluster, instances)| names_suffix(cluster, instances, pass))
        })
        .collect()
}

fn names_suffix(cluster: bool, instances: usize, pass: usize) -> String {
    let redis = if cluster { "cluster" } else { "one" };
    format!(".fleet-{redis}-{instances}-pass{pass}")
}

/// Runs the `fleet` part and returns its section of the report.
pub async fn fleet(run_id: &str, plan: &Plan<'_>) -> anyhow::Result<String> {
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let mut rows: Vec<FleetRow> = CONFIGURATIONS
        .iter()
        .map(|&(cluster, instances)| FleetRow {
            redis: if cluster { "cluster of 3" } else { "one" },
            instances,
            rest: Sample::default(),
            amqp: Sample::default(),
            rest_per_pass: Vec::new(),
            cpu_per_node: Vec::new(),
        })
        .collect();
    for pass in 1..=PASSES {
        let mut order: Vec<usize> = (0..CONFIGURATIONS.len()).collect();
        if pass % 2 == 0 {
            order.reverse();
        }
        for at in order {
            let (cluster, instances) = CONFIGURATIONS[at];
            eprintln!(
                "fleet, pass {pass}: {instances} instance(s) on {}",
                if cluster { "a cluster" } else { "one Redis" }
            );
            let names = format!("bench.{run_id}{}", names_suffix(cluster, instances, pass));
            let (rest, amqp_sample, cpu) =
                measure_configuration(run_id, plan, &amqp, &names, cluster, instances).await?;
            let row = &mut rows[at];
            row.rest_per_pass.push(rest.rate());
            row.rest.merge(rest);
            row.amqp.merge(amqp_sample);
            row.cpu_per_node.resize(cpu.len(), 0.0);
            for (sum, node) in row.cpu_per_node.iter_mut().zip(cpu) {
                *sum += node;
            }
        }
    }
    Ok(render_fleet(&mut rows, plan))
}

/// Measures one configuration on a fresh store (the same fixture, no lease of a configuration
/// before), its instances' queue and exchange named after `names`: the REST sample, the AMQP
/// sample and each node's Redis CPU seconds over both.
async fn measure_configuration(
    run_id: &str,
    plan: &Plan<'_>,
    amqp: &Connection,
    names: &str,
    cluster: bool,
    instances: usize,
) -> anyhow::Result<(Sample, Sample, Vec<f64>)> {
    let prefix = format!("bench-{run_id}-fleet");
    // Kept (running) until the configuration is measured; dropped after the instances.
    let (nodes, url, _store): (Vec<u16>, String, Box<dyn Any + Send>) = match cluster {
        false => {
            let redis = PrivateRedis::start(&[]);
            let url = format!("redis://127.0.0.1:{}/", redis.port);
            (vec![redis.port], url, Box::new(redis))
        }
        true => {
            let cluster = tokio::task::spawn_blocking(PrivateCluster::start).await?;
            let nodes = cluster.nodes.iter().map(|node| node.port).collect();
            (nodes, cluster.seed_url(), Box::new(cluster))
        }
    };
    let services: Vec<Service> = (0..instances)
        .map(|_| spawn_service(plan.service, &prefix, names, &url))
        .collect();
    let ports: Vec<u16> = services.iter().map(Service::port).collect();
    let fixture = Arc::new(Fixture {
        ids: create_sessions(ports[0], None, FIXTURE_SESSIONS, create_body).await?,
        users: (0..1000).map(|n| format!("bench-user-{n}")).collect(),
        deletable: Mutex::new(Vec::new()),
    });
    let queue = format!("{names}.commands");
    let (mut rest, mut amqp_sample) = (Sample::default(), Sample::default());
    let mut cpu_per_node = vec![0.0; nodes.len()];
    let pids: Vec<u32> = services.iter().map(Service::id).collect();
    let broker = rabbitmq_pid();
    let reading = || CpuReading::take(&nodes, &pids, broker);
    for _ in 0..plan.rounds {
        refill(&fixture, ports[0], Op::Mix).await?;
        let before = reading().await?;
        let mut rest_round = rest_load(&ports, None, Op::Mix, &fixture, plan.round).await?;
        reading()
            .await?
            .charge_since(&before, &mut rest_round, &mut cpu_per_node);
        refill(&fixture, ports[0], Op::Mix).await?;
        let before = reading().await?;
        let mut amqp_round =
            amqp_load(amqp, &queue, None, Op::Mix, &fixture, plan.round, false).await?;
        reading()
            .await?
            .charge_since(&before, &mut amqp_round, &mut cpu_per_node);
        rest.merge(rest_round);
        amqp_sample.merge(amqp_round);
    }
    drop(services);
    Ok((rest, amqp_sample, cpu_per_node))
}

/// The process id of the local RabbitMQ node (`rabbitmqctl eval 'os:getpid().'`), if it can be
/// asked.
fn rabbitmq_pid() -> Option<u32> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["eval", "os:getpid()."])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .trim_matches('"')
        .parse()
        .ok()
}

/// CPU seconds used so far by each Redis node, by the instances together, and by RabbitMQ.
struct CpuReading {
    nodes: Vec<f64>,
    service: f64,
    broker: f64,
}

impl CpuReading {
    /// Reads Redis's `INFO cpu` on each node in `nodes`, and `/proc` of the instances' `pids`
    /// and of the `broker`'s.
    async fn take(nodes: &[u16], pids: &[u32], broker: Option<u32>) -> anyhow::Result<Self> {
        let mut cpu = Vec::with_capacity(nodes.len());
        for port in nodes {
            let mut connection = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
                .get_multiplexed_async_connection()
                .await?;
            cpu.push(redis_cpu(&mut connection).await?);
        }
        Ok(Self {
            nodes: cpu,
            service: pids.iter().copied().map(process_cpu).sum(),
            broker: broker.map_or(0.0, process_cpu),
        })
    }

    /// Charges what was used since `earlier` to `sample`, and each node's to `per_node`.
    fn charge_since(&self, earlier: &Self, sample: &mut Sample, per_node: &mut [f64]) {
        for ((total, now), then) in per_node.iter_mut().zip(&self.nodes).zip(&earlier.nodes) {
            *total += now - then;
            sample.redis_cpu += now - then;
        }
        sample.service_cpu += self.service - earlier.service;
        sample.broker_cpu += self.broker - earlier.broker;
    }
}

fn render_fleet(rows: &mut [FleetRow], plan: &Plan<'_>) -> String {
    let mut out = format!(
        "\n## Several instances\n\nThe mix (70% get, 10% create, 10% list, 5% update, 5% delete) \
         over REST ({} connections spread evenly over the instances) and over AMQP (one command \
         queue that every instance consumes), {} round(s) of {:.1} s each per pass, on a private Redis \
         and on a private Redis Cluster of three masters, each with {FIXTURE_SESSIONS} sessions; \
         the load generator, the instances and Redis share the machine's cores. The \
         configurations run in {PASSES} passes, the second in the reverse order, each on a \
         fresh store; the figures merge both passes, and the REST ops/s of each pass show \
         their spread. CPU per operation: of all instances together, of Redis (the sum over \
         the nodes) and of RabbitMQ.\n\n\
         | Redis | instances | REST ops/s | REST ops/s, pass 1 / pass 2 | REST p99 ms | REST CPU µs/op: service / Redis | AMQP ops/s | AMQP p99 ms | AMQP CPU µs/op: service / Redis / RabbitMQ | errors | Redis CPU per node, % of a core |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        crate::HTTP_CONNECTIONS,
        plan.rounds,
        plan.round.as_secs_f64()
    );
    for row in rows.iter_mut() {
        let elapsed = row.rest.elapsed.as_secs_f64() + row.amqp.elapsed.as_secs_f64();
        let per_node: Vec<String> = row
            .cpu_per_node
            .iter()
            .map(|cpu| format!("{:.0}", cpu * 100.0 / elapsed.max(1e-9)))
            .collect();
        let per_pass: Vec<String> = row
            .rest_per_pass
            .iter()
            .map(|rate| format!("{rate:.0}"))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.2} | {:.1} / {:.1} | {:.0} | {:.2} | {:.1} / {:.1} / {:.1} | {} | {} |",
            row.redis,
            row.instances,
            row.rest.rate(),
            per_pass.join(" / "),
            row.rest.percentile_ms(0.99),
            row.rest.us_per_op(row.rest.service_cpu),
            row.rest.redis_us_per_op(),
            row.amqp.rate(),
            row.amqp.percentile_ms(0.99),
            row.amqp.us_per_op(row.amqp.service_cpu),
            row.amqp.redis_us_per_op(),
            row.amqp.us_per_op(row.amqp.broker_cpu),
            row.rest.errors + row.amqp.errors,
            per_node.join(" / ")
        );
    }
    out
}

/// Runs the `wait` part: creates over REST and AMQP against two services on one master with one
/// replica, one of them with `REDIS_WAIT_REPLICAS=1`, their rounds alternating.
pub async fn wait(run_id: &str, plan: &Plan<'_>) -> anyhow::Result<String> {
    eprintln!("wait: a master with one replica");
    let master = PrivateRedis::start(&[]);
    let _replica = PrivateRedis::start_replica_on(free_port(), &master);
    let url = format!("redis://127.0.0.1:{}/", master.port);
    let start = |name: &str, wait: bool| {
        let names = format!("bench.{run_id}.wait-{name}");
        let mut command = service_command(
            plan.service,
            &format!("bench-{run_id}-{name}"),
            &names,
            &url,
        );
        if wait {
            command.env("REDIS_WAIT_REPLICAS", "1");
        }
        (Service::start(&mut command, free_port()), names)
    };
    let (without, without_names) = start("nowait", false);
    let (with, with_names) = start("wait", true);
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    // Creates read none of it, but the load picks an id and a user for every command.
    let fixture = Arc::new(Fixture {
        ids: vec!["unread".to_owned()],
        users: vec!["unread".to_owned()],
        deletable: Mutex::new(Vec::new()),
    });
    let mut out = format!(
        "\n## Waiting for a replica\n\nCreates against two instances over one private master \
         with one replica, the second with `REDIS_WAIT_REPLICAS=1` (each create then waits until \
         the replica has it), {} round(s) of {:.1} s each, alternating.\n\n\
         | case | ops/s, no wait | p50 ms | p99 ms | ops/s, WAIT 1 | p50 ms | p99 ms | errors | WAIT/no wait |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        plan.rounds,
        plan.round.as_secs_f64()
    );
    for rest in [true, false] {
        let (mut a, mut b) = (Sample::default(), Sample::default());
        for _ in 0..plan.rounds {
            if rest {
                a.merge(
                    rest_load(&[without.port()], None, Op::Create, &fixture, plan.round).await?,
                );
                b.merge(rest_load(&[with.port()], None, Op::Create, &fixture, plan.round).await?);
            } else {
                let load = |names: &str| {
                    let queue = format!("{names}.commands");
                    let (amqp, fixture) = (&amqp, &fixture);
                    async move {
                        amqp_load(amqp, &queue, None, Op::Create, fixture, plan.round, false).await
                    }
                };
                a.merge(load(&without_names).await?);
                b.merge(load(&with_names).await?);
            }
        }
        let _ = writeln!(
            out,
            "| {} create | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {} | {:.2} |",
            if rest { "REST" } else { "AMQP" },
            a.rate(),
            a.percentile_ms(0.5),
            a.percentile_ms(0.99),
            b.rate(),
            b.percentile_ms(0.5),
            b.percentile_ms(0.99),
            a.errors + b.errors,
            b.rate() / a.rate().max(1e-9)
        );
    }
    Ok(out)
}

/// The `churn` part's subscriber task, aborted when dropped: on any path out of `churn`, as its
/// connection is closed (lapin closes a connection when its last handle, or channel, is dropped).
struct Subscriber(tokio::task::JoinHandle<()>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the `churn` part: sessions with a lifetime of [`LIFETIME`] are created steadily while,
/// of four instances, one after another is stopped and a fresh one started; then one is killed.
/// Each expiry event's lateness is the time it arrived at a subscriber minus the session's
/// `expires_at`.
pub async fn churn(run_id: &str, plan: &Plan<'_>) -> anyhow::Result<String> {
    const LIFETIME: u64 = 5;
    const INSTANCES: usize = 4;
    let (phase, every, rate) = if plan.rounds == 1 {
        (Duration::from_secs(8), Duration::from_secs(2), 50u32)
    } else {
        (Duration::from_secs(30), Duration::from_secs(3), 200)
    };
    eprintln!("churn: {INSTANCES} instances coming and going, then one killed");
    let redis = PrivateRedis::start(&[]);
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let names = format!("bench.{run_id}.churn");
    let prefix = format!("bench-{run_id}-churn");
    let start = {
        let (service, prefix, names, url) = (
            plan.service.to_owned(),
            prefix.clone(),
            names.clone(),
            url.clone(),
        );
        move || {
            Service::start(
                service_command(&service, &prefix, &names, &url)
                    .env("SESSION_EXP_SEC", LIFETIME.to_string()),
                free_port(),
            )
        }
    };
    // The first instance takes the creates and stays; the others come and go.
    let front = start();
    let mut others: Vec<Service> = (1..INSTANCES).map(|_| start()).collect();

    // Every SessionClosed, by session id, with when it arrived.
    let arrived: Arc<std::sync::Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let amqp = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            format!("{names}.events").as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let subscriber = Subscriber(tokio::spawn({
        let arrived = arrived.clone();
        async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let now = SystemTime::now();
                if let Ok(event) = serde_json::from_slice::<Value>(&delivery.data) {
                    if let Some(id) = event["data"]["session_id"].as_str() {
                        arrived.lock().unwrap().insert(id.to_owned(), now);
                    }
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
    }));

    // Creates at `rate` a second over both phases, each with its expires_at.
    let created: Arc<std::sync::Mutex<Vec<(String, SystemTime)>>> = Arc::default();
    let creating_for = phase * 2 + Duration::from_secs(LIFETIME);
    let creator = tokio::spawn({
        let (created, port) = (created.clone(), front.port());
        async move {
            let mut http = crate::HttpConnection::open(port).await?;
            let started = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            let mut n = 0;
            while started.elapsed() < creating_for {
                tick.tick().await;
                let (status, answer) = http.send("POST", "/a01/session", &create_body(n)).await?;
                anyhow::ensure!(status == 201, "create answered {status}");
                let answer: Value = serde_json::from_slice(&answer)?;
                let id = answer["session_id"].as_str().unwrap_or_default().to_owned();
                // A create answers the id alone; its expires_at is read back.
                let (_, answer) = http.send("GET", &format!("/a01/session/{id}"), "").await?;
                let answer: Value = serde_json::from_slice(&answer)?;
                let expires_at = time::OffsetDateTime::parse(
                    answer["expires_at"].as_str().unwrap_or_default(),
                    &time::format_description::well_known::Rfc3339,
                )?;
                created.lock().unwrap().push((id, expires_at.into()));
                n += 1;
            }
            Ok::<_, anyhow::Error>(started.elapsed())
        }
    });

    // Phase one: after the first expiries, every `every` one instance stops and a fresh one
    // starts in its place.
    tokio::time::sleep(Duration::from_secs(LIFETIME)).await;
    let churn_from = SystemTime::now();
    let churn_until = tokio::time::Instant::now() + phase;
    let mut replaced = 0;
    while tokio::time::Instant::now() < churn_until {
        tokio::time::sleep(every).await;
        let leaving = others.remove(0);
        let start = start.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            let (status, _) = leaving.terminate();
            (status, start())
        })
        .await?;
        anyhow::ensure!(
            fresh.0.success(),
            "a stopped instance exited with {}",
            fresh.0
        );
        others.push(fresh.1);
        replaced += 1;
    }
    // Phase two: one instance killed; its leases run out before the others take its buckets.
    let killed_at = SystemTime::now();
    let killed = others.remove(0);
    tokio::task::spawn_blocking(move || killed.kill()).await?;
    tokio::time::sleep(phase).await;
    let phase_end = SystemTime::now();
    let creating_time = creator.await??;
    // The last sessions' events, then the count.
    tokio::time::sleep(Duration::from_secs(LIFETIME + 2)).await;
    drop((subscriber, channel, amqp));

    let created = created.lock().unwrap().clone();
    // Each create is a POST and then a GET, in turn: the target rate may not be reached.
    let achieved_rate = created.len() as f64 / creating_time.as_secs_f64();
    let arrived = arrived.lock().unwrap().clone();
    let lateness_ms = |from: SystemTime, until: SystemTime| -> (Vec<f64>, usize) {
        let mut late = Vec::new();
        let mut missing = 0;
        for (id, expires_at) in created.iter().filter(|(_, at)| *at >= from && *at < until) {
            match arrived.get(id) {
                Some(when) => late.push(match when.duration_since(*expires_at) {
                    Ok(after) => after.as_secs_f64() * 1000.0,
                    Err(before) => -before.duration().as_secs_f64() * 1000.0,
                }),
                None => missing += 1,
            }
        }
        late.sort_by(f64::total_cmp);
        (late, missing)
    };
    let percentile = |late: &[f64], p: f64| -> f64 {
        late.get(((late.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut out = format!(
        "\n## Expiry while instances come and go\n\nFour instances on a private Redis \
         (`SESSION_EXP_SEC={LIFETIME}`); sessions created through the first, {rate} a second \
         wanted, {achieved_rate:.0} a second reached (a create and a read of it, in turn). \
         While they expire, every {:.0} s another instance is stopped (SIGTERM, which frees its \
         bucket leases) and a fresh one started ({replaced} replaced in {:.0} s); then one \
         instance is killed (SIGKILL: its leases run out after 3 s). Lateness: when the \
         `SessionClosed` reached a subscriber, minus the session's `expires_at`.\n\n\
         | sessions expiring | events | missing | p50 ms | p99 ms | max ms |\n\
         |---|---:|---:|---:|---:|---:|\n",
        every.as_secs_f64(),
        phase.as_secs_f64()
    );
    // Sessions are counted by when they expired. A relay publishes what is due at its next
    // tick (every 250 ms): those expiring in the last half second before the kill may be the
    // killed relay's to publish, and count with the kill.
    // Until 5 s after the kill, the killed relay's buckets wait for its leases to lapse.
    let kill_from = killed_at - Duration::from_millis(500);
    for (what, from, until) in [
        ("while instances come and go", churn_from, kill_from),
        ("after one is killed", kill_from, phase_end),
        (
            "after one is killed, its first 5 s",
            kill_from,
            killed_at + Duration::from_secs(5),
        ),
    ] {
        let (late, missing) = lateness_ms(from, until);
        let _ = writeln!(
            out,
            "| {what} | {} | {missing} | {:.0} | {:.0} | {:.0} |",
            late.len(),
            percentile(&late, 0.5),
            percentile(&late, 0.99),
            percentile(&late, 1.0)
        );
    }
    drop(others);
    drop(front);
    drop(redis);
    Ok(out)
}
