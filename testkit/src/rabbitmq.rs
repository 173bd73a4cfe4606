//! A private three-node RabbitMQ cluster, never the shared broker: each node with its own name,
//! ports and directories, all under a private `HOME` holding their common Erlang cookie (the
//! recipe of `shared/notes/LOCAL-CLUSTERS.md`). Starting one takes about half a minute.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::free_port;

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// One node of a [`PrivateRabbitCluster`].
pub struct RabbitNode {
    /// Its Erlang node name (`<name>@localhost`).
    pub name: String,
    /// Its AMQP port on 127.0.0.1.
    pub port: u16,
    base: PathBuf,
    killed: bool,
}

impl RabbitNode {
    /// Its AMQP URL (guest, default virtual host).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

/// Three RabbitMQ nodes joined into one cluster.
pub struct PrivateRabbitCluster {
    /// The nodes; the first is the one the others joined.
    pub nodes: Vec<RabbitNode>,
    home: PathBuf,
}

impl PrivateRabbitCluster {
    /// Starts three nodes and joins the second and third to the first.
    pub fn start() -> Self {
        let home = std::env::temp_dir().join(format!("rabbit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&home).unwrap();
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut cluster = Self {
            nodes: Vec::new(),
            home,
        };
        for n in 1..=3 {
            let name = format!("sm{n}-{tag}@localhost");
            let base = cluster.home.join(format!("node{n}"));
            std::fs::create_dir_all(base.join("log")).unwrap();
            std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
            std::fs::write(base.join("rabbitmq.conf"), "loopback_users = none\n").unwrap();
            let port = free_port();
            let dist_port = free_port();
            let started = cluster
                .env(&mut Command::new(format!("{BIN}/rabbitmq-server")), &base)
                .env("RABBITMQ_NODENAME", &name)
                .env("RABBITMQ_NODE_PORT", port.to_string())
                .env("RABBITMQ_DIST_PORT", dist_port.to_string())
                .arg("-detached")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(started.success(), "rabbitmq-server {name} did not start");
            cluster.nodes.push(RabbitNode {
                name,
                port,
                base,
                killed: false,
            });
        }
        for node in &cluster.nodes {
            // `await_startup` fails at once while the node has not yet registered with epmd.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !cluster
                .ctl_status(node, &["await_startup", "--timeout", "120"])
                .success()
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} did not boot",
                    node.name
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            cluster.ctl(node, &["stop_app"]);
            cluster.ctl(node, &["join_cluster", &first]);
            cluster.ctl(node, &["start_app"]);
        }
        cluster
    }

    /// `command` with the environment of a node whose files are under `base`.
    fn env<'c>(&self, command: &'c mut Command, base: &Path) -> &'c mut Command {
        command
            .env("HOME", &self.home)
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", base.join("pid"))
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                base.join("advanced.config"),
            )
    }

    /// Runs `rabbitmqctl -n <node> <args>`, which must succeed.
    fn ctl(&self, node: &RabbitNode, args: &[&str]) -> String {
        let output = self
            .env(&mut Command::new(format!("{BIN}/rabbitmqctl")), &node.base)
            .args(["-n", &node.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} on {}: {}",
            node.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `rabbitmqctl -n <node> <args>`; its exit status.
    fn ctl_status(&self, node: &RabbitNode, args: &[&str]) -> std::process::ExitStatus {
        self.env(&mut Command::new(format!("{BIN}/rabbitmqctl")), &node.base)
            .args(["-n", &node.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    }

    /// The members of quorum queue `queue`, as node `asked` sees them.
    pub fn quorum_members(&self, asked: usize, queue: &str) -> String {
        let node = &self.nodes[asked];
        let output = self
            .env(
                &mut Command::new(format!("{BIN}/rabbitmq-queues")),
                &node.base,
            )
            .args(["-n", &node.name, "quorum_status", queue])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kills node `at`'s Erlang VM (SIGKILL, no goodbye to the others).
    pub fn kill(&mut self, at: usize) {
        let node = &mut self.nodes[at];
        let pid = std::fs::read_to_string(node.base.join("pid")).unwrap();
        let killed = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill {pid}");
        node.killed = true;
        // The VM is gone once its port refuses.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} still listens",
                node.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateRabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if !node.killed {
                if let Ok(pid) = std::fs::read_to_string(node.base.join("pid")) {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A user of the machine's shared RabbitMQ, made for one test with `rabbitmqctl add_user` and
/// all permissions on the default virtual host, deleted when dropped: so that a test can
/// publish as a user of its own, as the callers of the service do (their `amqp_user`).
pub struct BrokerUser {
    /// Its name: the prefix given and a random suffix.
    pub name: String,
    password: String,
}

impl BrokerUser {
    /// Makes a user named `<prefix>-<random>`.
    pub fn create(prefix: &str) -> Self {
        let user = Self {
            name: format!(
                "{prefix}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        rabbitmqctl(&["add_user", &user.name, &user.password]);
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]);
        user
    }

    /// Makes one user of each prefix, all at once (each `rabbitmqctl` run starts a VM).
    pub fn create_all(prefixes: &[&str]) -> Vec<Self> {
        std::thread::scope(|scope| {
            let made: Vec<_> = prefixes
                .iter()
                .map(|prefix| scope.spawn(move || Self::create(prefix)))
                .collect();
            made.into_iter().map(|user| user.join().unwrap()).collect()
        })
    }

    /// The URL of the shared broker as this user.
    pub fn url(&self) -> String {
        format!("amqp://{}:{}@127.0.0.1:5672/%2f", self.name, self.password)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = Command::new(SHARED_RABBITMQCTL)
            .args(["-q", "delete_user", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The `rabbitmqctl` of the machine's broker: the system's wrapper, which runs the tool as the
/// broker's user, with its Erlang cookie (the one under `BIN` would use the caller's).
const SHARED_RABBITMQCTL: &str = "rabbitmqctl";

/// Runs `rabbitmqctl` against the machine's broker; it must succeed.
fn rabbitmqctl(args: &[&str]) {
    let output = Command::new(SHARED_RABBITMQCTL)
        .arg("-q")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {}: {}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
}
