//! Callers and scopes (contract §8.1) on both front ends, against the machine's RabbitMQ with
//! users of its own (made with `rabbitmqctl` by the test kit, deleted after): every scope is
//! needed for its operations and enough for them, the sealed fields need `secrets:read`, an AMQP
//! command is applied only for a caller's AMQP user, and a publisher cannot pass for another.

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties, Connection, ConnectionProperties,
};
use serde_json::{json, Value};
use session_manager::{callers::Callers, config::Settings};
use session_manager_client::amqp::{self as client, PrivateQueue};
use session_manager_testkit::BrokerUser;

use crate::helpers::{
    isolated_settings, sha256_hex, spawn_app_with, status_and_json, AmqpClient, TestApp, AMQP_URL,
    WAIT,
};

/// The sealed fields, which an answer to a caller without `secrets:read` leaves out.
const SEALED: [&str; 4] = ["auth_code", "access_token", "refresh_token", "user_email"];

/// A configured caller: its REST token and its own RabbitMQ user.
pub struct Party {
    pub name: &'static str,
    pub token: String,
    pub scopes: &'static [&'static str],
    pub user: BrokerUser,
}

impl Party {
    fn may(&self, scope: &str) -> bool {
        self.scopes
            .iter()
            .any(|held| *held == scope || *held == "*")
    }
}

/// Callers of the given names and scopes, each with a RabbitMQ user of its own, and settings
/// that configure them.
pub fn parties(wanted: &[(&'static str, &'static [&'static str])]) -> (Vec<Party>, Settings) {
    let names: Vec<&str> = wanted.iter().map(|(name, _)| *name).collect();
    let users = BrokerUser::create_all(&names);
    let parties: Vec<Party> = wanted
        .iter()
        .zip(users)
        .map(|((name, scopes), user)| Party {
            name,
            token: format!("{name}-{}", uuid::Uuid::new_v4().simple()),
            scopes,
            user,
        })
        .collect();
    let entries: Vec<Value> = parties
        .iter()
        .map(|party| {
            json!({"name": party.name, "token_sha256": sha256_hex(&party.token),
                   "amqp_user": party.user.name, "scopes": party.scopes})
        })
        .collect();
    let callers = Callers::from_json(&json!({ "callers": entries }).to_string()).unwrap();
    let settings = Settings {
        callers,
        ..isolated_settings()
    };
    (parties, settings)
}

/// A REST request of `party`: the status and the body.
async fn rest(
    app: &TestApp,
    party: &Party,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(&party.token);
    if let Some(body) = body {
        request = request.json(body);
    }
    status_and_json(request).await
}

/// Creates a session of `user_id` with every sealed field, as `admin`.
async fn seeded(app: &TestApp, admin: &Party, user_id: &str) -> String {
    let body = json!({"user_id": user_id, "device_id": "d", "auth_code": "c",
                      "access_token": "a", "refresh_token": "r", "user_email": "u@example.org"});
    let (status, created) = rest(
        app,
        admin,
        reqwest::Method::POST,
        "/a01/session",
        Some(&body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["session_id"].as_str().unwrap().to_owned()
}

/// A session as `admin` reads it (it must exist).
async fn session_of(app: &TestApp, admin: &Party, id: &str) -> Value {
    let (status, body) = rest(
        app,
        admin,
        reqwest::Method::GET,
        &format!("/a01/session/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The ids of `user_id`'s sessions, as `admin` lists them.
async fn listed(app: &TestApp, admin: &Party, user_id: &str) -> Vec<String> {
    let path = format!("/a01/session?user_id={user_id}");
    let (status, body) = rest(app, admin, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    crate::helpers::session_ids(&body)
}

/// The answer of an allowed call, or the error of a refused one, as `(ok, body)`: the REST
/// body, or the AMQP reply's result or error.
fn outcome_of_rest((status, body): (u16, Value)) -> (bool, Value) {
    match status {
        200..=299 => (true, body),
        _ => (false, body["error"].clone()),
    }
}

/// An operation as both front ends spell it: its name, the scope it needs, the REST method,
/// path and body, and the AMQP command.
type Operation = (
    &'static str,
    &'static str,
    reqwest::Method,
    String,
    Option<Value>,
    Value,
);

fn outcome_of_amqp(reply: Value) -> (bool, Value) {
    match reply["status"].as_str() {
        Some("ok") => (true, reply["result"].clone()),
        _ => (false, reply["error"].clone()),
    }
}

#[tokio::test]
async fn every_scope_is_needed_and_enough_on_both_front_ends() {
    let (parties, settings) = parties(&[
        ("reader", &["sessions:read"]),
        ("revealer", &["sessions:read", "secrets:read"]),
        ("creator", &["sessions:create"]),
        ("updater", &["sessions:update"]),
        ("deleter", &["sessions:delete"]),
        ("admin", &["*"]),
    ]);
    let app = spawn_app_with(settings.clone()).await;
    let admin = parties.iter().find(|p| p.name == "admin").unwrap();
    for party in &parties {
        let amqp = AmqpClient::connect_to(&party.user.url(), &settings).await;
        for (front_end, at) in ["rest", "amqp"]
            .into_iter()
            .flat_map(|f| (0..6).map(move |at| (f, at)))
        {
            // Each operation on a session and user of its own.
            let target_user = format!(
                "{}-{front_end}-{}",
                party.name,
                uuid::Uuid::new_v4().simple()
            );
            let session = seeded(&app, admin, &target_user).await;
            let operations: [Operation; 6] = [
                (
                    "create",
                    "sessions:create",
                    reqwest::Method::POST,
                    "/a01/session".into(),
                    Some(json!({"user_id": target_user, "device_id": "new"})),
                    json!({"type": "CreateSession", "user_id": target_user, "device_id": "new"}),
                ),
                (
                    "get",
                    "sessions:read",
                    reqwest::Method::GET,
                    format!("/a01/session/{session}"),
                    None,
                    json!({"type": "GetSession", "session_id": session}),
                ),
                (
                    "list",
                    "sessions:read",
                    reqwest::Method::GET,
                    format!("/a01/session?user_id={target_user}"),
                    None,
                    json!({"type": "ListSessions", "user_id": target_user}),
                ),
                (
                    "update",
                    "sessions:update",
                    reqwest::Method::PATCH,
                    format!("/a01/session/{session}"),
                    Some(json!({"access_token": "changed"})),
                    json!({"type": "UpdateSession", "session_id": session, "access_token": "changed"}),
                ),
                (
                    "delete",
                    "sessions:delete",
                    reqwest::Method::DELETE,
                    format!("/a01/session/{session}"),
                    None,
                    json!({"type": "DeleteSession", "session_id": session}),
                ),
                (
                    "delete all",
                    "sessions:delete",
                    reqwest::Method::DELETE,
                    format!("/a01/session?user_id={target_user}"),
                    None,
                    json!({"type": "DeleteUserSessions", "user_id": target_user}),
                ),
            ];
            let (operation, scope, method, path, body, command) =
                operations.into_iter().nth(at).unwrap();
            {
                let what = format!("{} {operation} over {front_end}", party.name);
                let before = session_of(&app, admin, &session).await;
                let (ok, answer) = match front_end {
                    "rest" => {
                        outcome_of_rest(rest(&app, party, method, &path, body.as_ref()).await)
                    }
                    _ => outcome_of_amqp(amqp.call(&command).await.body),
                };
                if !party.may(scope) {
                    assert!(!ok, "{what}: {answer}");
                    assert_eq!(answer["code"], "permission_denied", "{what}");
                    assert!(
                        answer["message"].as_str().unwrap().contains(scope),
                        "{what}: {answer}"
                    );
                    // Nothing changed.
                    assert_eq!(
                        session_of(&app, admin, &session).await["access_token"],
                        before["access_token"],
                        "{what}"
                    );
                    assert_eq!(
                        listed(&app, admin, &target_user).await,
                        vec![session.clone()],
                        "{what}"
                    );
                    continue;
                }
                assert!(ok, "{what}: {answer}");
                if matches!(operation, "get" | "update") {
                    for field in SEALED {
                        assert_eq!(
                            answer.get(field).is_some(),
                            party.may("secrets:read"),
                            "{what}: {field} in {answer}"
                        );
                    }
                }
                match operation {
                    "create" => {
                        assert_eq!(listed(&app, admin, &target_user).await.len(), 2, "{what}");
                    }
                    "delete" | "delete all" => {
                        assert!(
                            !listed(&app, admin, &target_user).await.contains(&session),
                            "{what}"
                        );
                    }
                    "update" => {
                        assert_eq!(
                            session_of(&app, admin, &session).await["access_token"],
                            "changed",
                            "{what}"
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

#[tokio::test]
async fn an_amqp_command_is_applied_only_for_a_callers_amqp_user() {
    let (parties, settings) = parties(&[("admin", &["*"])]);
    let app = spawn_app_with(settings.clone()).await;
    let create = |user: &str| json!({"type": "CreateSession", "user_id": user, "device_id": "d"});
    // The guest user is no caller here; a command without user_id names none.
    let as_guest = AmqpClient::connect_to(AMQP_URL, &settings).await;
    let reply = as_guest.call(&create("by-guest")).await;
    assert_eq!(
        reply.body["error"]["code"], "unauthorized",
        "{}",
        reply.body
    );
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let anonymous = client::AmqpClient::with_connection(&connection, &settings.command_queue)
        .await
        .unwrap()
        .with_timeout(WAIT)
        .with_retries(0);
    let reply = anonymous
        .call_raw(create("by-nobody").to_string().as_bytes(), None)
        .await
        .unwrap();
    assert_eq!(
        reply.json::<Value>().unwrap()["error"]["code"],
        "unauthorized"
    );
    // One that names a queue replies may not go to is dead-lettered, as any such (§8.2).
    let elsewhere = format!("{}.elsewhere", settings.command_queue);
    let elsewhere = BasicProperties::default().with_reply_to(elsewhere.as_str().into());
    as_guest
        .publish(create("by-guest").to_string().as_bytes(), elsewhere)
        .await;
    let dead = as_guest.dead_letter().await;
    assert_eq!(
        crate::amqp::dead_letter_reason(&dead).as_deref(),
        Some("reply_to_refused")
    );
    // The caller's own user is applied.
    let as_admin = AmqpClient::connect_to(&parties[0].user.url(), &settings).await;
    let reply = as_admin.call(&create("by-admin")).await;
    assert_eq!(reply.body["status"], "ok", "{}", reply.body);
    let admin = &parties[0];
    for (user, count) in [("by-guest", 0), ("by-nobody", 0), ("by-admin", 1)] {
        let (_, list) = rest(
            &app,
            admin,
            reqwest::Method::GET,
            &format!("/a01/session?user_id={user}"),
            None,
        )
        .await;
        assert_eq!(list["sessions"].as_array().unwrap().len(), count, "{user}");
    }
    assert_eq!(
        app.amqp.dead_letter_count().await,
        0,
        "refused, not dead-lettered"
    );
}

#[tokio::test]
async fn a_publisher_cannot_pass_for_another_user() {
    let (parties, settings) = parties(&[("reader", &["sessions:read"]), ("admin", &["*"])]);
    let app = spawn_app_with(settings.clone()).await;
    let (reader, admin) = (&parties[0], &parties[1]);
    // The reader's connection publishes a delete-all with the admin's user as user_id.
    let victim = format!("victim-{}", uuid::Uuid::new_v4().simple());
    let session = seeded(&app, admin, &victim).await;
    let connection = Connection::connect(&reader.user.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let replies = PrivateQueue::declare(&connection.create_channel().await.unwrap())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let forged = BasicProperties::default()
        .with_user_id(admin.user.name.as_str().into())
        .with_reply_to(replies.name().into())
        .with_content_type("application/json".into());
    let command = json!({"type": "DeleteUserSessions", "user_id": victim});
    let published = async {
        channel
            .basic_publish(
                "".into(),
                settings.command_queue.as_str().into(),
                BasicPublishOptions::default(),
                command.to_string().as_bytes(),
                forged,
            )
            .await?
            .await
    };
    let confirmed = tokio::time::timeout(WAIT, published)
        .await
        .expect("an answer of the broker");
    assert!(
        !matches!(confirmed, Ok(lapin::Confirmation::Ack(_))),
        "the broker took a forged user_id: {confirmed:?}"
    );
    // The broker closed the channel; the service never saw the command.
    assert!(!channel.status().connected());
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(listed(&app, admin, &victim).await, vec![session.clone()]);
    assert_eq!(app.amqp.dead_letter_count().await, 0);
    assert_eq!(app.amqp.ready_count(&settings.command_queue).await, 0);
    // The reader's own user_id is the reader: denied the delete, allowed a read.
    let as_reader = AmqpClient::connect_to(&reader.user.url(), &settings).await;
    let denied = as_reader.call(&command).await;
    assert_eq!(denied.body["error"]["code"], "permission_denied");
    let read = as_reader
        .call(&json!({"type": "GetSession", "session_id": session}))
        .await;
    assert_eq!(read.body["status"], "ok");
    assert!(read.body["result"].get("refresh_token").is_none());
}

#[tokio::test]
async fn a_rest_request_needs_a_callers_token() {
    let (parties, settings) = parties(&[("admin", &["*"])]);
    let app = spawn_app_with(settings).await;
    for authorization in [
        None,
        Some(format!("Bearer {}x", parties[0].token)),
        Some(format!("Bearer {}", sha256_hex(&parties[0].token))),
    ] {
        let mut request = app.http.get(app.url("/a01/session?user_id=u"));
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let (status, body) = status_and_json(request).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{authorization:?}"
        );
    }
    let (status, _) = rest(
        &app,
        &parties[0],
        reqwest::Method::GET,
        "/a01/session?user_id=u",
        None,
    )
    .await;
    assert_eq!(status, 200);
}
