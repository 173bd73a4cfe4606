//! TLS to Redis and RabbitMQ (contract §7.2) against real TLS servers: private `redis-server`s
//! and a Redis Cluster that speak TLS only, and a TLS proxy in front of the machine's RabbitMQ,
//! with certificates made for each test. The service works over `rediss://` and `amqps://` with
//! the right CA (and client certificate, where the server asks for one); a certificate that does
//! not verify, or a client certificate missing, is never a hang: `/readyz` answers 503 within 5 s
//! and for as long as it lasts, the log says why, and the instance recovers once it is set right.
//! Each case runs once against Redis and once against RabbitMQ ([`Side`]).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;
use session_manager::{
    config::{SecretString, Settings},
    tls::TlsSettings,
};
use session_manager_testkit::{
    eventually, free_port, process::run_to_exit, Identity, PrivateCluster, PrivateRedis, RedisTls,
    Service, TestCertificates, TlsProxy,
};

use crate::{
    api_docs::Http,
    helpers::{
        clean_up, isolated_settings, service_binary, service_with_settings, spawn_app_with,
        AMQP_URL, REDIS_URL,
    },
    process::run_to_exit as run_to_exit_on_bad_configuration,
};

/// The machine's RabbitMQ, behind the TLS proxies.
const BROKER: &str = "127.0.0.1:5672";

/// The server a case is about; the other one is the machine's, without TLS.
#[derive(Debug, Clone, Copy)]
enum Side {
    Redis,
    RabbitMq,
}

impl Side {
    /// The variable of the CA file.
    fn ca_variable(self) -> &'static str {
        match self {
            Self::Redis => "REDIS_CA_FILE",
            Self::RabbitMq => "AMQP_CA_FILE",
        }
    }

    /// The variables of the client certificate and its key, with the client's files.
    fn client_files(self, client: &Identity) -> [(&'static str, &Path); 2] {
        let (certificate, key) = match self {
            Self::Redis => ("REDIS_CLIENT_CERT_FILE", "REDIS_CLIENT_KEY_FILE"),
            Self::RabbitMq => ("AMQP_CLIENT_CERT_FILE", "AMQP_CLIENT_KEY_FILE"),
        };
        [(certificate, &client.certificate), (key, &client.key)]
    }

    /// The service cannot get through to this side's server for the reason `cause`: `/readyz`
    /// answers 503 within 5 s and while it lasts, and the log names the cause, again and again
    /// but not at every attempt. For Redis, a REST request needing it answers `503 unavailable`
    /// within 5 s; while RabbitMQ is out of reach, REST serves.
    async fn unready(self, service: &Service, cause: &str) {
        match self {
            Self::Redis => {
                let (status, body, took) = create(service).await;
                assert_eq!(status, 503, "{body}");
                assert_eq!(body["error"]["code"], "unavailable");
                assert!(took < Duration::from_secs(5), "503 took {took:?}");
                // The relay's tick fails every 250 ms; its lines come after 0, 1, 3, 7 … s.
                unready_saying_why(service, "outbox relay cannot reach Redis", cause, 4).await;
            }
            Self::RabbitMq => {
                // Attempts after 0, 0.1, 0.3, 0.7, 1.5, 3.1 … s.
                unready_saying_why(service, "cannot connect to RabbitMQ", cause, 7).await;
                let (status, body, _) = create(service).await;
                assert_eq!(status, 201, "{body}");
            }
        }
    }
}

/// A server of one [`Side`] that speaks TLS only: a private `redis-server`, or a TLS proxy in
/// front of the machine's RabbitMQ.
enum TlsServer {
    Redis(PrivateRedis),
    RabbitMq(TlsProxy),
}

impl TlsServer {
    /// Starts it on `port` with the certificate `server`; it demands a client certificate
    /// signed by `ca` when `clients_show_certificates`.
    async fn start(
        side: Side,
        port: u16,
        server: &Identity,
        ca: &Path,
        clients_show_certificates: bool,
    ) -> Self {
        match side {
            Side::Redis => Self::Redis(PrivateRedis::start_tls_on(
                port,
                RedisTls {
                    server,
                    ca,
                    auth_clients: clients_show_certificates,
                },
            )),
            Side::RabbitMq => {
                let client_ca = clients_show_certificates.then_some(ca);
                let broker = BROKER.parse().unwrap();
                Self::RabbitMq(TlsProxy::start_on(port, broker, server, client_ca).await)
            }
        }
    }

    /// Its URL, naming it `host`.
    fn url(&self, host: &str) -> String {
        match self {
            Self::Redis(redis) => format!("rediss://{host}:{}/", redis.port),
            Self::RabbitMq(proxy) => format!("amqps://guest:guest@{host}:{}/%2f", proxy.port),
        }
    }

    /// The binary with `settings`' prefix, queue and exchange, this server by `host` with the
    /// TLS `files` (variable, path), and the machine's other server.
    fn service(&self, settings: &Settings, host: &str, files: &[(&str, &Path)]) -> Command {
        let (redis_url, amqp_url) = match self {
            Self::Redis(_) => (self.url(host), AMQP_URL.to_owned()),
            Self::RabbitMq(_) => (REDIS_URL.to_owned(), self.url(host)),
        };
        let mut command = service_at(settings, &redis_url, &amqp_url);
        command.envs(files.iter().copied());
        command
    }
}

fn tls_settings(ca: &Path, client: Option<&Identity>) -> TlsSettings {
    let client = client.map(|client| (client.certificate.as_path(), client.key.as_path()));
    TlsSettings::read(Some(ca), client).expect("the test's TLS files are good")
}

async fn get_status(url: String) -> u16 {
    Http::new().get(url).send().await.unwrap().status().as_u16()
}

/// Polls `/readyz` until it answers `expected` (for as long as `eventually` waits); returns how
/// long it took.
async fn until_ready_is(service: &Service, expected: u16) -> Duration {
    let started = Instant::now();
    eventually(async || match get_status(service.url("/readyz")).await {
        answer if answer == expected => Ok(started.elapsed()),
        answer => Err(format!("/readyz answers {answer}, not {expected}")),
    })
    .await
}

/// Creates a session over REST: the status, the body, and how long the answer took.
async fn create(service: &Service) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = Http::new()
        .post(service.url("/a01/session"))
        .json(&json!({"user_id": "u", "device_id": "d"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap(), started.elapsed())
}

/// How many lines of the service's log hold `message`.
fn lines_with(service: &Service, message: &str) -> usize {
    service
        .printed()
        .lines()
        .filter(|line| line.contains(message))
        .count()
}

/// `/readyz` answers 503 within 5 s and goes on answering 503 for 4 s; a log line `message`
/// names `cause`, repeated but not at every attempt (at most `most_lines` in those seconds).
async fn unready_saying_why(service: &Service, message: &str, cause: &str, most_lines: usize) {
    let started = Instant::now();
    let took = until_ready_is(service, 503).await;
    assert!(took < Duration::from_secs(5), "/readyz took {took:?}");
    eventually(async || {
        let printed = service.printed();
        match printed
            .lines()
            .find(|line| line.contains(message) && line.contains(cause))
        {
            Some(_) => Ok(()),
            None => Err(format!(
                "no line of {message:?} names {cause:?}:\n{printed}"
            )),
        }
    })
    .await;
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            get_status(service.url("/readyz")).await,
            503,
            "while it lasts"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lines = lines_with(service, message);
    let printed = service.printed();
    assert!(lines >= 2, "said once, not again:\n{printed}");
    assert!(lines <= most_lines, "{lines} lines in 4 s:\n{printed}");
}

/// The service is ready and serves REST.
async fn serves(service: &Service) {
    until_ready_is(service, 200).await;
    let (status, body, _) = create(service).await;
    assert_eq!(status, 201, "{body}");
    let path = format!("/a01/session/{}", body["session_id"].as_str().unwrap());
    assert_eq!(get_status(service.url(&path)).await, 200);
}

/// The binary with `settings`' prefix, queue and exchange, and Redis and RabbitMQ at these URLs.
fn service_at(settings: &Settings, redis_url: &str, amqp_url: &str) -> Command {
    let mut command = service_with_settings(settings);
    command
        .env("REDIS_URL", redis_url)
        .env("AMQP_URL", amqp_url)
        .env("REDIS_CLUSTER", "no");
    command
}

fn start(mut command: Command) -> Service {
    Service::start(&mut command, free_port())
}

#[tokio::test]
async fn rediss_and_amqps_carry_rest_commands_and_events_showing_client_certificates() {
    let certificates = TestCertificates::new();
    let (ca, server, client) = (
        certificates.ca(),
        certificates.server(),
        certificates.client(),
    );
    // Both servers require a client certificate signed by the CA.
    let redis = PrivateRedis::start_tls(RedisTls {
        server: &server,
        ca: &ca,
        auth_clients: true,
    });
    let proxy = TlsProxy::start(BROKER.parse().unwrap(), &server, Some(&ca)).await;
    let settings = Settings {
        // Redis by address, RabbitMQ by name: the certificate holds both.
        redis_url: SecretString::new(redis.tls_url()),
        redis_tls: tls_settings(&ca, Some(&client)),
        amqp_url: SecretString::new(format!("amqps://guest:guest@localhost:{}/%2f", proxy.port)),
        amqp_tls: tls_settings(&ca, Some(&client)),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    assert!(
        proxy.handshakes() >= 1,
        "the instance connected through TLS"
    );
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;

    let id = app
        .create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
    assert_eq!(app.session(&id).await["device_id"], "d");
    let reply = app
        .amqp
        .call(&json!({"type": "GetSession", "session_id": id}))
        .await;
    assert_eq!(
        reply.body["result"]["session_id"],
        id.as_str(),
        "{}",
        reply.body
    );
    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{id}"))
        .await;
    assert_eq!(status, 200);
    // Published by the instance over amqps://.
    assert_eq!(events.next().await.body["data"]["session_id"], id.as_str());
    assert_eq!(get_status(app.url("/readyz")).await, 200);
    app.stop().await;
}

/// Against the system's roots (which do not hold the test's CA) and against another CA, the
/// server is refused; restarted with the right CA, the instance serves.
async fn an_unknown_issuer_is_refused_until_the_right_ca_is_set(side: Side) {
    let certificates = TestCertificates::new();
    let (ca, other_ca) = (certificates.ca(), certificates.other_ca());
    let server = TlsServer::start(side, free_port(), &certificates.server(), &ca, false).await;
    let settings = isolated_settings();
    for files in [vec![], vec![(side.ca_variable(), other_ca.as_path())]] {
        let refused = start(server.service(&settings, "localhost", &files));
        side.unready(&refused, "UnknownIssuer").await;
    }
    let right = start(server.service(&settings, "localhost", &[(side.ca_variable(), &ca)]));
    serves(&right).await;
    clean_up(&settings).await;
}

#[tokio::test]
async fn a_redis_certificate_of_an_unknown_issuer_is_refused_until_the_right_ca_is_set() {
    an_unknown_issuer_is_refused_until_the_right_ca_is_set(Side::Redis).await;
}

#[tokio::test]
async fn a_rabbitmq_certificate_of_an_unknown_issuer_is_refused_until_the_right_ca_is_set() {
    an_unknown_issuer_is_refused_until_the_right_ca_is_set(Side::RabbitMq).await;
}

/// A server showing an expired certificate is refused; once it shows a valid one (restarted on
/// the same port), the same instance recovers by itself and says so.
async fn an_expired_certificate_is_refused_until_the_server_shows_a_valid_one(
    side: Side,
    recovered: &str,
) {
    let certificates = TestCertificates::new();
    let (ca, port) = (certificates.ca(), free_port());
    let expired = TlsServer::start(side, port, &certificates.expired_server(), &ca, false).await;
    let settings = isolated_settings();
    let files = [(side.ca_variable(), ca.as_path())];
    let service = start(expired.service(&settings, "localhost", &files));
    side.unready(&service, "certificate expired").await;
    let reconnects = lines_with(&service, recovered);
    drop(expired);
    let _renewed = TlsServer::start(side, port, &certificates.server(), &ca, false).await;
    serves(&service).await;
    eventually(
        async || match lines_with(&service, recovered) > reconnects {
            true => Ok(()),
            false => Err(format!("no {recovered:?}:\n{}", service.printed())),
        },
    )
    .await;
    clean_up(&settings).await;
}

#[tokio::test]
async fn an_expired_redis_certificate_is_refused_until_the_server_shows_a_valid_one() {
    let recovered = "outbox relay reaches Redis again";
    an_expired_certificate_is_refused_until_the_server_shows_a_valid_one(Side::Redis, recovered)
        .await;
}

#[tokio::test]
async fn an_expired_rabbitmq_certificate_is_refused_until_the_server_shows_a_valid_one() {
    let recovered = "connected to RabbitMQ";
    an_expired_certificate_is_refused_until_the_server_shows_a_valid_one(Side::RabbitMq, recovered)
        .await;
}

/// A certificate for `localhost` alone is refused when the URL names `127.0.0.1`; restarted
/// with a URL naming `localhost`, the instance serves.
async fn a_certificate_for_another_name_is_refused_until_the_url_names_the_server(side: Side) {
    let certificates = TestCertificates::new();
    let ca = certificates.ca();
    let server = certificates.localhost_server();
    let server = TlsServer::start(side, free_port(), &server, &ca, false).await;
    let settings = isolated_settings();
    let files = [(side.ca_variable(), ca.as_path())];
    let by_address = start(server.service(&settings, "127.0.0.1", &files));
    side.unready(&by_address, "certificate not valid for name")
        .await;
    drop(by_address);
    serves(&start(server.service(&settings, "localhost", &files))).await;
    clean_up(&settings).await;
}

#[tokio::test]
async fn a_redis_certificate_for_another_name_is_refused_until_the_url_names_the_server() {
    a_certificate_for_another_name_is_refused_until_the_url_names_the_server(Side::Redis).await;
}

#[tokio::test]
async fn a_rabbitmq_certificate_for_another_name_is_refused_until_the_url_names_the_server() {
    a_certificate_for_another_name_is_refused_until_the_url_names_the_server(Side::RabbitMq).await;
}

/// A server that requires a client certificate refuses an instance without one, which says so;
/// restarted with its certificate, the instance serves.
async fn a_client_certificate_is_required_until_it_is_set(side: Side) {
    let certificates = TestCertificates::new();
    let ca = certificates.ca();
    let server = TlsServer::start(side, free_port(), &certificates.server(), &ca, true).await;
    let settings = isolated_settings();
    let ca_file = (side.ca_variable(), ca.as_path());
    let without = start(server.service(&settings, "localhost", &[ca_file]));
    side.unready(&without, "CertificateRequired").await;
    drop(without);
    let client = certificates.client();
    let [certificate, key] = side.client_files(&client);
    serves(&start(server.service(
        &settings,
        "localhost",
        &[ca_file, certificate, key],
    )))
    .await;
    clean_up(&settings).await;
}

#[tokio::test]
async fn redis_requiring_a_client_certificate_refuses_an_instance_without_one() {
    a_client_certificate_is_required_until_it_is_set(Side::Redis).await;
}

#[tokio::test]
async fn rabbitmq_requiring_a_client_certificate_refuses_an_instance_without_one() {
    a_client_certificate_is_required_until_it_is_set(Side::RabbitMq).await;
}

/// One Redis Cluster over TLS for every case, started once: the nodes speak TLS to each other and
/// require client certificates.
#[tokio::test]
async fn a_redis_cluster_over_tls() {
    let certificates = TestCertificates::new();
    let (ca, server, client) = (
        certificates.ca(),
        certificates.server(),
        certificates.client(),
    );
    let cluster = tokio::task::spawn_blocking({
        let (ca, server) = (ca.clone(), server.clone());
        move || {
            PrivateCluster::start_tls(RedisTls {
                server: &server,
                ca: &ca,
                auth_clients: true,
            })
        }
    })
    .await
    .unwrap();
    let seed = cluster.seed_url();
    assert!(seed.starts_with("rediss://"), "{seed}");

    // REDIS_CLUSTER=auto (as set here) finds the cluster over TLS; users spread over its nodes.
    let settings = Settings {
        redis_url: SecretString::new(seed.clone()),
        redis_tls: tls_settings(&ca, Some(&client)),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings.clone()).await;
    for user in (0..12).map(|n| format!("user-{n}")) {
        let id = app
            .create_session(json!({"user_id": user, "device_id": "d"}))
            .await;
        assert_eq!(app.session(&id).await["user_id"], user.as_str());
        let reply = app
            .amqp
            .call(&json!({"type": "DeleteUserSessions", "user_id": user}))
            .await;
        assert_eq!(
            reply.body["result"]["session_ids"][0],
            id.as_str(),
            "{}",
            reply.body
        );
    }
    app.stop_keeping_state().await;

    // With a CA that did not sign the nodes' certificates:
    let other_ca = certificates.other_ca();
    let [certificate, key] = Side::Redis.client_files(&client);
    let refused = |mode: &str| {
        let mut command = service_at(&settings, &seed, AMQP_URL);
        command.env("REDIS_CLUSTER", mode).envs([
            ("REDIS_CA_FILE", other_ca.as_path()),
            certificate,
            key,
        ]);
        command
    };
    // REDIS_CLUSTER=yes: the seed node is needed at start, so the start stops, saying why.
    let started = Instant::now();
    let output = run_to_exit(&mut refused("yes"), Duration::from_secs(10));
    let took = started.elapsed();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(printed.contains("cannot connect to Redis"), "{printed}");
    assert!(printed.contains("UnknownIssuer"), "{printed}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // REDIS_CLUSTER=auto: the question at start fails, the log says why, and the instance runs,
    // asking again at requests, unready while the certificate does not verify.
    let auto = start(refused("auto"));
    Side::Redis.unready(&auto, "UnknownIssuer").await;
    let printed = auto.printed();
    let said = |line: &str| {
        line.contains("deciding at the first request it answers") && line.contains("UnknownIssuer")
    };
    assert!(printed.lines().any(said), "{printed}");
    drop(auto);
    clean_up(&settings).await;
    drop(cluster);
}

#[test]
fn bad_tls_configuration_stops_the_start_with_one_line_naming_the_variable() {
    const CONTENT: &str = "secret-content-4f2a";
    let certificates = TestCertificates::new();
    let dir = std::env::temp_dir().join(format!("bad-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let not_pem = file("not-pem.crt", &format!("{CONTENT}\n"));
    let broken_pem = file(
        "broken.crt",
        &format!("-----BEGIN CERTIFICATE-----\n{CONTENT}!!\n-----END CERTIFICATE-----\n"),
    );
    let (ca, server, client) = (
        certificates.ca(),
        certificates.server(),
        certificates.client(),
    );
    let key_text = std::fs::read_to_string(&client.key).unwrap();
    let path = |path: &Path| path.to_str().unwrap().to_owned();
    let (ca, server_key) = (path(&ca), path(&server.key));
    let (client_certificate, client_key) = (path(&client.certificate), path(&client.key));
    let rediss = ("REDIS_URL", "rediss://127.0.0.1:6390/".to_owned());
    let amqps = (
        "AMQP_URL",
        "amqps://guest:guest@127.0.0.1:5671/%2f".to_owned(),
    );
    let missing = dir.join("missing.crt").to_str().unwrap().to_owned();
    let directory = dir.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        // A file for a connection without TLS.
        (vec![("REDIS_CA_FILE", ca.clone())], "REDIS_CA_FILE"),
        (vec![("AMQP_CA_FILE", ca.clone())], "AMQP_CA_FILE"),
        (
            vec![("REDIS_CLIENT_KEY_FILE", client_key.clone())],
            "REDIS_CLIENT_KEY_FILE",
        ),
        (
            vec![("AMQP_CLIENT_CERT_FILE", client_certificate.clone())],
            "AMQP_CLIENT_CERT_FILE",
        ),
        // A certificate without its key, or the reverse.
        (
            vec![
                rediss.clone(),
                ("REDIS_CLIENT_CERT_FILE", client_certificate.clone()),
            ],
            "REDIS_CLIENT_KEY_FILE",
        ),
        (
            vec![amqps.clone(), ("AMQP_CLIENT_KEY_FILE", client_key.clone())],
            "AMQP_CLIENT_CERT_FILE",
        ),
        // Files that cannot be read, or are no PEM of what they should hold.
        (
            vec![rediss.clone(), ("REDIS_CA_FILE", missing)],
            "REDIS_CA_FILE",
        ),
        (
            vec![amqps.clone(), ("AMQP_CA_FILE", directory)],
            "AMQP_CA_FILE",
        ),
        (
            vec![rediss.clone(), ("REDIS_CA_FILE", not_pem.clone())],
            "REDIS_CA_FILE",
        ),
        (
            vec![amqps.clone(), ("AMQP_CA_FILE", broken_pem.clone())],
            "AMQP_CA_FILE",
        ),
        (
            vec![amqps.clone(), ("AMQP_CA_FILE", client_key.clone())],
            "AMQP_CA_FILE",
        ),
        (
            vec![
                rediss.clone(),
                ("REDIS_CLIENT_CERT_FILE", not_pem.clone()),
                ("REDIS_CLIENT_KEY_FILE", client_key.clone()),
            ],
            "REDIS_CLIENT_CERT_FILE",
        ),
        (
            vec![
                amqps.clone(),
                ("AMQP_CLIENT_CERT_FILE", client_certificate.clone()),
                ("AMQP_CLIENT_KEY_FILE", client_certificate.clone()),
            ],
            "AMQP_CLIENT_KEY_FILE",
        ),
        // A key that is not the certificate's.
        (
            vec![
                rediss.clone(),
                ("REDIS_CLIENT_CERT_FILE", client_certificate.clone()),
                ("REDIS_CLIENT_KEY_FILE", server_key),
            ],
            "REDIS_CLIENT_KEY_FILE",
        ),
        // There is no way to turn verification off.
        (
            vec![("REDIS_URL", "rediss://127.0.0.1:6390/#insecure".to_owned())],
            "REDIS_URL",
        ),
    ];
    let key_lines: Vec<&str> = key_text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    for (variables, named) in cases {
        let mut command = service_binary();
        command.envs(variables.iter().map(|(name, value)| (name, value)));
        let output = run_to_exit_on_bad_configuration(&mut command);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variables:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{variables:?}: {stderr}");
        assert!(stderr.contains(named), "{variables:?}: {stderr}");
        assert!(!stderr.contains(CONTENT), "{variables:?}: {stderr}");
        for line in &key_lines {
            assert!(
                !stderr.contains(line),
                "{variables:?} echoed the key: {stderr}"
            );
        }
        assert!(output.stdout.is_empty(), "{variables:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
