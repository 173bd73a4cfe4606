//! The same commands on a Redis Cluster: every key of one user shares a hash slot, so each
//! command's script runs on one node, whichever node the user's bucket lands on. A node that
//! goes away holds up no other node's work; `REDIS_CLUSTER=auto` decides once Redis answers, and
//! `REDIS_CLUSTER=no` against a cluster node says so.

use std::{collections::HashSet, time::Duration};

use serde_json::json;
use session_manager::{
    config::{SecretString, Settings},
    store::RedisMode,
};

use crate::helpers::{
    clean_up, eventually, isolated_settings, service_with_settings, spawn_app_with, Http, AMQP_URL,
};
use session_manager_testkit::{free_port, PrivateCluster, Service, TcpProxy};

#[tokio::test]
async fn every_operation_works_on_a_redis_cluster() {
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let settings = Settings {
        redis_url: SecretString::new(cluster.seed_url()),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;

    // Users spread over many buckets, hence over all three nodes.
    let users: Vec<String> = (0..24).map(|n| format!("user-{n}")).collect();
    let mut buckets = HashSet::new();
    for user in &users {
        for device in ["phone", "laptop"] {
            let id = app
                .create_session(json!({"user_id": user, "device_id": device}))
                .await;
            buckets.insert(id[..2].to_owned());
        }
    }
    assert!(
        buckets.len() > 10,
        "sessions landed in {} buckets",
        buckets.len()
    );

    for user in &users {
        let list = app.list(user).await;
        let sessions = list["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "{list}");
        let first = sessions[0]["session_id"].as_str().unwrap();
        assert_eq!(sessions[0]["device_id"], "phone");

        assert_eq!(app.patch(first, &json!({"access_token": "t"})).await.0, 200);
        assert_eq!(app.session(first).await["access_token"], "t");

        // AMQP with a message_id: the idempotency record lives in the same slot.
        let message_id = uuid::Uuid::new_v4().to_string();
        let command = json!({"type": "DeleteSession", "session_id": first});
        let reply = app.amqp.call_with_id(&command, &message_id).await;
        assert_eq!(reply.body["status"], "ok", "{}", reply.body);
        let again = app.amqp.call_with_id(&command, &message_id).await;
        assert_eq!(again.body, reply.body);

        let deleted = app.delete_user(user).await;
        assert_eq!(
            deleted["session_ids"].as_array().unwrap().len(),
            1,
            "{deleted}"
        );
    }
    app.stop().await;
    drop(cluster);
}

/// A cluster one of whose masters is killed after sessions were made on all of them: the
/// sessions of the other masters still expire with their events, because each bucket's tick is
/// its own call and a dead master fails only the requests of its own slots.
#[tokio::test]
async fn an_unreachable_shard_holds_up_no_other_shards_events() {
    let mut cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let settings = Settings {
        redis_url: SecretString::new(cluster.seed_url()),
        session_lifetime: Duration::from_secs(4),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings.clone()).await;
    let mut events = app.amqp.subscribe(&settings.events_exchange).await;
    let mut sessions = Vec::new();
    for n in 0..30 {
        let user = format!("user-{n}");
        sessions.push(
            app.create_session(json!({"user_id": user, "device_id": "d"}))
                .await,
        );
    }
    // The last node (not the seed) goes away; its sessions cannot be read any more, the others
    // can.
    drop(cluster.nodes.pop());
    let mut reachable = HashSet::new();
    for id in &sessions {
        let (status, _) = app
            .rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
            .await;
        match status {
            200 => {
                reachable.insert(id.clone());
            }
            503 => {}
            other => panic!("GET of a session while a node is down: {other}"),
        }
    }
    assert!(
        !reachable.is_empty() && reachable.len() < sessions.len(),
        "{} of {} sessions reachable: the dead node held some, the others the rest",
        reachable.len(),
        sessions.len()
    );
    // Each reachable session expires with its event, while the ticks of the dead node's buckets
    // fail.
    let mut expired = HashSet::new();
    while expired.len() < reachable.len() {
        let event = events.next().await;
        assert_eq!(event.body["data"]["reason"], "expired");
        let id = event.body["data"]["session_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(reachable.contains(&id), "an event of the dead node: {id}");
        expired.insert(id);
    }
    app.stop().await;
    drop(cluster);
}

/// `REDIS_CLUSTER=auto` with the cluster out of reach at start decides once it answers, instead
/// of taking it for a standalone server for good.
#[tokio::test]
async fn auto_decides_once_redis_answers() {
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let seed = TcpProxy::start(([127, 0, 0, 1], cluster.nodes[0].port).into()).await;
    seed.cut(true);
    let settings = Settings {
        redis_url: SecretString::new(format!("redis://127.0.0.1:{}/", seed.port)),
        redis_mode: RedisMode::Auto,
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    assert_eq!(app.readyz().await, 503);
    let early = app
        .http
        .get(app.url("/a01/session?user_id=early"))
        .send()
        .await
        .unwrap();
    let status = early.status();
    assert_eq!(status, 503, "{:?}", early.text().await);

    seed.allow();
    eventually(async || match app.readyz().await {
        200 => Ok(()),
        other => Err(format!("/readyz answers {other} after Redis answers")),
    })
    .await;
    // Users of every node: the service talks to the cluster as a cluster.
    for n in 0..24 {
        let user = format!("user-{n}");
        let id = app
            .create_session(json!({"user_id": user, "device_id": "d"}))
            .await;
        assert_eq!(app.session(&id).await["user_id"], user.as_str());
    }
    app.stop().await;
    drop(cluster);
}

/// `REDIS_CLUSTER=no` against a cluster node: the first `MOVED` is a clear log line, `/readyz`
/// stays 503, and the commands that met it are `unavailable` (retried over AMQP), not failed.
#[tokio::test]
async fn a_standalone_connection_to_a_cluster_node_says_so_and_is_not_ready() {
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let settings = isolated_settings();
    let port = free_port();
    let service = Service::start(
        service_with_settings(&settings)
            .env("REDIS_URL", cluster.seed_url())
            .env("REDIS_CLUSTER", "no")
            .env("AMQP_URL", AMQP_URL),
        port,
    );
    let http = Http::new();
    let mut statuses = HashSet::new();
    for n in 0..24 {
        let response = http
            .post(service.url("/a01/session"))
            .json(&json!({"user_id": format!("user-{n}"), "device_id": "d"}))
            .send()
            .await
            .unwrap();
        statuses.insert(response.status().as_u16());
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.is_subset(&HashSet::from([201, 503])),
        "{statuses:?}"
    );
    let ready = http.get(service.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let printed = service.printed();
    assert!(
        printed.contains("Redis answered MOVED") && printed.contains("REDIS_CLUSTER=yes"),
        "{printed}"
    );
    assert_eq!(
        printed.matches("Redis answered MOVED").count(),
        1,
        "{printed}"
    );
    service.kill();
    clean_up(&settings).await;
    drop(cluster);
}
