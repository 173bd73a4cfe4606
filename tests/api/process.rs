//! The real binary as a child process: configuration errors, graceful shutdown on SIGTERM, and
//! the `--healthcheck` flag used by Docker (secrets kept out of the logs: `logs`).

use std::{
    process::{Command, Output},
    time::Duration,
};

use serde_json::json;

use crate::api_docs::Http;
use crate::helpers::{
    isolated_settings, service_binary, service_on_local_servers, service_with_settings, AmqpClient,
    AMQP_URL,
};
use session_manager_testkit::{free_port, PrivateRedis, Service};

/// Runs the binary, which must exit on bad configuration within 10 s.
pub fn run_to_exit(command: &mut Command) -> Output {
    session_manager_testkit::process::run_to_exit(command, Duration::from_secs(10))
}

#[test]
fn bad_configuration_stops_the_service_with_one_line_naming_the_variable() {
    let cases = [
        ("SERVICE_PORT", "not-a-port"),
        ("SESSION_EXP_SEC", "0"),
        ("SESSION_EXP_SEC", "-5"),
        ("SESSION_KEY_PREFIX", "a{b}"),
        ("REDIS_URL", "http://nope"),
        ("REDIS_PORT", "99999"),
        ("AMQP_URL", "nope://x"),
        ("AMQP_PREFETCH", "0"),
        ("SESSION_API_TOKEN", ""),
        ("SESSION_API_TOKEN", "shorter-than-thirty-two-chars"),
        ("SESSION_CALLERS_FILE", "/nonexistent/callers.json"),
        ("SERVICE_LISTEN_ADDR", "localhost"),
        ("SESSION_REPLY_TO_PREFIXES", "amq.gen-"),
        ("SESSION_DEAD_LETTER_TTL_SEC", "0"),
        ("SESSION_IDLE_SEC", "2592001"),
        ("SESSION_IDLE_SEC", "soon"),
        ("SESSION_MAX_PER_USER", "many"),
        ("SESSION_MAX_PER_USER", "5000000000"),
        ("SESSION_ENCRYPTION_KEY", "c2VjcmV0"),
        ("RUST_LOG", "foo=notalevel,["),
    ];
    for (variable, value) in cases {
        let output = run_to_exit(service_binary().env(variable, value));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{variable}={value}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
        assert!(output.stdout.is_empty(), "{variable}={value}");
    }
}

#[test]
fn a_malformed_keyring_stops_the_start_without_echoing_a_key() {
    let good = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let short = "c2VjcmV0LWJ1dC1zaG9ydA==";
    for ring in [
        format!("a:{good},b:{short}"),
        format!("a:{good},a:{good}"),
        format!("a:{good},{good}"),
        format!("a:{good},b:{good}!"),
        format!("bad id:{good}"),
        format!("a:{good},,b:{good}"),
    ] {
        let output = run_to_exit(service_binary().env("SESSION_ENCRYPTION_KEY", &ring));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{ring}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{ring}: {stderr}");
        assert!(stderr.contains("SESSION_ENCRYPTION_KEY"), "{stderr}");
        assert!(
            !stderr.contains(good) && !stderr.contains(short),
            "{stderr}"
        );
    }
}

#[test]
fn a_redis_password_in_a_bad_url_is_not_echoed() {
    let output = run_to_exit(service_binary().env("REDIS_URL", "redis://:hunter2@[::1"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn healthcheck_flag_reports_whether_the_instance_answers() {
    let settings = isolated_settings();
    let port = free_port();
    let service = Service::start(
        service_binary()
            .env("SESSION_KEY_PREFIX", &settings.key_prefix)
            .env("SESSION_COMMAND_QUEUE", &settings.command_queue)
            .env("SESSION_EVENTS_EXCHANGE", &settings.events_exchange),
        port,
    );
    let healthy = service_binary()
        .args(["--healthcheck", "--service-port", &port.to_string()])
        .status()
        .unwrap();
    assert!(healthy.success());
    let (status, _) = service.terminate();
    assert!(status.success());
    let unhealthy = service_binary()
        .args(["--healthcheck", "--service-port", &port.to_string()])
        .status()
        .unwrap();
    assert!(!unhealthy.success());
    crate::helpers::clean_up(&settings).await;
}

#[tokio::test]
async fn an_instance_stops_cleanly_when_asked() {
    let app = crate::helpers::spawn_app().await;
    app.create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
    // `stop` asserts that run_until_stopped returned Ok after the shutdown signal.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the instance stops within 10 s");
}

#[tokio::test]
async fn the_log_shows_no_more_than_rust_log_asks_and_a_client_hanging_up_is_no_error() {
    let settings = isolated_settings();
    let port = free_port();
    let service = Service::start(
        service_with_settings(&settings).env("RUST_LOG", "error"),
        port,
    );
    AmqpClient::connect(&settings)
        .await
        .wait_for_consumer()
        .await;
    // A client that sends half a request and hangs up, and one that completes it.
    for request in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, printed) = service.terminate();
    assert!(status.success(), "{status:?}: {printed}");
    // With RUST_LOG=error nothing of the above is an error, and lapin's debug lines (which it
    // writes while connecting) stay below the level asked for.
    assert_eq!(printed, "", "with RUST_LOG=error the service printed");
    crate::helpers::clean_up(&settings).await;
}

/// A Redis that keeps a hash compact only while its values are at most 64 bytes (its default)
/// is named in a warning when the service first reaches it, with the setting to raise; one set
/// as the README says is not.
#[tokio::test]
async fn a_redis_that_would_keep_session_hashes_as_hash_tables_is_warned_of() {
    for (extra, warned) in [
        (&[][..], true),
        (&["--hash-max-listpack-value", "512"][..], false),
    ] {
        let redis = PrivateRedis::start(extra);
        let settings = isolated_settings();
        let service = Service::start(
            service_with_settings(&settings)
                .env("RUST_LOG", "warn")
                .env("REDIS_URL", format!("redis://127.0.0.1:{}/", redis.port))
                .env("AMQP_URL", AMQP_URL),
            free_port(),
        );
        let http = Http::new();
        crate::helpers::eventually(
            async || match http.get(service.url("/readyz")).send().await {
                Ok(ready) if ready.status() == 200 => Ok(()),
                other => Err(format!("/readyz: {other:?}")),
            },
        )
        .await;
        let (status, printed) = service.terminate();
        assert!(status.success(), "{status:?}: {printed}");
        assert_eq!(
            printed.contains("Set hash-max-listpack-value 512"),
            warned,
            "{extra:?}: {printed}"
        );
        crate::helpers::clean_up(&settings).await;
    }
}

/// A reply whose queue is gone (its client went away) is logged, naming the queue, instead of
/// vanishing unseen; the command is applied once and taken off the queue all the same.
#[tokio::test]
async fn a_reply_that_no_queue_takes_is_logged_and_the_command_applied() {
    let settings = isolated_settings();
    let service = Service::start(
        service_on_local_servers(&settings).env("RUST_LOG", "warn"),
        free_port(),
    );
    let client = AmqpClient::connect(&settings).await;
    client.wait_for_consumer().await;
    let gone = format!("amq.gen-gone-{}", uuid::Uuid::new_v4().simple());
    let properties = lapin::BasicProperties::default()
        .with_reply_to(gone.as_str().into())
        .with_correlation_id("c1".into())
        .with_message_id("m1".into());
    let command = json!({"type": "CreateSession", "user_id": "ulla", "device_id": "d"});
    client
        .publish(command.to_string().as_bytes(), properties)
        .await;
    // A Direct Reply-to reply is delivered, not returned: it is not logged as lost.
    let direct = client.channel.clone();
    let mut replies = direct
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let list = json!({"type": "ListSessions", "user_id": "nobody"});
    direct
        .basic_publish(
            "".into(),
            settings.command_queue.as_str().into(),
            Default::default(),
            list.to_string().as_bytes(),
            lapin::BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap();
    let answered = tokio::time::timeout(
        crate::helpers::WAIT,
        futures_util::StreamExt::next(&mut replies),
    )
    .await;
    assert!(matches!(answered, Ok(Some(Ok(_)))), "the direct reply came");
    crate::helpers::eventually(async || {
        match crate::helpers::every_session_id(&service.url(""), "ulla")
            .await
            .len()
        {
            1 => Ok(()),
            n => Err(format!("{n} sessions")),
        }
    })
    .await;
    let (status, printed) = service.terminate();
    assert!(status.success(), "{status:?}: {printed}");
    // Acknowledged: a command left unacknowledged would be ready again once the service stopped.
    assert_eq!(client.ready_count(&settings.command_queue).await, 0);
    // Named by its queue, correlation id and command type (never its body).
    for expected in [
        "a reply could not be delivered",
        &gone,
        "c1",
        "CreateSession",
    ] {
        assert!(printed.contains(expected), "{expected}: {printed}");
    }
    crate::helpers::clean_up(&settings).await;
}

#[test]
fn a_malformed_callers_file_stops_the_start_with_one_line_naming_the_entry() {
    let path = std::env::temp_dir().join(format!("callers-{}.json", uuid::Uuid::new_v4()));
    for (text, named) in [
        (
            r#"{"callers": [{"name": "ok", "amqp_user": "u", "scopes": ["*"]},
                         {"name": "bad one", "amqp_user": "v", "scopes": []}]}"#,
            "callers[1] \"bad one\": name",
        ),
        (
            r#"{"callers": [{"name": "bff", "token_sha256": "abc", "scopes": []}]}"#,
            "callers[0] bff: token_sha256",
        ),
        (
            r#"{"callers": [{"name": "bff", "amqp_user": "u", "scopes": ["sessions:write"]}]}"#,
            "callers[0] bff: scopes",
        ),
        ("not json", "is not a callers file"),
    ] {
        std::fs::write(&path, text).unwrap();
        let output = run_to_exit(service_binary().env("SESSION_CALLERS_FILE", &path));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("SESSION_CALLERS_FILE") && stderr.contains(named),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file(&path);
}

/// Whether something accepts connections on `address`.
fn answers(address: &str) -> bool {
    std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(1)).is_ok()
}

/// Protected mode (contract §8.1): without callers the REST front end listens on 127.0.0.1 only
/// and says why; SERVICE_LISTEN_ADDR opens it; with callers it listens on every interface.
#[tokio::test]
async fn without_callers_the_rest_front_end_listens_on_localhost_only_and_says_so() {
    let settings = isolated_settings();
    let token = "a-token-long-enough-for-the-service-01";
    // 127.0.0.2 is loopback too, but not 127.0.0.1: only a listener on every interface takes it.
    for (variables, everywhere) in [
        (vec![], false),
        (vec![("SERVICE_LISTEN_ADDR", "0.0.0.0")], true),
        (vec![("SESSION_API_TOKEN", token)], true),
        (
            vec![
                ("SESSION_API_TOKEN", token),
                ("SERVICE_LISTEN_ADDR", "127.0.0.1"),
            ],
            false,
        ),
    ] {
        let port = free_port();
        let mut command = service_on_local_servers(&settings);
        command.env("RUST_LOG", "warn");
        for (name, value) in &variables {
            command.env(name, value);
        }
        let service = Service::start(&mut command, port);
        assert!(answers(&format!("127.0.0.1:{port}")));
        assert_eq!(
            answers(&format!("127.0.0.2:{port}")),
            everywhere,
            "{variables:?}"
        );
        let (status, printed) = service.terminate();
        assert!(status.success(), "{printed}");
        let warned = printed.contains("no caller is configured");
        assert_eq!(
            warned,
            !variables
                .iter()
                .any(|(name, _)| *name == "SESSION_API_TOKEN"),
            "{printed}"
        );
    }
    crate::helpers::clean_up(&settings).await;
}

/// One audit line per changing command (contract §8.1): caller, command type, user id and
/// outcome, never a token or a whole session id; reads write none.
#[tokio::test]
async fn each_changing_command_writes_one_audit_line() {
    let settings = isolated_settings();
    let token = "audited-token-0123456789abcdef012345";
    let port = free_port();
    let service = Service::start(
        service_on_local_servers(&settings)
            .env("SESSION_API_TOKEN", token)
            .env("RUST_LOG", "session_manager::audit=info"),
        port,
    );
    let http = Http::new();
    let created = http
        .post(service.url("/a01/session"))
        .bearer_auth(token)
        .json(&json!({"user_id": "audited", "device_id": "d", "access_token": "tok-77aa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path, body) in [
        (reqwest::Method::GET, format!("/a01/session/{id}"), None),
        (
            reqwest::Method::GET,
            "/a01/session?user_id=audited".to_string(),
            None,
        ),
        (
            reqwest::Method::PATCH,
            format!("/a01/session/{id}"),
            Some(json!({"access_token": "tok-88bb"})),
        ),
        (
            reqwest::Method::PATCH,
            format!("/a01/session/{id}"),
            Some(json!({"device_id": "other"})),
        ),
        (reqwest::Method::DELETE, format!("/a01/session/{id}"), None),
        (
            reqwest::Method::DELETE,
            "/a01/session?user_id=audited".to_string(),
            None,
        ),
    ] {
        let mut request = http.request(method, service.url(&path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap();
    }
    let (status, printed) = service.terminate();
    assert!(status.success(), "{printed}");
    let lines: Vec<&str> = printed
        .lines()
        .filter(|line| line.contains("audit"))
        .collect();
    let expected = [
        ("CreateSession", "ok"),
        ("UpdateSession", "ok"),
        ("UpdateSession", "conflict"),
        ("DeleteSession", "ok"),
        ("DeleteUserSessions", "ok"),
    ];
    assert_eq!(lines.len(), expected.len(), "{printed}");
    for (line, (command, outcome)) in lines.iter().zip(expected) {
        for part in [
            "caller=\"token-1\"".to_string(),
            format!("command=\"{command}\""),
            format!("outcome=\"{outcome}\""),
        ] {
            assert!(line.contains(&part), "{part} not in {line}");
        }
        if outcome == "ok" {
            assert!(line.contains("user_id=\"audited\""), "{line}");
        }
    }
    for secret in [token, "tok-77aa", "tok-88bb", &id] {
        assert!(!printed.contains(secret), "{secret} was logged: {printed}");
    }
    crate::helpers::clean_up(&settings).await;
}
