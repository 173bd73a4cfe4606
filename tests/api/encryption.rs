//! Encryption at rest (contract §7.1): with a keyring set, no token or e-mail is stored in plain
//! text anywhere under the prefix, whatever wrote it; a sealed value opens only for its session
//! and field; a value under a key the ring lacks fails that request alone, named in the log and
//! counted; instances on different rings during a rotation read each other's sessions; and
//! `rewrap` re-seals plain and old-key values, interrupted or not.

use std::{collections::BTreeMap, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Value};
use session_manager::{
    config::Settings,
    keyring::Keyring,
    startup::open_store,
    store::{RewrapReport, PLAIN},
};
use session_manager_testkit::{free_port, Instance, Service};

use crate::api_docs::Http;
use crate::helpers::{
    isolated_settings, service_on_local_servers, service_with_settings, spawn_app_with, TestApp,
    REDIS_URL, WAIT,
};

/// `<id>:<fresh random key>`.
fn ring_entry(id: &str) -> String {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("{id}:{}", STANDARD.encode(key))
}

fn with_ring(settings: &Settings, ring: &str) -> Settings {
    Settings {
        keyring: Keyring::parse(ring).unwrap(),
        ..settings.clone()
    }
}

/// Every value stored under the app's prefix, whatever its type (hash fields and values, strings,
/// members and scores, list items, stream entries), each with its key, and the key names.
async fn every_stored_value(app: &TestApp) -> Vec<(String, String)> {
    let mut redis = app.redis.clone();
    let mut values = Vec::new();
    for key in app.stored_keys().await {
        values.push((key.clone(), key.clone()));
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
            "none" => continue, // gone since the scan
            other => panic!("{key}: a key of type {other}, which the service never writes"),
        };
        let value: redis::Value = command.query_async(&mut redis).await.unwrap();
        flatten(&value, &mut |text| values.push((key.clone(), text)));
    }
    values
}

fn flatten(value: &redis::Value, out: &mut impl FnMut(String)) {
    match value {
        redis::Value::BulkString(bytes) => out(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => out(text.clone()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|item| flatten(item, out))
        }
        redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out)
        }),
        _ => {}
    }
}

/// Asserts that no stored value contains `marker`, and returns how many sealed values there are
/// (a record holds several in one string).
async fn assert_nothing_plain(app: &TestApp, marker: &str) -> usize {
    let values = every_stored_value(app).await;
    for (key, value) in &values {
        assert!(
            !value.contains(marker),
            "{key} holds the plain text {value:?}"
        );
    }
    values
        .iter()
        .map(|(_, value)| value.matches("$sm1$").count())
        .sum()
}

/// The four secret fields, each carrying `marker`.
fn secrets(marker: &str) -> Value {
    json!({
        "auth_code": format!("code-{marker}"),
        "access_token": format!("access-{marker}"),
        "refresh_token": format!("refresh-{marker}"),
        "user_email": format!("{marker}@example.com"),
    })
}

fn merged(mut base: Value, more: &Value) -> Value {
    for (name, value) in more.as_object().unwrap() {
        base[name] = value.clone();
    }
    base
}

#[tokio::test]
async fn no_secret_is_stored_in_plain_text_whatever_wrote_it() {
    let app = spawn_app_with(with_ring(&isolated_settings(), &ring_entry("k1"))).await;
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());

    // REST create and update.
    let id = app
        .create_session(merged(
            json!({"user_id": "alice", "device_id": "d"}),
            &secrets(&marker),
        ))
        .await;
    let read = app.session(&id).await;
    assert_eq!(read["access_token"], format!("access-{marker}"));
    assert_eq!(read["user_email"], format!("{marker}@example.com"));
    let (status, updated) = app.patch(&id, &secrets(&format!("{marker}-2"))).await;
    assert_eq!(status, 200);
    assert_eq!(updated["refresh_token"], format!("refresh-{marker}-2"));

    // AMQP commands with message_ids: records of a create and an update, a read (not recorded).
    let created = app
        .amqp
        .call_with_id(
            &merged(
                json!({"type": "CreateSession", "user_id": "bob", "device_id": "d"}),
                &secrets(&marker),
            ),
            "create-1",
        )
        .await;
    let bobs = created.body["result"]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let update = merged(
        json!({"type": "UpdateSession", "session_id": bobs}),
        &secrets(&format!("{marker}-3")),
    );
    let first = app.amqp.call_with_id(&update, "update-1").await;
    let again = app.amqp.call_with_id(&update, "update-1").await;
    assert_eq!(
        first.body, again.body,
        "the repeat answers from the sealed record"
    );
    assert_eq!(
        first.body["result"]["auth_code"],
        format!("code-{marker}-3")
    );
    let got = app
        .amqp
        .call_with_id(&json!({"type": "GetSession", "session_id": bobs}), "get-1")
        .await;
    assert_eq!(
        got.body["result"]["access_token"],
        format!("access-{marker}-3")
    );
    let sealed = assert_nothing_plain(&app, &marker).await;
    assert_eq!(
        sealed, 8,
        "the two sessions hold four sealed values each, and no record holds any"
    );

    // A stepped delete of a user with more sessions than one step.
    let many = session_manager::store::DELETE_STEP + 1;
    for _ in 0..many {
        app.create_session(merged(
            json!({"user_id": "carol", "device_id": "d"}),
            &secrets(&marker),
        ))
        .await;
    }
    let deleted = app
        .amqp
        .call_with_id(
            &json!({"type": "DeleteUserSessions", "user_id": "carol"}),
            "delete-1",
        )
        .await;
    assert_eq!(
        deleted.body["result"]["session_ids"]
            .as_array()
            .unwrap()
            .len(),
        many
    );
    assert_nothing_plain(&app, &marker).await;

    assert_nothing_plain(&app, &marker).await;
}

/// Expiry: a session ends on its own, with its event; what is left holds no plain value either.
#[tokio::test]
async fn no_secret_is_left_in_plain_text_by_expiry() {
    // Long enough for the first scan to see the session even on a loaded machine.
    let lifetime = Duration::from_secs(8);
    let settings = Settings {
        session_lifetime: lifetime,
        ..with_ring(&isolated_settings(), &ring_entry("k1"))
    };
    let app = spawn_app_with(settings).await;
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let id = app
        .create_session(merged(
            json!({"user_id": "alice", "device_id": "d"}),
            &secrets(&marker),
        ))
        .await;
    let sealed = assert_nothing_plain(&app, &marker).await;
    assert!(
        sealed >= 4,
        "sealed {sealed}: {:?}",
        every_stored_value(&app).await
    );
    let deadline = std::time::Instant::now() + lifetime + WAIT;
    loop {
        let (status, _) = app
            .rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
            .await;
        if status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session did not expire"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_nothing_plain(&app, &marker).await;
}

#[tokio::test]
async fn a_sealed_value_moved_to_another_session_or_field_does_not_open() {
    let app = spawn_app_with(with_ring(&isolated_settings(), &ring_entry("k1"))).await;
    let a = app
        .create_session(json!({"user_id": "alice", "device_id": "d", "access_token": "token-a"}))
        .await;
    let b = app
        .create_session(json!({"user_id": "alice", "device_id": "e", "refresh_token": "token-b"}))
        .await;
    let mut redis = app.redis.clone();
    // The one sealed field of each hash: its code and value.
    let sealed_field = async |id: &str| -> (String, String) {
        let key = app
            .keys()
            .session(&session_manager::domain::SessionId::parse(id).unwrap());
        let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut app.redis.clone())
            .await
            .unwrap();
        pairs
            .into_iter()
            .find(|(_, value)| value.starts_with("$sm1$"))
            .unwrap()
    };
    let (a_code, a_value) = sealed_field(&a).await;
    let (b_code, _) = sealed_field(&b).await;
    assert_ne!(a_code, b_code);
    let key_of = |id: &str| {
        app.keys()
            .session(&session_manager::domain::SessionId::parse(id).unwrap())
    };

    // A's access token copied into B's access token (another session), then into A's refresh
    // token (another field): neither opens.
    let hset = async |key: String, field: &str, value: &str| {
        redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query_async::<()>(&mut app.redis.clone())
            .await
            .unwrap()
    };
    hset(key_of(&b), &a_code, &a_value).await;
    let (status, body) = app
        .rest(reqwest::Method::GET, &format!("/a01/session/{b}"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (500, json!("internal"))
    );
    hset(key_of(&a), &b_code, &a_value).await;
    let (status, _) = app
        .rest(reqwest::Method::GET, &format!("/a01/session/{a}"))
        .await;
    assert_eq!(status, 500);

    // Put back where it belongs, it opens again.
    let _: () = redis::cmd("HDEL")
        .arg(key_of(&a))
        .arg(&b_code)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(app.session(&a).await["access_token"], "token-a");
}

#[tokio::test]
async fn a_value_under_a_key_the_ring_lacks_fails_that_request_alone_named_in_the_log() {
    let old = ring_entry("old");
    let new = ring_entry("new");
    let app = spawn_app_with(with_ring(&isolated_settings(), &old)).await;
    let sealed_by_old = app
        .create_session(json!({"user_id": "alice", "device_id": "d", "access_token": "t"}))
        .await;
    let key_text = old.split_once(':').unwrap().1.to_owned();

    let port = free_port();
    let service = Service::start(
        service_on_local_servers(&app.settings).env("SESSION_ENCRYPTION_KEY", &new),
        port,
    );
    let http = Http::new();
    let get = async |id: &str| {
        let response = http
            .get(service.url(&format!("/a01/session/{id}")))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = get(&sealed_by_old).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (500, json!("internal"))
    );
    assert!(
        !body.to_string().contains("old"),
        "the reply names no key: {body}"
    );

    // Other sessions are served: one it seals itself, one without secrets.
    let created = http
        .post(service.url("/a01/session"))
        .json(&json!({"user_id": "alice", "device_id": "e", "access_token": "u"}))
        .send()
        .await
        .unwrap();
    let own: Value = created.json().await.unwrap();
    let (status, body) = get(own["session_id"].as_str().unwrap()).await;
    assert_eq!((status, body["access_token"].clone()), (200, json!("u")));
    let plainless = app
        .create_session(json!({"user_id": "alice", "device_id": "f"}))
        .await;
    assert_eq!(get(&plainless).await.0, 200);

    let metrics = http
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("session_manager_unknown_key_failures_total 1"),
        "{metrics}"
    );
    let (_, log) = service.terminate();
    let line = log
        .lines()
        .find(|line| line.contains("key id \\\"old\\\"") || line.contains("key id \"old\""))
        .unwrap_or_else(|| panic!("no log line names the key id: {log}"));
    assert!(
        line.contains(&sealed_by_old),
        "the line names the session: {line}"
    );
    assert!(!log.contains(&key_text), "a key reached the log");
    assert!(
        !log.contains(new.split_once(':').unwrap().1),
        "a key reached the log"
    );
}

/// The documented rotation: the new key is added last (opens only) and rolled out, then moved
/// first (seals) and rolled out, then `rewrap`, then the old key is dropped. At every stage two
/// instances on the rings of neighbouring stages read every session either of them wrote.
#[tokio::test]
async fn instances_on_neighbouring_rings_of_a_rotation_read_each_others_sessions() {
    let (k1, k2) = (ring_entry("k1"), ring_entry("k2"));
    let base = isolated_settings();
    let stages = [k1.clone(), format!("{k1},{k2}"), format!("{k2},{k1}")];
    let mut written: Vec<(String, String)> = Vec::new();
    for pair in stages.windows(2) {
        let old = Instance::start(with_ring(&base, &pair[0])).await;
        let new = Instance::start(with_ring(&base, &pair[1])).await;
        let http = Http::new();
        for (instance, token) in [(&old, "from-old"), (&new, "from-new")] {
            let token = format!("{token}-{}", written.len());
            let response = http
                .post(instance.url("/a01/session"))
                .json(&json!({"user_id": "u", "device_id": "d", "access_token": token}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            let created: Value = response.json().await.unwrap();
            written.push((created["session_id"].as_str().unwrap().to_owned(), token));
        }
        for instance in [&old, &new] {
            for (id, token) in &written {
                let response = http
                    .get(instance.url(&format!("/a01/session/{id}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    response.status(),
                    200,
                    "{:?} reading {id}",
                    instance.settings().keyring
                );
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["access_token"], token.as_str());
            }
        }
        new.stop_keeping_state().await;
        old.stop_keeping_state().await;
    }
    // Rewrap under k2, then an instance with k2 alone reads everything.
    let report = open_store(&with_ring(&base, &stages[2]))
        .await
        .unwrap()
        .rewrap(|_| {})
        .await
        .unwrap();
    assert_eq!(
        report.by_key,
        BTreeMap::from([("k2".to_owned(), written.len() as u64)])
    );
    let last = Instance::start(with_ring(&base, &k2)).await;
    for (id, token) in &written {
        let body: Value = Http::new()
            .get(last.url(&format!("/a01/session/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["access_token"], token.as_str());
    }
}

/// Plain, old-key and mixed data: `rewrap` seals everything under the first key and takes the
/// copy of the session out of an update's record as older versions wrote it; interrupted after
/// its first step, it leaves every value readable, and run again it finishes.
#[tokio::test]
async fn rewrap_reseals_plain_and_old_key_values_even_when_interrupted() {
    let (k1, k2) = (ring_entry("k1"), ring_entry("k2"));
    let base = isolated_settings();
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let mut tokens = Vec::new();
    // Plain sessions (no key yet), one updated over AMQP with a message_id (a record).
    let plain = spawn_app_with(base.clone()).await;
    for i in 0..300 {
        let token = format!("plain-{i}-{marker}");
        let id = plain
            .create_session(
                json!({"user_id": format!("u{i}"), "device_id": "d", "access_token": token}),
            )
            .await;
        tokens.push((id, token));
    }
    let update = json!({"type": "UpdateSession", "session_id": tokens[0].0, "refresh_token": format!("r-{marker}")});
    let recorded = plain.amqp.call_with_id(&update, "update-1").await;
    // The record of an update as versions before 8.3 wrote it: a copy of the session.
    let old_update =
        session_manager::domain::Command::parse(update.to_string().as_bytes()).unwrap();
    let old_key = plain.keys().record(
        &old_update,
        session_manager::domain::IdempotencyKey::from_message_id("update-0").as_ref(),
    );
    let code = |name| session_manager::store::field_code(name).unwrap();
    let old_record = json!({"s": "ok", "v": [
        code("user_id"), format!("u0"), code("access_token"), tokens[0].1,
        code("refresh_token"), format!("r-{marker}"),
    ]});
    let _: () = redis::cmd("SET")
        .arg(&old_key)
        .arg(old_record.to_string())
        .arg("EX")
        .arg(600)
        .query_async(&mut plain.redis.clone())
        .await
        .unwrap();
    plain.stop_keeping_state().await;
    // Sessions under k1.
    let old = Instance::start(with_ring(&base, &k1)).await;
    let http = Http::new();
    for i in 0..300 {
        let token = format!("k1-{i}-{marker}");
        let response = http
            .post(old.url("/a01/session"))
            .json(&json!({"user_id": format!("v{i}"), "device_id": "d", "access_token": token}))
            .send()
            .await
            .unwrap();
        let created: Value = response.json().await.unwrap();
        tokens.push((created["session_id"].as_str().unwrap().to_owned(), token));
    }
    old.stop_keeping_state().await;

    let rotated = with_ring(&base, &format!("{k2},{k1}"));
    let store = open_store(&rotated).await.unwrap();
    // Interrupted once its first SCAN step is done.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop = Some(stop);
    tokio::select! {
        _ = store.rewrap(|_| { if let Some(stop) = stop.take() { let _ = stop.send(()); } }) => {
            panic!("a rewrap of 600 sessions took one SCAN step");
        }
        _ = stopped => {}
    }
    let app = spawn_app_with(rotated.clone()).await;
    for (id, token) in &tokens {
        assert_eq!(app.session(id).await["access_token"], token.as_str());
    }
    let partial = every_stored_value(&app).await;
    assert!(
        partial
            .iter()
            .any(|(_, v)| v.contains(&marker) || v.starts_with("$sm1$k1$")),
        "the interrupted run left some values to do"
    );

    let report: RewrapReport = store.rewrap(|_| {}).await.unwrap();
    assert!(report.values_resealed > 0);
    assert_eq!(
        report.by_key.keys().collect::<Vec<_>>(),
        ["k2"],
        "nothing {PLAIN} or under k1"
    );
    assert_eq!(
        report.by_key["k2"],
        600 + 1,
        "600 access tokens and the updated session's refresh token"
    );
    // The old update record's copy is gone (taken out by this run or the interrupted one).
    assert!(report.session_copies_deleted <= 1);
    let stripped: String = redis::cmd("GET")
        .arg(&old_key)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    assert_eq!(stripped, r#"{"s":"ok","c":1}"#);
    assert!(report.unknown_keys.is_empty() && report.keys_skipped == 0);
    assert_nothing_plain(&app, &marker).await;
    assert!(!every_stored_value(&app)
        .await
        .iter()
        .any(|(_, v)| v.starts_with("$sm1$k1$")));

    // A second run has nothing left to do; with k2 alone everything reads, the repeat of the
    // recorded update included (it answers the session as it is now).
    let again = store.rewrap(|_| {}).await.unwrap();
    assert_eq!(
        (
            again.values_resealed,
            again.by_key.clone(),
            again.session_copies_deleted
        ),
        (0, report.by_key.clone(), 0)
    );
    app.stop_keeping_state().await;
    let only_k2 = spawn_app_with(with_ring(&base, &k2)).await;
    for (id, token) in &tokens {
        assert_eq!(only_k2.session(id).await["access_token"], token.as_str());
    }
    let repeated = only_k2.amqp.call_with_id(&update, "update-1").await;
    assert_eq!(repeated.body, recorded.body);
}

/// The `rewrap` command: progress and the count per key id on stderr, exit 0; refused without a
/// keyring.
#[tokio::test]
async fn the_rewrap_command_reports_its_counts_per_key_id() {
    let app = spawn_app_with(isolated_settings()).await;
    for i in 0..20 {
        app.create_session(json!({"user_id": format!("u{i}"), "device_id": "d", "auth_code": "c", "user_email": "a@b"}))
            .await;
    }
    let ring = format!("{},{}", ring_entry("next"), ring_entry("prev"));
    let run = |ring: Option<&str>| {
        let mut command = service_with_settings(&app.settings);
        command.env("REDIS_URL", REDIS_URL).arg("rewrap");
        if let Some(ring) = ring {
            command.env("SESSION_ENCRYPTION_KEY", ring);
        }
        command.output().unwrap()
    };
    let refused = run(None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("SESSION_ENCRYPTION_KEY"));

    let output = run(Some(&ring));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("40 values re-sealed"), "{stderr}");
    assert!(stderr.contains("values under next: 40"), "{stderr}");
    assert!(!stderr.contains(ring.split(',').next().unwrap().split_once(':').unwrap().1));
    let again = run(Some(&ring));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(" 0 values re-sealed") && stderr.contains("values under next: 40"),
        "{stderr}"
    );
}

/// A session written before a key was set is sealed whole at its next write, not only in the
/// fields that write changes.
#[tokio::test]
async fn a_plain_session_is_sealed_whole_at_its_next_write() {
    let base = isolated_settings();
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let plain = spawn_app_with(base.clone()).await;
    let id = plain
        .create_session(merged(
            json!({"user_id": "alice", "device_id": "d"}),
            &secrets(&marker),
        ))
        .await;
    let other = plain
        .create_session(merged(
            json!({"user_id": "bob", "device_id": "d"}),
            &secrets(&marker),
        ))
        .await;
    plain.stop_keeping_state().await;
    let app = spawn_app_with(with_ring(&base, &ring_entry("k1"))).await;
    let (status, _) = app.patch(&id, &json!({"access_token": "fresh"})).await;
    assert_eq!(status, 200);
    // Over AMQP with a message_id: the repeat answers the session as it is now, and the record
    // of the update holds no copy of it.
    let update = json!({"type": "UpdateSession", "session_id": other, "refresh_token": "new"});
    let first = app.amqp.call_with_id(&update, "partial-1").await;
    assert_eq!(first.body["result"]["auth_code"], format!("code-{marker}"));
    assert_eq!(
        app.amqp.call_with_id(&update, "partial-1").await.body,
        first.body
    );
    // Two sessions of four sealed values each, and nothing in the record.
    assert_eq!(assert_nothing_plain(&app, &marker).await, 8);
    let read = app.session(&id).await;
    assert_eq!(read["auth_code"], format!("code-{marker}"));
    assert_eq!(read["access_token"], "fresh");
}

/// Rewrap deletes the records of reads that versions before 7.4 wrote (a copy of the session,
/// in plain text), and goes on past a value in the sealed form that does not open, counting it
/// and exiting non-zero.
#[tokio::test]
async fn rewrap_deletes_old_read_records_and_goes_on_past_a_broken_value() {
    let ring = format!("{},{}", ring_entry("k2"), ring_entry("k1"));
    let settings = with_ring(&isolated_settings(), &ring);
    let app = spawn_app_with(settings.clone()).await;
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "d", "auth_code": "c"}))
        .await;
    let broken = app
        .create_session(json!({"user_id": "bob", "device_id": "d", "access_token": "t"}))
        .await;
    let keys = app.keys();
    let mut redis = app.redis.clone();
    // A record of a GetSession as the old versions wrote it.
    let get = session_manager::domain::Command::parse(
        json!({"type": "GetSession", "session_id": id})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let old_record = keys.record(
        &get,
        session_manager::domain::IdempotencyKey::from_message_id("m").as_ref(),
    );
    let _: () = redis::cmd("SET")
        .arg(&old_record)
        .arg(json!({"s": "ok", "v": ["at", format!("token-{marker}")]}).to_string())
        .arg("EX")
        .arg(3600)
        .query_async(&mut redis)
        .await
        .unwrap();
    // A sealed value of bob's replaced by one under the older key that does not open.
    let bobs = keys.session(&session_manager::domain::SessionId::parse(&broken).unwrap());
    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&bobs)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (code, _) = pairs.iter().find(|(_, v)| v.starts_with("$sm1$")).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&bobs)
        .arg(code)
        .arg("$sm1$k1$AAAA")
        .query_async(&mut redis)
        .await
        .unwrap();

    let report = open_store(&settings)
        .await
        .unwrap()
        .rewrap(|_| {})
        .await
        .unwrap();
    assert_eq!((report.read_records_deleted, report.broken), (1, 1));
    assert_eq!(report.by_key, BTreeMap::from([("k2".to_owned(), 1)]));
    let exists: bool = redis::cmd("EXISTS")
        .arg(&old_record)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!exists, "the read's record is gone");
    assert_nothing_plain(&app, &marker).await;
    // The command exits non-zero, naming what it left.
    let output = service_with_settings(&app.settings)
        .env("REDIS_URL", REDIS_URL)
        .env("SESSION_ENCRYPTION_KEY", &ring)
        .arg("rewrap")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("do not open"), "{stderr}");
}
