//! Private Redis servers: one `redis-server` on a free port, or a Redis Cluster of three
//! masters, either of them plain or speaking TLS only; each is killed when dropped, and a server
//! can be killed and started again, empty, in its place. Never the machine's shared Redis.

use std::{
    net::TcpListener,
    ops::RangeInclusive,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, tls::Identity};

/// Asks the server on `port` `question` through `redis-cli` (with `cli_args`, e.g. for TLS)
/// every 100 ms until `ok` holds for its answer; fails with the last answer at `deadline`.
fn await_answer(
    cli_args: &[&std::ffi::OsStr],
    port: u16,
    question: &[&str],
    deadline: Instant,
    ok: impl Fn(&str) -> bool,
) {
    loop {
        let output = Command::new("redis-cli")
            .args(cli_args)
            .args(["-p", &port.to_string()])
            .args(question)
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&output.stdout);
        if ok(&answer) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} answered {question:?} with {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How a `redis-server` speaks TLS: its certificate, the CA it verifies clients against, and
/// whether a client must show a certificate.
#[derive(Debug, Clone, Copy)]
pub struct RedisTls<'a> {
    /// The server's certificate and key.
    pub server: &'a Identity,
    /// The CA that client certificates (and, in a cluster, the other nodes') must be signed by.
    pub ca: &'a Path,
    /// Whether a client must show a certificate (`--tls-auth-clients yes`).
    pub auth_clients: bool,
}

impl RedisTls<'_> {
    /// The server's arguments: TLS only, on `port`.
    fn server_args(&self, port: u16) -> Vec<String> {
        let path = |path: &Path| path.to_str().expect("a UTF-8 path").to_owned();
        vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.server.certificate),
            "--tls-key-file".into(),
            path(&self.server.key),
            "--tls-ca-cert-file".into(),
            path(self.ca),
            "--tls-auth-clients".into(),
            if self.auth_clients { "yes" } else { "no" }.into(),
        ]
    }

    /// `redis-cli`'s arguments to talk to such a server (with the server's own certificate as
    /// client certificate).
    fn cli_args(&self) -> Vec<&std::ffi::OsStr> {
        vec![
            "--tls".as_ref(),
            "--cacert".as_ref(),
            self.ca.as_os_str(),
            "--cert".as_ref(),
            self.server.certificate.as_os_str(),
            "--key".as_ref(),
            self.server.key.as_os_str(),
        ]
    }
}

/// The arguments of a server that listens on `port` without TLS.
fn plain_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

/// A `redis-server` of the test's own; never the shared one.
pub struct PrivateRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    dir: std::path::PathBuf,
    /// All of `redis-server`'s arguments, to start it again as it was.
    args: Vec<String>,
}

impl PrivateRedis {
    /// Starts a server with the given extra arguments (e.g. `["--requirepass", "x"]`).
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Starts a server on `port` (e.g. again, after stopping one there).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        Self::spawn(port, &plain_args(port), extra)
    }

    /// Starts a replica of `master` on `port` and waits until it has synced and `master` counts
    /// it online (so that a `WAIT` on the master is answered by it).
    pub fn start_replica_on(port: u16, master: &PrivateRedis) -> Self {
        let master_port = master.port.to_string();
        let replica = Self::start_on(port, &["--replicaof", "127.0.0.1", &master_port]);
        let deadline = Instant::now() + Duration::from_secs(20);
        await_answer(&[], port, &["info", "replication"], deadline, |info| {
            info.contains("master_link_status:up")
        });
        await_answer(
            &[],
            master.port,
            &["info", "replication"],
            deadline,
            |info| info.contains("connected_slaves:1") && info.contains("state=online"),
        );
        replica
    }

    /// Starts a server that speaks TLS only (`--port 0`), on a free port.
    pub fn start_tls(tls: RedisTls<'_>) -> Self {
        Self::start_tls_on(free_port(), tls)
    }

    /// Starts a server that speaks TLS only on `port` (e.g. again, with another certificate).
    pub fn start_tls_on(port: u16, tls: RedisTls<'_>) -> Self {
        Self::spawn(port, &tls.server_args(port), &[])
    }

    /// Its URL over TLS, for a server started with [`PrivateRedis::start_tls`], by address.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// Runs `redis-server` listening on `port` with `listen` (the arguments that open it), then
    /// `extra`, and waits until it accepts connections.
    fn spawn(port: u16, listen: &[String], extra: &[&str]) -> Self {
        // A directory of its own: a replica writes the RDB of its sync there (never the
        // repository); `extra` may name another.
        let dir =
            std::env::temp_dir().join(format!("redis-{port}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = listen.to_vec();
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
        args.extend(["--dir".into(), dir.to_str().unwrap().into()]);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let child = Self::run(port, &args);
        Self {
            port,
            child,
            dir,
            args,
        }
    }

    /// Runs `redis-server` with `args` and waits until it accepts connections on `port`.
    fn run(port: u16, args: &[String]) -> Child {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kills the server (SIGKILL) and waits until it is gone; its directories stay, for
    /// [`PrivateRedis::start_again`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a server killed by [`PrivateRedis::kill`] again, on its port with its arguments.
    /// It comes back empty (it saves nothing), but a cluster node comes back as the same node
    /// with the same slots, read from its cluster config file.
    pub fn start_again(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "the server still runs"
        );
        self.child = Self::run(self.port, &self.args);
        // Another process may have taken the port while it was free: then this one exits.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "redis-server could not start again on port {}",
            self.port
        );
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis Cluster of three masters (and, if asked, a replica of each), each on a free
/// port (with its bus port free too).
pub struct PrivateCluster {
    /// The nodes: the three masters first, then the replicas.
    pub nodes: Vec<PrivateRedis>,
    dir: std::path::PathBuf,
    tls: bool,
}

impl PrivateCluster {
    /// Starts three nodes on free ports and joins them into a cluster (slots over all three).
    pub fn start() -> Self {
        Self::start_with(None, 0)
    }

    /// Three masters and `replicas` replicas of each, with a `cluster-node-timeout` of 2 s, so
    /// that a replica takes over a few seconds after its master dies. With none, the same as
    /// [`PrivateCluster::start`] (a `cluster-node-timeout` of 15 s).
    pub fn start_with_replicas(replicas: usize) -> Self {
        Self::start_with(None, replicas)
    }

    /// As [`PrivateCluster::start`], with every node speaking TLS only, to clients and to each
    /// other (`--tls-cluster yes`, `--tls-replication yes`).
    pub fn start_tls(tls: RedisTls<'_>) -> Self {
        Self::start_with(Some(tls), 0)
    }

    fn start_with(tls: Option<RedisTls<'_>>, replicas: usize) -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        while nodes.len() < 3 * (1 + replicas) {
            let port = free_port();
            // The cluster bus listens on port + 10000.
            if port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let config = dir.join(format!("nodes-{port}.conf"));
            let listen = match &tls {
                None => plain_args(port),
                Some(tls) => {
                    let mut args = tls.server_args(port);
                    args.extend(
                        ["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from),
                    );
                    args
                }
            };
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                config.to_str().unwrap(),
                "--dir",
                dir.to_str().unwrap(),
                // A master down leaves the other masters serving their slots, as production
                // clusters should be set up (the default stops the whole cluster).
                "--cluster-require-full-coverage",
                "no",
                // With replicas: one takes over a few seconds after its master dies.
                "--cluster-node-timeout",
                if replicas > 0 { "2000" } else { "15000" },
                // Replicas sync at once (the default waits 5 s for more of them).
                "--repl-diskless-sync-delay",
                "0",
            ];
            nodes.push(PrivateRedis::spawn(port, &listen, &extra));
        }
        let cli_tls = tls.as_ref().map(RedisTls::cli_args).unwrap_or_default();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(&cli_tls)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            await_answer(
                &cli_tls,
                node.port,
                &["cluster", "info"],
                deadline,
                |info| info.contains("cluster_state:ok"),
            );
        }
        // Every replica has synced with its master (only then can it take over).
        for node in &nodes[3..] {
            await_answer(
                &cli_tls,
                node.port,
                &["info", "replication"],
                deadline,
                |info| info.contains("role:slave") && info.contains("master_link_status:up"),
            );
        }
        Self {
            nodes,
            dir,
            tls: tls.is_some(),
        }
    }

    /// The port of the master that serves `slot` now, by `CLUSTER NODES` asked of node `asked`.
    pub fn master_of_slot(&self, asked: usize, slot: u16) -> u16 {
        self.masters(asked)
            .into_iter()
            .find(|(_, slots)| slots.iter().any(|range| range.contains(&slot)))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
            .0
    }

    /// The slots that the master on `port` serves now, by `CLUSTER NODES` asked of node `asked`.
    pub fn slots_of(&self, asked: usize, port: u16) -> Vec<RangeInclusive<u16>> {
        self.masters(asked)
            .into_iter()
            .find(|(master, _)| *master == port)
            .unwrap_or_else(|| panic!("no master on port {port}"))
            .1
    }

    /// The masters not known to have failed, by port, with the slot ranges each serves, by
    /// `CLUSTER NODES` asked of node `asked`.
    fn masters(&self, asked: usize) -> Vec<(u16, Vec<RangeInclusive<u16>>)> {
        let output = Command::new("redis-cli")
            .args([
                "-p",
                &self.nodes[asked].port.to_string(),
                "cluster",
                "nodes",
            ])
            .output()
            .unwrap();
        // Each line: id address flags master ping pong epoch link slot ranges...
        let mut masters = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let slots = fields[8..]
                .iter()
                .filter_map(|range| {
                    let (first, last) = range.split_once('-').unwrap_or((range, range));
                    Some(first.parse::<u16>().ok()?..=last.parse::<u16>().ok()?)
                })
                .collect();
            let address = fields[1].split('@').next().unwrap();
            masters.push((address.rsplit(':').next().unwrap().parse().unwrap(), slots));
        }
        masters
    }

    /// The URL of the first node, from which a client learns the others (`rediss://` for a
    /// cluster that speaks TLS).
    pub fn seed_url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.nodes[0].port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
