//! The same commands on a Redis Cluster: every key of one user shares a hash slot, so each
//! command's script runs on one node, whichever node the user's bucket lands on.

use std::collections::HashSet;

use serde_json::json;
use session_manager::config::{SecretString, Settings};

use crate::helpers::{isolated_settings, spawn_app_with};
use session_manager_testkit::PrivateCluster;

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
