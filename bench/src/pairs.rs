//! Pairs measured side by side in one run, their rounds alternating so that drift of the machine
//! cancels: REST get and create with encryption at rest off and on (a second service with a
//! key, over the same Redis, with its own fixture of sealed sessions), and AMQP get without and
//! with a `message_id` (reads are not recorded, so both should cost the same).

use std::{fmt::Write as _, sync::Arc};

use lapin::Connection;
use session_manager_testkit::{free_port, Service};
use tokio::sync::Mutex;

use crate::{
    amqp_load, create_body, create_sessions, rest_load, selected, service_command, Fixture, Op,
    Plan, Sample, FIXTURE_SESSIONS,
};

/// A fixed key: the figures do not depend on its value.
pub(crate) const KEY: &str = "bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The plain service of the run and what it was given.
pub(crate) struct Plain<'a> {
    pub port: u16,
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
            ids: create_sessions(sealed.port(), FIXTURE_SESSIONS, create_body).await?,
            users: plain.fixture.users.clone(),
            deletable: Mutex::new(Vec::new()),
        });
        for op in rest_cases {
            let (mut off, mut on) = (Sample::default(), Sample::default());
            for _ in 0..plan.rounds {
                off.merge(rest_load(&[plain.port], op, plain.fixture, plan.round).await?);
                on.merge(rest_load(&[sealed.port()], op, &sealed_fixture, plan.round).await?);
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
                amqp_load(
                    plain.amqp,
                    plain.command_queue,
                    Op::Get,
                    plain.fixture,
                    plan.round,
                    ids,
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
    Ok(render(&mut pairs, plan))
}

fn render(pairs: &mut [Pair], plan: &Plan<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Encryption at rest, and reads with a message_id\n\n\
         Each pair in the same run, {} round(s) of {:.1} s each, alternating: REST get and create \
         against the service above and against a second one over the same Redis with \
         `SESSION_ENCRYPTION_KEY` set (its {FIXTURE_SESSIONS} sessions created through it, so \
         every read opens four sealed values); AMQP get without and with a fresh `message_id` \
         per command.\n",
        plan.rounds,
        plan.round.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| case | A | ops/s | p50 ms | p99 ms | B | ops/s | p50 ms | p99 ms | errors | B/A |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for pair in pairs.iter_mut() {
        let (a_name, a) = (pair.a.0, &mut pair.a.1);
        let (a_rate, a50, a99) = (a.rate(), a.percentile_ms(0.5), a.percentile_ms(0.99));
        let a_errors = a.errors;
        let (b_name, b) = (pair.b.0, &mut pair.b.1);
        let (b_rate, b50, b99) = (b.rate(), b.percentile_ms(0.5), b.percentile_ms(0.99));
        let _ = writeln!(
            out,
            "| {} | {a_name} | {a_rate:.0} | {a50:.2} | {a99:.2} | {b_name} | {b_rate:.0} | {b50:.2} | {b99:.2} | {} | {:.3} |",
            pair.case,
            a_errors + b.errors,
            b_rate / a_rate.max(1e-9)
        );
    }
    out
}
