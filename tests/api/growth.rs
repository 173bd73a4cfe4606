//! Nothing grows: after every session has ended and the retention of idempotency records has
//! passed, nothing is left under the prefix but fixed bookkeeping, and the outbox consumer
//! groups forget the consumers of instances that are gone.

use std::{collections::HashMap, time::Duration};

use serde_json::json;
use session_manager::{
    config::Settings,
    domain::{Command, IdempotencyKey, SessionId, UserId},
    store::{Bucket, Keys, Policy, RedisConnection, RedisMode, Store, GROUP},
};

use crate::helpers::{isolated_settings, spawn_app_with, REDIS_URL};

#[tokio::test]
async fn idempotency_records_vanish_after_their_retention() {
    let settings = Settings {
        // Long enough to see both records even on a loaded machine, short enough to wait out.
        idempotency_retention: Duration::from_secs(10),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let create = json!({"type": "CreateSession", "user_id": "u", "device_id": "d"});
    let created = app.amqp.call_with_id(&create, "create-1").await;
    let id = created.body["result"]["session_id"].as_str().unwrap();
    let delete = json!({"type": "DeleteSession", "session_id": id});
    app.amqp.call_with_id(&delete, "delete-1").await;
    let record = |command: &serde_json::Value, message_id: &str| {
        let command = Command::parse(command.to_string().as_bytes()).unwrap();
        app.keys().record(
            &command,
            IdempotencyKey::from_message_id(message_id).as_ref(),
        )
    };
    // The two records, and the claims of their keys.
    let claim = |message_id: &str| {
        app.keys()
            .claim(None, &IdempotencyKey::from_message_id(message_id).unwrap())
    };
    let mut records = vec![
        record(&create, "create-1"),
        record(&delete, "delete-1"),
        claim("create-1"),
        claim("delete-1"),
    ];
    records.sort();
    assert_eq!(
        app.keys_left().await,
        records,
        "the two records and claims are left"
    );
    tokio::time::sleep(Duration::from_millis(10_100)).await;
    assert_eq!(app.keys_left().await, Vec::<String>::new());
}

#[tokio::test]
async fn consumers_of_gone_instances_are_forgotten() {
    let settings = isolated_settings();
    let app = spawn_app_with(settings.clone()).await;
    let mut events = app.amqp.subscribe(&settings.events_exchange).await;
    let id = app
        .create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{id}"))
        .await;
    assert_eq!(status, 200);
    events.next().await;
    let outbox = app
        .keys()
        .outbox(Bucket::of_user(&UserId::parse("u".into()).unwrap()));
    let mut redis = app.redis.clone();
    let consumers = |redis: &mut redis::aio::MultiplexedConnection| {
        let outbox = outbox.clone();
        let mut redis = redis.clone();
        async move {
            let infos: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&outbox)
                .arg(GROUP)
                .query_async(&mut redis)
                .await
                .unwrap();
            infos
                .iter()
                .map(|info| match info.get("name") {
                    Some(redis::Value::BulkString(name)) => {
                        String::from_utf8_lossy(name).into_owned()
                    }
                    other => panic!("no consumer name: {other:?}"),
                })
                .collect::<Vec<String>>()
        }
    };
    let before = consumers(&mut redis).await;
    assert_eq!(before.len(), 1, "the app's relay: {before:?}");
    assert!(before[0].starts_with("relay-"), "{before:?}");
    let bucket = Bucket::of_session(&SessionId::parse(&id).unwrap());
    app.stop_keeping_state().await;

    // Another instance's relay, forgetting consumers idle for more than 1 ms.
    let connection = RedisConnection::open(REDIS_URL, &Default::default(), RedisMode::Standalone)
        .await
        .unwrap();
    let store = Store::new(
        connection,
        Keys::new(&settings.key_prefix),
        Policy {
            lifetime: settings.session_lifetime,
            idle: None,
            max_per_user: None,
            record_retention: settings.idempotency_retention,
        },
        settings.keyring.clone(),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = store
        .tick(
            bucket,
            "another-instance",
            10,
            Duration::from_secs(5),
            Some(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    assert!(taken.is_empty(), "nothing left to publish");
    assert_eq!(
        consumers(&mut redis).await,
        vec!["another-instance".to_owned()],
        "only the new instance's consumer"
    );
    crate::helpers::clean_up(&settings).await;
}
