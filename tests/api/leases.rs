//! The relays' bucket leases: instances share the buckets' periodic work instead of each doing
//! all of it, and the buckets of an instance that dies are taken over.

use std::{collections::HashMap, time::Duration};

use serde_json::json;
use session_manager::store::Keys;
use session_manager_testkit::{free_port, Service};

use crate::helpers::{
    clean_up, eventually, isolated_settings, service_on_local_servers, spawn_app_with, REDIS_URL,
};

/// How many buckets each relay holds now, by the leases hash.
async fn holders(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
) -> HashMap<String, usize> {
    let leases: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.relay_leases())
        .query_async(redis)
        .await
        .unwrap();
    let mut held = HashMap::new();
    for (field, value) in leases {
        if field.starts_with("b:") {
            let owner = value.split(' ').next().unwrap().to_owned();
            *held.entry(owner).or_default() += 1;
        }
    }
    held
}

/// Two instances hold half of the 256 buckets each (no bucket twice); when one is killed
/// (SIGKILL, no goodbye), the other holds all of them within 10 s, and the sessions of the dead
/// one's buckets still expire with their events.
#[tokio::test]
async fn two_instances_share_the_buckets_and_one_takes_over_when_the_other_dies() {
    let settings = isolated_settings();
    let keys = Keys::new(&settings.key_prefix);
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let port = free_port();
    let dying = Service::start(
        service_on_local_servers(&settings).env("SESSION_EXP_SEC", "6"),
        port,
    );
    let staying = spawn_app_with(settings.clone()).await;
    eventually(async || {
        let held = holders(&mut redis, &keys).await;
        let counts: Vec<usize> = held.values().copied().collect();
        match counts.as_slice() {
            [a, b] if a + b == 256 && a.abs_diff(*b) <= 1 => Ok(()),
            _ => Err(format!("leases: {held:?}")),
        }
    })
    .await;

    // Sessions of many users (so in both instances' buckets), ending in 6 s, made through the
    // instance that dies.
    let http = crate::helpers::Http::new();
    let mut made = std::collections::HashSet::new();
    for n in 0..40 {
        let response = http
            .post(dying.url("/a01/session"))
            .json(&json!({"user_id": format!("user-{n}"), "device_id": "d"}))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        made.insert(body["session_id"].as_str().unwrap().to_owned());
    }
    let mut events = staying.amqp.subscribe(&settings.events_exchange).await;
    dying.kill();
    let killed_at = tokio::time::Instant::now();
    eventually(async || match holders(&mut redis, &keys).await.len() {
        1 => Ok(()),
        n => Err(format!("{n} relays hold leases")),
    })
    .await;
    let taken_over = killed_at.elapsed();
    assert!(taken_over < Duration::from_secs(10), "{taken_over:?}");
    assert_eq!(
        holders(&mut redis, &keys).await.values().sum::<usize>(),
        256
    );
    assert_eq!(events.closed_session_ids(made.len()).await, made);
    staying.stop().await;
    clean_up(&settings).await;
}
