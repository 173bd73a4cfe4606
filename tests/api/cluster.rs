//! The same commands on a Redis Cluster: every key of one user shares a hash slot, so each
//! command's script runs on one node, whichever node the user's bucket lands on. A node that
//! goes away holds up no other node's work; `REDIS_CLUSTER=auto` decides once Redis answers, and
//! `REDIS_CLUSTER=no` against a cluster node says so.

use std::{collections::HashSet, ops::RangeInclusive, time::Duration};

use lapin::BasicProperties;
use serde_json::json;
use session_manager::{
    config::{SecretString, Settings},
    domain::{SessionId, UserId},
    store::{Keys, RedisMode, Replication},
};

use crate::helpers::{
    clean_up, eventually, isolated_settings, service_with_settings, spawn_app_with, Http, TestApp,
    AMQP_URL,
};
use session_manager_testkit::{free_port, PrivateCluster, Service, TcpProxy};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn every_operation_works_on_a_redis_cluster() {
    let (cluster, settings) = start_cluster(0).await;
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
/// its own call and a dead master fails only the requests of its own slots. The master killed
/// is the one holding the relays' lease hash, and the instance left to publish the events starts
/// after the kill, so it never holds a lease: it visits every bucket rather than none.
#[tokio::test]
async fn an_unreachable_shard_holds_up_no_other_shards_events() {
    let (mut cluster, settings) = start_cluster(0).await;
    // A key prefix whose lease hash is not on the seed node (which stays).
    let mut seed = redis::Client::open(cluster.seed_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (settings, killed) = loop {
        let settings = Settings {
            session_lifetime: Duration::from_secs(4),
            key_prefix: isolated_settings().key_prefix,
            ..settings.clone()
        };
        let leases = Keys::new(&settings.key_prefix).relay_leases();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&leases)
            .query_async(&mut seed)
            .await
            .unwrap();
        let port = cluster.master_of_slot(0, slot);
        if let Some(at) = cluster
            .nodes
            .iter()
            .skip(1)
            .position(|node| node.port == port)
        {
            break (settings, at + 1);
        }
    };
    let first = spawn_app_with(settings.clone()).await;
    let mut events = first.amqp.subscribe(&settings.events_exchange).await;
    let mut sessions = Vec::new();
    for n in 0..30 {
        let user = format!("user-{n}");
        sessions.push(
            first
                .create_session(json!({"user_id": user, "device_id": "d"}))
                .await,
        );
    }
    // The instance that made them stops (freeing its leases); that node goes away; another
    // instance starts. The dead node's sessions cannot be read any more, the others can.
    first.stop_keeping_state().await;
    cluster.nodes[killed].kill();
    let app = spawn_app_with(settings.clone()).await;
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
    let (mut cluster, settings) = start_cluster(2).await;
    let settings = Settings {
        redis_wait: Some(Replication {
            replicas: 1,
            timeout: Duration::from_secs(1),
        }),
        ..settings
    };
    let app = spawn_app_with(settings).await;
    let load = Load::start(&app);
    let mut correlation_ids = Vec::new();
    let mut killed_at = None;
    for n in 0..COMMANDS {
        if n == COMMANDS / 3 {
            killed_at = Some(Instant::now());
            // The master of the last slot goes (SIGKILL), in the middle of the load.
            drop(cluster.nodes.remove(master_of_last_slot(&cluster)));
        }
        correlation_ids.push(publish_create(&app, n).await);
    }
    let answered = app.amqp.created_session_ids(&correlation_ids).await;
    eventually(async || match app.readyz().await {
        200 => Ok(()),
        other => Err(format!("/readyz answers {other} after the failover")),
    })
    .await;
    let seen = load.finish().await;
    // The figures of docs/DEPLOYMENT.md (`cargo test cluster::a_master_killed -- --nocapture`).
    println!(
        "failover: /readyz 200 again {:.1} s after the kill; {} REST creates answered 503 meanwhile",
        seen.ready_again().duration_since(killed_at.unwrap()).as_secs_f64(),
        seen.rest_unavailable
    );

    // Every answered change is there.
    let listed = listed_session_ids(&app).await;
    let answered: HashSet<String> = answered
        .into_iter()
        .chain(seen.rest_created_ids())
        .collect();
    let missing: Vec<&String> = answered.difference(&listed).collect();
    assert!(missing.is_empty(), "answered but lost: {missing:?}");
    seen.assert_no_more_unanswered(&listed, &answered);

    // Deleting them all publishes every event, the failed-over shard's too.
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    for user in load_users() {
        app.delete_user(&user).await;
    }
    assert_eq!(events.closed_session_ids(listed.len()).await, listed);
    app.stop().await;
    drop(cluster);
}

/// The same load on three masters without replicas (issue 10: what is lost then). The master of
/// the last slot is killed (SIGKILL) and, its shard being unserved meanwhile, started again 3 s
/// later on its port with its cluster config file: the same node with the same slots, but empty.
/// `/readyz` is 503 in the gap and 200 after; the AMQP commands published in the gap are held
/// and applied once it is back; every answered session of the other shards is there; the
/// answered sessions that are gone are all of the killed master's slots, and there are some:
/// those it held.
#[tokio::test]
async fn a_master_killed_without_replicas_loses_the_sessions_it_held() {
    // No replicas; `REDIS_WAIT_REPLICAS` unset.
    let (mut cluster, settings) = start_cluster(0).await;
    let app = spawn_app_with(settings).await;
    let load = Load::start(&app);
    let killed = master_of_last_slot(&cluster);
    let killed_slots = cluster.slots_of(0, cluster.nodes[killed].port);
    let mut correlation_ids = Vec::new();
    let mut killed_at = None;
    for n in 0..COMMANDS {
        if n == COMMANDS / 3 {
            killed_at = Some(Instant::now());
            cluster.nodes[killed].kill();
        }
        correlation_ids.push(publish_create(&app, n).await);
    }
    let killed_at = killed_at.unwrap();
    eventually(async || match app.readyz().await {
        503 => Ok(()),
        other => Err(format!("/readyz answers {other} with a master down")),
    })
    .await;
    // Well within the other masters' `cluster-node-timeout` (15 s), so that they never mark it
    // failed and take it back at once.
    tokio::time::sleep_until(killed_at + Duration::from_secs(3)).await;
    cluster.nodes[killed].start_again();
    let (before, during) = correlation_ids.split_at(COMMANDS / 3);
    let answered_before = app.amqp.created_session_ids(before).await;
    let answered_during = app.amqp.created_session_ids(during).await;
    eventually(async || match app.readyz().await {
        200 => Ok(()),
        other => Err(format!("/readyz answers {other} after the master is back")),
    })
    .await;
    let seen = load.finish().await;

    // Which answered sessions are gone, and on which shard they were.
    let listed = listed_session_ids(&app).await;
    let answered: HashSet<String> = answered_before
        .iter()
        .chain(&answered_during)
        .cloned()
        .chain(seen.rest_created_ids())
        .collect();
    assert_eq!(answered.len(), COMMANDS + seen.rest_created.len());
    seen.assert_no_more_unanswered(&listed, &answered);
    let mut seed = redis::Client::open(cluster.seed_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = app.keys();
    let mut on_killed_master = HashSet::new();
    for id in &answered {
        let key = keys.session(&SessionId::parse(id).unwrap());
        if in_slots(&mut seed, &key, &killed_slots).await {
            on_killed_master.insert(id.clone());
        }
    }
    let mut users_on_killed_master = 0;
    for user in load_users() {
        let key = keys.index(&UserId::parse(user).unwrap());
        users_on_killed_master += usize::from(in_slots(&mut seed, &key, &killed_slots).await);
    }
    let lost: HashSet<&String> = answered.difference(&listed).collect();
    for id in &lost {
        assert!(
            on_killed_master.contains(*id),
            "{id} is gone, of a shard that stayed up"
        );
    }
    // What the killed master had answered before it died is gone, all of it: a real loss (REST
    // creates have their time; an AMQP create published before the kill may have been held
    // instead of applied). This is what a master without persistence does; the assertions on
    // the service are those above (nothing lost elsewhere) and below (nothing held is lost).
    let answered_by_it_before: Vec<&String> = seen
        .rest_created
        .iter()
        .filter(|(id, at)| *at < killed_at && on_killed_master.contains(id))
        .map(|(id, _)| id)
        .collect();
    assert!(
        !answered_by_it_before.is_empty(),
        "no REST create of its slots before the kill"
    );
    assert!(
        answered_by_it_before.iter().all(|id| lost.contains(id)),
        "a session of the killed master survived it"
    );
    // Published while the master was down: held, then applied on it once it was back.
    let held: Vec<&String> = answered_during
        .iter()
        .filter(|id| on_killed_master.contains(*id))
        .collect();
    assert!(
        !held.is_empty(),
        "no command of the killed master's slots in the gap"
    );
    assert!(
        held.iter().all(|id| listed.contains(*id)),
        "a command held in the gap is gone"
    );
    // The figure of docs/DEPLOYMENT.md (`cargo test cluster::a_master_killed -- --nocapture`).
    println!(
        "no replicas: {} of {} answered sessions lost (those of the killed master's slots, \
         which hold {} of {} users), /readyz 200 again {:.1} s after the kill, {} REST creates \
         answered 503 meanwhile, {} AMQP creates of its slots held and applied after",
        lost.len(),
        answered.len(),
        users_on_killed_master,
        load_users().count(),
        seen.ready_again().duration_since(killed_at).as_secs_f64(),
        seen.rest_unavailable,
        held.len()
    );
    app.stop().await;
    drop(cluster);
}

/// Whether `key` hashes to one of `slots`, by `CLUSTER KEYSLOT` asked of a cluster node.
async fn in_slots(
    node: &mut redis::aio::MultiplexedConnection,
    key: &str,
    slots: &[RangeInclusive<u16>],
) -> bool {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(node)
        .await
        .unwrap();
    slots.iter().any(|range| range.contains(&slot))
}

/// A private cluster of three masters with `replicas` replicas each (started off the runtime),
/// and the settings of an instance of its own against it.
async fn start_cluster(replicas: usize) -> (PrivateCluster, Settings) {
    let cluster =
        tokio::task::spawn_blocking(move || PrivateCluster::start_with_replicas(replicas))
            .await
            .unwrap();
    let settings = Settings {
        redis_url: SecretString::new(cluster.seed_url()),
        ..isolated_settings()
    };
    (cluster, settings)
}

/// The AMQP creates of the failover tests.
const COMMANDS: usize = 3_000;

/// The users of the failover tests' load: 90 over AMQP, 30 over REST.
fn load_users() -> impl Iterator<Item = String> {
    (0..90)
        .map(|n| format!("user-{n}"))
        .chain((0..30).map(|n| format!("rest-{n}")))
}

/// Publishes create `n` of the failover tests' load, with a message_id, and returns its
/// correlation id.
async fn publish_create(app: &TestApp, n: usize) -> String {
    let correlation_id = format!("c{n}");
    let properties = BasicProperties::default()
        .with_reply_to(app.amqp.reply_queue().into())
        .with_correlation_id(correlation_id.as_str().into())
        .with_message_id(format!("m{n}").into());
    let command = json!({"type": "CreateSession", "user_id": format!("user-{}", n % 90), "device_id": format!("d{n}")});
    app.amqp
        .publish(command.to_string().as_bytes(), properties)
        .await;
    correlation_id
}

/// Every session id that the users of the load list.
async fn listed_session_ids(app: &TestApp) -> HashSet<String> {
    let mut listed = HashSet::new();
    for user in load_users() {
        listed.extend(crate::helpers::every_session_id(&app.url(""), &user).await);
    }
    listed
}

/// Which of the cluster's nodes is the master of the last slot: the one the failover tests kill,
/// never the seed node.
fn master_of_last_slot(cluster: &PrivateCluster) -> usize {
    let port = cluster.master_of_slot(0, 16_383);
    let at = cluster
        .nodes
        .iter()
        .position(|node| node.port == port)
        .unwrap();
    assert_ne!(at, 0, "the seed node stays");
    at
}

/// The background of the failover tests: REST creates all along (answered 201, or 503 for a
/// shard that is down), and `/readyz` watched all along, until [`Load::finish`].
struct Load {
    stop: CancellationToken,
    rest: JoinHandle<(Vec<(String, Instant)>, usize)>,
    readiness: JoinHandle<Vec<(u16, Instant)>>,
}

/// What the background load saw.
struct Seen {
    /// The sessions that REST creates made (answered 201), and when they were answered.
    rest_created: Vec<(String, Instant)>,
    /// How many REST creates were answered 503.
    rest_unavailable: usize,
    /// Each change of `/readyz`'s status, and when.
    readiness: Vec<(u16, Instant)>,
}

impl Load {
    fn start(app: &TestApp) -> Self {
        let stop = CancellationToken::new();
        let rest = tokio::spawn({
            let (http, url, stop) = (app.http.clone(), app.url("/a01/session"), stop.clone());
            async move {
                let (mut created, mut unavailable) = (Vec::new(), 0);
                for n in 0.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let body = json!({"user_id": format!("rest-{}", n % 30), "device_id": format!("r{n}")});
                    let response = http.post(&url).json(&body).send().await.unwrap();
                    match response.status().as_u16() {
                        201 => {
                            let created_body: serde_json::Value = response.json().await.unwrap();
                            let id = created_body["session_id"].as_str().unwrap().to_owned();
                            created.push((id, Instant::now()));
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
                let mut seen: Vec<(u16, Instant)> = Vec::new();
                while !stop.is_cancelled() {
                    let status = http.get(&url).send().await.unwrap().status().as_u16();
                    if seen.last().map(|(last, _)| *last) != Some(status) {
                        seen.push((status, Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            }
        });
        Self {
            stop,
            rest,
            readiness,
        }
    }

    /// Stops the load and returns what it saw.
    async fn finish(self) -> Seen {
        self.stop.cancel();
        let (rest_created, rest_unavailable) = self.rest.await.unwrap();
        Seen {
            rest_created,
            rest_unavailable,
            readiness: self.readiness.await.unwrap(),
        }
    }
}

impl Seen {
    /// Asserts that of the sessions `listed`, those never `answered` are at most as many as the
    /// REST creates answered 503: such a create may have been applied all the same (its WAIT ran
    /// out, or its master died after the write), which a 503 allows.
    fn assert_no_more_unanswered(&self, listed: &HashSet<String>, answered: &HashSet<String>) {
        let unanswered: Vec<&String> = listed.difference(answered).collect();
        assert!(
            unanswered.len() <= self.rest_unavailable,
            "listed but never answered: {unanswered:?}"
        );
    }

    /// The ids of the sessions that REST creates made.
    fn rest_created_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.rest_created.iter().map(|(id, _)| id.clone())
    }

    /// When `/readyz` last turned 200, after it was 503 during the gap.
    fn ready_again(&self) -> Instant {
        let statuses: Vec<u16> = self.readiness.iter().map(|(status, _)| *status).collect();
        assert!(
            statuses.contains(&503),
            "/readyz during the gap: {statuses:?}"
        );
        self.readiness
            .iter()
            .rev()
            .find(|(status, _)| *status == 200)
            .unwrap()
            .1
    }
}
