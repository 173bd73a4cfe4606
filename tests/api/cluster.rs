//! The same commands on a Redis Cluster: every key of one user shares a hash slot, so each
//! command's script runs on one node, whichever node the user's bucket lands on. A node that
//! goes away holds up no other node's work; `REDIS_CLUSTER=auto` decides once Redis answers, and
//! `REDIS_CLUSTER=no` against a cluster node says so.

use std::{collections::HashSet, time::Duration};

use lapin::BasicProperties;
use serde_json::json;
use session_manager::{
    config::{SecretString, Settings},
    store::{RedisMode, Replication},
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

/// Three masters with two replicas each, `REDIS_WAIT_REPLICAS=1`: a master is killed (SIGKILL)
/// while 3,000 AMQP creates with message_ids and REST creates run. A replica takes over; every
/// command is answered, each applied once; every change that was answered is there afterwards;
/// `/readyz` is 503 during the gap and 200 after; the `SessionClosed` events of deleting them
/// all, on every shard, arrive.
#[tokio::test]
async fn a_master_killed_under_load_loses_no_answered_change() {
    const COMMANDS: usize = 3_000;
    let mut cluster = tokio::task::spawn_blocking(|| PrivateCluster::start_with_replicas(2))
        .await
        .unwrap();
    let settings = Settings {
        redis_url: SecretString::new(cluster.seed_url()),
        redis_wait: Some(Replication {
            replicas: 1,
            timeout: Duration::from_secs(1),
        }),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let stop = tokio_util::sync::CancellationToken::new();
    // REST creates all along, and /readyz watched all along.
    let rest = tokio::spawn({
        let (http, url, stop) = (app.http.clone(), app.url("/a01/session"), stop.clone());
        async move {
            let (mut created, mut unavailable) = (Vec::new(), 0);
            for n in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let body =
                    json!({"user_id": format!("rest-{}", n % 30), "device_id": format!("r{n}")});
                let response = http.post(&url).json(&body).send().await.unwrap();
                match response.status().as_u16() {
                    201 => {
                        let created_body: serde_json::Value = response.json().await.unwrap();
                        created.push(created_body["session_id"].as_str().unwrap().to_owned());
                    }
                    503 => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("REST create answered {other}"),
                }
            }
            (created, unavailable)
        }
    });
    let readiness = tokio::spawn({
        let (http, url, stop) = (app.http.clone(), app.url("/readyz"), stop.clone());
        async move {
            // Each change of /readyz's status, and when.
            let mut seen: Vec<(u16, tokio::time::Instant)> = Vec::new();
            while !stop.is_cancelled() {
                let status = http.get(&url).send().await.unwrap().status().as_u16();
                if seen.last().map(|(last, _)| *last) != Some(status) {
                    seen.push((status, tokio::time::Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        }
    });

    let mut correlation_ids = Vec::new();
    let mut killed_at = None;
    for n in 0..COMMANDS {
        if n == COMMANDS / 3 {
            killed_at = Some(tokio::time::Instant::now());
            // The master of the last slot goes (SIGKILL), in the middle of the load.
            let port = cluster.master_of_slot(0, 16_383);
            let at = cluster
                .nodes
                .iter()
                .position(|node| node.port == port)
                .unwrap();
            assert_ne!(at, 0, "the seed node stays");
            drop(cluster.nodes.remove(at));
        }
        let correlation_id = format!("c{n}");
        let properties = BasicProperties::default()
            .with_reply_to(app.amqp.reply_queue().into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_message_id(format!("m{n}").into());
        let command = json!({"type": "CreateSession", "user_id": format!("user-{}", n % 90), "device_id": format!("d{n}")});
        app.amqp
            .publish(command.to_string().as_bytes(), properties)
            .await;
        correlation_ids.push(correlation_id);
    }
    let answered = app.amqp.created_session_ids(&correlation_ids).await;
    eventually(async || match app.readyz().await {
        200 => Ok(()),
        other => Err(format!("/readyz answers {other} after the failover")),
    })
    .await;
    stop.cancel();
    let (rest_created, rest_unavailable) = rest.await.unwrap();
    let seen = readiness.await.unwrap();
    let statuses: Vec<u16> = seen.iter().map(|(status, _)| *status).collect();
    assert!(
        statuses.contains(&503),
        "/readyz during the gap: {statuses:?}"
    );
    // The figures of docs/DEPLOYMENT.md (`cargo test cluster::a_master_killed -- --nocapture`).
    let killed_at = killed_at.unwrap();
    let back = seen
        .iter()
        .rev()
        .find(|(status, _)| *status == 200)
        .unwrap()
        .1;
    println!(
        "failover: /readyz 200 again {:.1} s after the kill; {} REST creates answered 503 meanwhile",
        back.duration_since(killed_at).as_secs_f64(),
        rest_unavailable
    );

    // Every answered change is there: each user lists exactly its sessions.
    let mut listed = HashSet::new();
    let users = (0..90)
        .map(|n| format!("user-{n}"))
        .chain((0..30).map(|n| format!("rest-{n}")));
    for user in users.clone() {
        listed.extend(crate::helpers::every_session_id(&app.url(""), &user).await);
    }
    let expected: HashSet<String> = answered.iter().cloned().chain(rest_created).collect();
    assert_eq!(listed, expected);

    // Deleting them all publishes every event, the failed-over shard's too.
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    for user in users {
        app.delete_user(&user).await;
    }
    assert_eq!(events.closed_session_ids(expected.len()).await, expected);
    app.stop().await;
    drop(cluster);
}
