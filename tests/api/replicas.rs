//! `REDIS_WAIT_REPLICAS`: a change is answered only once enough replicas have it. A master with
//! one replica of the test's own; the replica is killed and started again.

use std::time::{Duration, Instant};

use serde_json::json;
use session_manager::{
    config::{SecretString, Settings},
    store::Replication,
};
use session_manager_testkit::PrivateRedis;

use crate::helpers::{isolated_settings, spawn_app_with};

#[tokio::test]
async fn changes_wait_for_a_replica_and_are_unavailable_until_one_has_them() {
    let master = PrivateRedis::start(&[]);
    let replica_port = session_manager_testkit::free_port();
    let replica = PrivateRedis::start_replica_on(replica_port, &master);
    let settings = Settings {
        redis_url: SecretString::new(format!("redis://127.0.0.1:{}/", master.port)),
        // Long enough for a replica's acknowledgement on a busy machine (CI runs every test at
        // once), short enough that a 503 comes well within the 3 s Redis has to answer.
        redis_wait: Some(Replication {
            replicas: 1,
            timeout: Duration::from_millis(1500),
        }),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let id = app
        .create_session(json!({"user_id": "kept", "device_id": "d"}))
        .await;
    // The replica has the session the moment the create is answered.
    let mut on_replica = redis::Client::open(format!("redis://127.0.0.1:{replica_port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", app.settings.key_prefix))
        .query_async(&mut on_replica)
        .await
        .unwrap();
    assert!(keys.iter().any(|key| key.ends_with(&id)), "{keys:?}");

    drop(replica);
    // No replica confirms: REST answers unavailable after the wait, never "created".
    let started = Instant::now();
    let (status, body) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{id}"))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Over AMQP the command is held (retried) until a replica confirms, then answered once.
    let command = json!({"type": "CreateSession", "user_id": "held", "device_id": "d"});
    let properties = lapin::BasicProperties::default()
        .with_reply_to(app.amqp.reply_queue().into())
        .with_correlation_id("held".into())
        .with_message_id("held-create".into());
    app.amqp
        .publish(command.to_string().as_bytes(), properties)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _replica = PrivateRedis::start_replica_on(replica_port, &master);
    // Each retry waits for the replica up to 1.5 s: the answer may take a while on a busy
    // machine, which created_session_ids allows for.
    let created = app.amqp.created_session_ids(&["held".to_owned()]).await;
    assert_eq!(created.len(), 1);
    assert_eq!(app.listed_ids("held").await.len(), 1);
}
