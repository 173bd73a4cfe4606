//! The client as a configured caller of the service (contract §8.1): its REST token and its
//! AMQP user (from the URL it connects with) are what the service knows it by.

use serde_json::json;
use session_manager_client::{
    amqp::{AmqpClient, CallError},
    command::{CreateSession, DeleteUserSessions, GetSession},
    rest::{RestClient, RestError},
};
use session_manager_testkit::{BrokerUser, Instance, sha256_hex, with_callers};

#[tokio::test]
async fn the_client_calls_as_its_token_and_its_amqp_user() {
    let user = BrokerUser::create("client-bff");
    let token = format!("bff-{}", uuid::Uuid::new_v4().simple());
    let file = json!({"callers": [{"name": "bff", "token_sha256": sha256_hex(&token),
        "amqp_user": user.name, "scopes": ["sessions:create", "sessions:read"]}]});
    let instance = Instance::start(with_callers(&file.to_string())).await;
    let queue = &instance.settings().command_queue;

    // Over AMQP the URL's user is sent as user_id: created and read, without the sealed fields.
    let amqp = AmqpClient::connect(&user.url(), queue).await.unwrap();
    let create = CreateSession::new("alice", "phone").access_token("secret-token");
    let created = amqp.call(&create).await.unwrap();
    let session = amqp
        .call(&GetSession::new(&created.session_id))
        .await
        .unwrap();
    assert_eq!(session.device_id, "phone");
    assert_eq!(session.access_token, None, "no secrets:read");
    match amqp.call(&DeleteUserSessions::new("alice")).await {
        Err(CallError::Rejected(error)) => assert_eq!(error.code, "permission_denied"),
        other => panic!("{other:?}"),
    }

    // Over REST with the token, and not without it.
    let rest = RestClient::new(instance.url("")).with_token(&token);
    let session = rest.get(&created.session_id).await.unwrap();
    assert_eq!(session.user_id, "alice");
    let anonymous = RestClient::new(instance.url(""));
    match anonymous.get(&created.session_id).await {
        Err(RestError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (401, "unauthorized"))
        }
        other => panic!("{other:?}"),
    }
}
