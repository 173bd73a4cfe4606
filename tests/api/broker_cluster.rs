//! A three-node RabbitMQ cluster of the test's own (contract §7.3): the node the instance is
//! connected to is killed (SIGKILL of its Erlang VM) while commands and a mass delete run.

use std::{collections::HashSet, time::Duration};

use lapin::BasicProperties;
use serde_json::{json, Value};
use session_manager::config::{SecretString, Settings};
use session_manager_testkit::{Instance, PrivateRabbitCluster};

use crate::helpers::{isolated_settings, AmqpClient, Http};

/// 3,000 `CreateSession` commands with `message_id`s published through one node while the node
/// the instance is connected to is killed: every command answered, each applied once, every
/// `SessionClosed` of a mass delete run meanwhile delivered to a subscriber on a surviving node,
/// the instance consuming again within 10 s; the command queue is a quorum queue on all three
/// nodes.
#[tokio::test]
async fn a_killed_broker_node_loses_no_command_and_no_event() {
    const COMMANDS: usize = 3_000;
    const MASS: usize = 200;
    // The instance's warnings, shown if the test fails (a reply that never came, once, on a
    // loaded machine: they say what the worker did meanwhile).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("session_manager=warn")
        .with_test_writer()
        .try_init();
    let mut cluster = tokio::task::spawn_blocking(PrivateRabbitCluster::start)
        .await
        .unwrap();
    let urls: Vec<String> = cluster.nodes.iter().map(|node| node.url()).collect();
    let settings = Settings {
        amqp_url: SecretString::new(urls.join(",")),
        ..isolated_settings()
    };
    let instance = Instance::start_not_waiting(settings.clone()).await;
    let http = Http::new();
    let readyz = async || {
        let response = http.get(instance.url("/readyz")).send().await.unwrap();
        response.status().as_u16()
    };
    crate::helpers::eventually(async || match readyz().await {
        200 => Ok(()),
        other => Err(format!("/readyz {other}")),
    })
    .await;
    let members = cluster.quorum_members(1, &settings.command_queue);
    for node in &cluster.nodes {
        assert!(members.contains(&node.name), "{members}");
    }
    // The publisher on the second node, the subscriber on the third; the instance is on the
    // first, the first URL.
    let publisher = AmqpClient::connect_to(&urls[1], &settings).await;
    let subscriber = AmqpClient::connect_to(&urls[2], &settings).await;
    let mut events = subscriber.subscribe(&settings.events_exchange).await;
    let mut mass = HashSet::new();
    for n in 0..MASS {
        let body = json!({"user_id": "mass", "device_id": format!("m{n}")});
        let response = http
            .post(instance.url("/a01/session"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let created: Value = response.json().await.unwrap();
        mass.insert(created["session_id"].as_str().unwrap().to_owned());
    }

    let mut killed_at = None;
    let mut correlation_ids = Vec::new();
    for n in 0..COMMANDS {
        if n == COMMANDS / 3 {
            cluster.kill(0);
            killed_at = Some(tokio::time::Instant::now());
            // The mass delete runs while the instance has no broker: its events wait in the
            // outbox.
            let response = http
                .delete(instance.url("/a01/session?user_id=mass"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        let correlation_id = format!("c{n}");
        let properties = BasicProperties::default()
            .with_reply_to(publisher.reply_queue().into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_message_id(format!("m{n}").into());
        let command = json!({"type": "CreateSession", "user_id": format!("user-{}", n % 50), "device_id": format!("d{n}")});
        publisher
            .publish(command.to_string().as_bytes(), properties)
            .await;
        correlation_ids.push(correlation_id);
    }
    let killed_at = killed_at.unwrap();
    crate::helpers::eventually(async || match readyz().await {
        200 => Ok(()),
        other => Err(format!("/readyz {other} after the kill")),
    })
    .await;
    let back_after = killed_at.elapsed();
    assert!(
        back_after < Duration::from_secs(10),
        "consuming again after {back_after:?}"
    );

    let answered = publisher.created_session_ids(&correlation_ids).await;
    let mut listed = HashSet::new();
    for n in 0..50 {
        listed.extend(
            crate::helpers::every_session_id(&instance.url(""), &format!("user-{n}")).await,
        );
    }
    assert_eq!(listed, answered, "each command applied once");

    assert_eq!(events.closed_session_ids(mass.len()).await, mass);
    println!("broker node killed: consuming again after {back_after:?}");
    instance.stop().await;
    drop(cluster);
}
