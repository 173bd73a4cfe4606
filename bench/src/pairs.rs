//! Pairs measured side by side in one run, their rounds alternating so that drift of the machine
//! cancels: REST get and create with encryption at rest off and on (a second service with a
//! key, over the same Redis, with its own fixture of sealed sessions), AMQP get without and
//! with a `message_id` (reads are not recorded, so both should cost the same), and REST get
//! and AMQP get without and with callers (a second service with a callers file, with its own
//! fixture created through it: each request's bearer token hashed and looked up, each
//! command's `user_id` looked up).

use std::{fmt::Write as _, future::Future, sync::Arc};

use lapin::Connection;
use serde_json::json;
use session_manager_testkit::{free_port, sha256_hex, Service};
use tokio::sync::Mutex;

use crate::{
    amqp_load, create_body, create_sessions, process_cpu, rest_load, selected, service_command,
    Fixture, Op, Plan, Sample, FIXTURE_SESSIONS,
};

/// A fixed key: the figures do not depend on its value.
pub(crate) const KEY: &str = "bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The RabbitMQ user of the benchmark's connection (`LOCAL_AMQP_URL`): the caller's
/// `amqp_user`, and the `user_id` its commands carry (RabbitMQ accepts only the connection's).
const AMQP_USER: &str = "guest";

/// The plain service of the run and what it was given.
pub(crate) struct Plain<'a> {
    pub port: u16,
    pub pid: u32,
    pub fixture: &'a Arc<Fixture>,
    pub amqp: &'a Connection,
    pub command_queue: &'a str,
}

struct Pair {
    case: &'static str,
    a: (&'static str, Sample),
    b: (&'static str, Sample),
}

/// Runs the selected pairs; their table, or nothing when none is selected.
pub(crate) async fn run(
    plan: &Plan<'_>,
    run_id: &str,
    plain: &Plain<'_>,
) -> anyhow::Result<String> {
    let rest_cases: Vec<Op> = [Op::Get, Op::Create]
        .into_iter()
        .filter(|op| selected(plan.only, "REST", *op))
        .collect();
    let amqp_get = selected(plan.only, "AMQP", Op::Get);
    if rest_cases.is_empty() && !amqp_get {
        return Ok(String::new());
    }
    let mut pairs = Vec::new();
    if !rest_cases.is_empty() {
        let names = format!("bench.{run_id}.sealed");
        let sealed = Service::start(
            service_command(
                plan.service,
                &format!("bench-{run_id}-sealed"),
                &names,
                plan.redis_url,
            )
            .env("SESSION_ENCRYPTION_KEY", KEY),
            free_port(),
        );
        let sealed_fixture = Arc::new(Fixture {
            ids: create_sessions(sealed.port(), None, FIXTURE_SESSIONS, create_body).await?,
            users: plain.fixture.users.clone(),
            deletable: Mutex::new(Vec::new()),
        });
        let (plain_port, sealed_port) = ([plain.port], [sealed.port()]);
        for op in rest_cases {
            let (mut off, mut on) = (Sample::default(), Sample::default());
            for _ in 0..plan.rounds {
                let load = |pid, ports, fixture| {
                    cpu_of(pid, rest_load(ports, None, op, fixture, plan.round))
                };
                off.merge(load(plain.pid, &plain_port, plain.fixture).await?);
                on.merge(load(sealed.id(), &sealed_port, &sealed_fixture).await?);
            }
            pairs.push(Pair {
                case: if op == Op::Get {
                    "REST get"
                } else {
                    "REST create"
                },
                a: ("encryption off", off),
                b: ("encryption on", on),
            });
        }
    }
    if amqp_get {
        let (mut without, mut with) = (Sample::default(), Sample::default());
        for _ in 0..plan.rounds {
            let load = |ids| {
                cpu_of(
                    plain.pid,
                    amqp_load(
                        plain.amqp,
                        plain.command_queue,
                        None,
                        Op::Get,
                        plain.fixture,
                        plan.round,
                        ids,
                    ),
                )
            };
            without.merge(load(false).await?);
            with.merge(load(true).await?);
        }
        pairs.push(Pair {
            case: "AMQP get",
            a: ("without message_id", without),
            b: ("with message_id", with),
        });
    }
    let rest_get = selected(plan.only, "REST", Op::Get);
    if rest_get || amqp_get {
        // One caller that may do everything, known by a 40-character token and by the AMQP user
        // of the benchmark's connection.
        let mut token = uuid::Uuid::new_v4().simple().to_string();
        token += &uuid::Uuid::new_v4().simple().to_string()[..8];
        let callers_file = std::env::temp_dir().join(format!("bench-{run_id}-callers.json"));
        let callers = json!({"callers": [{
            "name": "bench",
            "token_sha256": sha256_hex(&token),
            "amqp_user": AMQP_USER,
            "scopes": ["*"],
        }]});
        std::fs::write(&callers_file, callers.to_string())?;
        let names = format!("bench.{run_id}.callers");
        let service = Service::start(
            service_command(
                plan.service,
                &format!("bench-{run_id}-callers"),
                &names,
                plan.redis_url,
            )
            .env("SESSION_CALLERS_FILE", &callers_file)
            // As the plain service listens without callers.
            .env("SERVICE_LISTEN_ADDR", "127.0.0.1"),
            free_port(),
        );
        // Read at start: the service listens once it has it.
        let _ = std::fs::remove_file(&callers_file);
        let token = Some(token.as_str());
        let fixture = Arc::new(Fixture {
            ids: create_sessions(service.port(), token, FIXTURE_SESSIONS, create_body).await?,
            users: plain.fixture.users.clone(),
            deletable: Mutex::new(Vec::new()),
        });
        if rest_get {
            let (plain_port, callers_port) = ([plain.port], [service.port()]);
            let (mut without, mut with) = (Sample::default(), Sample::default());
            for _ in 0..plan.rounds {
                let load = |pid, ports, token, fixture| {
                    cpu_of(pid, rest_load(ports, token, Op::Get, fixture, plan.round))
                };
                without.merge(load(plain.pid, &plain_port, None, plain.fixture).await?);
                with.merge(load(service.id(), &callers_port, token, &fixture).await?);
            }
            pairs.push(Pair {
                case: "REST get",
                a: ("no callers", without),
                b: ("callers, token hashed", with),
            });
        }
        if amqp_get {
            let queue = format!("{names}.commands");
            let (mut without, mut with) = (Sample::default(), Sample::default());
            for _ in 0..plan.rounds {
                let load = |pid, queue, user, fixture| {
                    cpu_of(
                        pid,
                        amqp_load(plain.amqp, queue, user, Op::Get, fixture, plan.round, false),
                    )
                };
                without.merge(load(plain.pid, plain.command_queue, None, plain.fixture).await?);
                with.merge(load(service.id(), &queue, Some(AMQP_USER), &fixture).await?);
            }
            pairs.push(Pair {
                case: "AMQP get",
                a: ("no callers", without),
                b: ("callers, user_id looked up", with),
            });
        }
    }
    Ok(render(&mut pairs, plan))
}

/// `load`, with the CPU time that the service process `pid` spent meanwhile.
async fn cpu_of(
    pid: u32,
    load: impl Future<Output = anyhow::Result<Sample>>,
) -> anyhow::Result<Sample> {
    let before = process_cpu(pid);
    let mut sample = load.await?;
    sample.service_cpu = process_cpu(pid) - before;
    Ok(sample)
}

fn render(pairs: &mut [Pair], plan: &Plan<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Encryption at rest, reads with a message_id, callers\n\n\
         Each pair in the same run, {} round(s) of {:.1} s each, alternating: REST get and create \
         against the service above and against a second one over the same Redis with \
         `SESSION_ENCRYPTION_KEY` set (its {FIXTURE_SESSIONS} sessions created through it, so \
         every read opens four sealed values); AMQP get without and with a fresh `message_id` \
         per command; REST get and AMQP get against the service above and against a second one \
         with `SESSION_CALLERS_FILE` set (one caller, scope `*`, its {FIXTURE_SESSIONS} sessions \
         created through it): every request carries a 40-character bearer token, which it hashes \
         with SHA-256 and compares with the caller's digest, every command the `user_id` of its \
         connection, which it looks up. CPU µs/op: of the service process answering.\n",
        plan.rounds,
        plan.round.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| case | A | ops/s | p50 ms | p99 ms | CPU µs/op | B | ops/s | p50 ms | p99 ms | CPU µs/op | errors | B/A |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for pair in pairs.iter_mut() {
        let (a_name, a) = (pair.a.0, &mut pair.a.1);
        let (a_rate, a50, a99) = (a.rate(), a.percentile_ms(0.5), a.percentile_ms(0.99));
        let (a_errors, a_cpu) = (a.errors, a.service_us_per_op());
        let (b_name, b) = (pair.b.0, &mut pair.b.1);
        let (b_rate, b50, b99) = (b.rate(), b.percentile_ms(0.5), b.percentile_ms(0.99));
        let b_cpu = b.service_us_per_op();
        let _ = writeln!(
            out,
            "| {} | {a_name} | {a_rate:.0} | {a50:.2} | {a99:.2} | {a_cpu:.1} | {b_name} | {b_rate:.0} | {b50:.2} | {b99:.2} | {b_cpu:.1} | {} | {:.3} |",
            pair.case,
            a_errors + b.errors,
            b_rate / a_rate.max(1e-9)
        );
    }
    out
}
