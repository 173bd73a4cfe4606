//! Settings: read from the environment (the contract's variable names, §5), each also a CLI
//! flag, and validated once at start. A bad value is a [`ConfigError`] naming the variable.
//! Secrets (passwords in URLs, the API token) never appear in `Debug` output.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand};

use crate::{
    callers::Callers,
    keyring::Keyring,
    store::{RedisConnection, RedisMode, Replication},
    tls::{TlsFile, TlsSettings, Transport},
    transport::amqp::AmqpLink,
};

/// The command line and environment, as given (not `Debug`: it holds secrets).
#[derive(Parser)]
#[command(name = "session-manager", version, about)]
pub struct Cli {
    /// REST port.
    #[arg(long, env = "SERVICE_PORT", default_value_t = 8090)]
    pub service_port: u16,
    /// Redis (or Redis Cluster seed node) URL; when unset, built from REDIS_HOSTNAME etc.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    #[arg(long, env = "REDIS_HOSTNAME")]
    /// Redis host when REDIS_URL is unset.
    pub redis_hostname: Option<String>,
    #[arg(long, env = "REDIS_PORT")]
    /// Redis port when REDIS_URL is unset.
    pub redis_port: Option<u16>,
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    /// Redis password when REDIS_URL is unset.
    pub redis_password: Option<String>,
    #[arg(long, env = "REDIS_DB")]
    /// Redis database number when REDIS_URL is unset.
    pub redis_db: Option<u32>,
    /// `auto` (ask the server at start), `yes` (REDIS_URL is a cluster seed node) or `no`.
    #[arg(long, env = "REDIS_CLUSTER", default_value = "auto")]
    pub redis_cluster: String,
    /// After every changing command, wait until this many replicas have its write (Redis `WAIT`)
    /// before answering; 0: do not wait.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long to wait for those replicas, in milliseconds (1–2500); too few in time make the
    /// command unavailable (REST 503, retried over AMQP).
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_wait_timeout_ms: u64,
    /// PEM file of the CA certificates that a rediss:// server's certificate is verified
    /// against, instead of the system's roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) shown to a rediss:// server; with
    /// REDIS_CLIENT_KEY_FILE.
    #[arg(long, env = "REDIS_CLIENT_CERT_FILE")]
    pub redis_client_cert_file: Option<PathBuf>,
    /// PEM file of the private key of REDIS_CLIENT_CERT_FILE.
    #[arg(long, env = "REDIS_CLIENT_KEY_FILE")]
    pub redis_client_key_file: Option<PathBuf>,
    /// RabbitMQ URL, or the URLs of a cluster's nodes, comma-separated (tried round robin).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,
    /// PEM file of the CA certificates that an amqps:// server's certificate is verified
    /// against, instead of the system's roots.
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) shown to an amqps:// server; with
    /// AMQP_CLIENT_KEY_FILE.
    #[arg(long, env = "AMQP_CLIENT_CERT_FILE")]
    pub amqp_client_cert_file: Option<PathBuf>,
    /// PEM file of the private key of AMQP_CLIENT_CERT_FILE.
    #[arg(long, env = "AMQP_CLIENT_KEY_FILE")]
    pub amqp_client_key_file: Option<PathBuf>,
    /// Absolute lifetime of a session from its creation, in seconds.
    #[arg(long, env = "SESSION_EXP_SEC", default_value_t = 2_592_000)]
    pub session_exp_sec: u64,
    /// Idle timeout in seconds (0: off).
    #[arg(long, env = "SESSION_IDLE_SEC", default_value_t = 0)]
    pub session_idle_sec: u64,
    /// Most sessions per user (0: no limit).
    #[arg(long, env = "SESSION_MAX_PER_USER", default_value_t = 0)]
    pub session_max_per_user: u64,
    /// Prefix of every Redis key the service writes.
    #[arg(long, env = "SESSION_KEY_PREFIX", default_value = "session-manager")]
    pub session_key_prefix: String,
    /// Durable command queue.
    #[arg(
        long,
        env = "SESSION_COMMAND_QUEUE",
        default_value = "session.commands"
    )]
    pub session_command_queue: String,
    /// Topic exchange of SessionClosed events.
    #[arg(
        long,
        env = "SESSION_EVENTS_EXCHANGE",
        default_value = "session.events"
    )]
    pub session_events_exchange: String,
    /// When set, /a01/* requires `Authorization: Bearer <token>`; several tokens,
    /// comma-separated, are all accepted (for rotation). Each is a caller with every scope
    /// (`token-1`, `token-2`, …) and must be at least 32 characters long.
    #[arg(long, env = "SESSION_API_TOKEN", hide_env_values = true)]
    pub session_api_token: Option<String>,
    /// A JSON file of callers: their names, the SHA-256 of their REST tokens, their AMQP users
    /// and their scopes.
    #[arg(long, env = "SESSION_CALLERS_FILE")]
    pub session_callers_file: Option<PathBuf>,
    /// The address the REST front end listens on; default 127.0.0.1 when no caller is
    /// configured (protected mode), else 0.0.0.0.
    #[arg(long, env = "SERVICE_LISTEN_ADDR")]
    pub service_listen_addr: Option<IpAddr>,
    /// Prefixes of the queue names a reply may go to besides server-named queues (amq.gen-…)
    /// and Direct Reply-to; comma-separated.
    #[arg(long, env = "SESSION_REPLY_TO_PREFIXES", default_value = "")]
    pub session_reply_to_prefixes: String,
    /// How long the dead-letter queue keeps a message, in seconds.
    #[arg(long, env = "SESSION_DEAD_LETTER_TTL_SEC", default_value_t = 604_800)]
    pub session_dead_letter_ttl_sec: u64,
    /// Seals tokens and e-mail at rest: one key (32 bytes, standard base64) or a keyring
    /// `<id>:<key>,…` whose first key seals and every key opens.
    #[arg(long, env = "SESSION_ENCRYPTION_KEY", hide_env_values = true)]
    pub session_encryption_key: Option<String>,
    /// How long a command's outcome is kept under its message_id, in seconds (at least 24 h
    /// by the contract; shorter only for tests).
    #[arg(long, env = "SESSION_IDEMPOTENCY_SEC", default_value_t = 86_400)]
    pub session_idempotency_sec: u64,
    /// Commands the worker takes from the queue at once and applies concurrently.
    #[arg(long, env = "AMQP_PREFETCH", default_value_t = 64)]
    pub amqp_prefetch: u16,
    /// Ask a running instance's /healthz on localhost and exit 0 if it is healthy (for Docker).
    #[arg(long)]
    pub healthcheck: bool,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub task: Option<Task>,
}

/// A task the binary runs instead of serving.
#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Re-seal every stored token and e-mail that is plain text or sealed under a key other
    /// than the first of SESSION_ENCRYPTION_KEY, while instances serve; safe to interrupt and
    /// run again. Prints progress, then the count of values per key id, on stderr.
    Rewrap,
}

/// A setting that cannot be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The environment variable, e.g. `SESSION_EXP_SEC`.
    pub variable: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

fn invalid(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

/// A value that must not be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Validated settings of one instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// REST port; 0 lets the OS choose (tests).
    pub port: u16,
    /// The address the REST front end listens on.
    pub listen_addr: IpAddr,
    /// May carry a password, hence secret.
    pub redis_url: SecretString,
    /// Standalone, cluster, or ask the server.
    pub redis_mode: RedisMode,
    /// Replicas that must have a change before it is answered; `None`: no waiting.
    pub redis_wait: Option<Replication>,
    /// The CA and client certificates of a `rediss://` connection.
    pub redis_tls: TlsSettings,
    /// May carry a password, hence secret.
    pub amqp_url: SecretString,
    /// The CA and client certificates of an `amqps://` connection.
    pub amqp_tls: TlsSettings,
    /// Absolute lifetime of a session from its creation.
    pub session_lifetime: Duration,
    /// Idle timeout; `None` when off.
    pub idle_timeout: Option<Duration>,
    /// Most sessions per user; `None` for no limit.
    pub max_per_user: Option<u32>,
    /// How long a command's outcome is kept under its message_id.
    pub idempotency_retention: Duration,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// The durable command queue.
    pub command_queue: String,
    /// The topic exchange of the events.
    pub events_exchange: String,
    /// Who may call, and what each may do; none: protected mode, anyone may do everything.
    pub callers: Callers,
    /// Prefixes of the queue names a reply may go to, besides `amq.gen-…` and Direct Reply-to.
    pub reply_to_prefixes: Vec<String>,
    /// How long the dead-letter queue keeps a message.
    pub dead_letter_ttl: Duration,
    /// Seals the secret fields at rest; empty: stored as given. Its `Debug` shows key ids only.
    pub keyring: Keyring,
    /// Commands taken at once and applied concurrently.
    pub prefetch: u16,
}

impl Settings {
    /// Settings with the contract's defaults, for the local servers.
    pub fn local_defaults() -> Self {
        Self {
            port: 8090,
            listen_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            redis_url: SecretString::new("redis://127.0.0.1:6379/"),
            redis_mode: RedisMode::Auto,
            redis_wait: None,
            redis_tls: TlsSettings::default(),
            amqp_url: SecretString::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_tls: TlsSettings::default(),
            session_lifetime: Duration::from_secs(2_592_000),
            idle_timeout: None,
            max_per_user: None,
            idempotency_retention: Duration::from_secs(86_400),
            key_prefix: "session-manager".into(),
            command_queue: "session.commands".into(),
            events_exchange: "session.events".into(),
            callers: Callers::default(),
            reply_to_prefixes: Vec::new(),
            dead_letter_ttl: Duration::from_secs(604_800),
            keyring: Keyring::default(),
            prefetch: 64,
        }
    }
}

/// Percent-encodes a URL user-info part.
fn encode_userinfo(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The variables of one connection's TLS files.
struct TlsVariables {
    /// What an error says of a URL without TLS, e.g. "REDIS_URL is not a rediss:// URL".
    no_tls: String,
    ca: &'static str,
    certificate: &'static str,
    key: &'static str,
}

impl TlsVariables {
    fn of(&self, file: TlsFile) -> &'static str {
        match file {
            TlsFile::Ca => self.ca,
            TlsFile::ClientCertificate => self.certificate,
            TlsFile::ClientKey => self.key,
        }
    }
}

/// Reads one connection's TLS files. A file for a URL without TLS, a certificate without its
/// key (or the reverse), or a file that cannot be used is an error naming its variable.
fn tls_settings(
    variables: TlsVariables,
    transport: Transport,
    ca: Option<PathBuf>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<TlsSettings, ConfigError> {
    if transport == Transport::Plain {
        let given = [
            (ca.is_some(), variables.ca),
            (certificate.is_some(), variables.certificate),
            (key.is_some(), variables.key),
        ];
        if let Some((_, variable)) = given.into_iter().find(|(set, _)| *set) {
            return Err(invalid(
                variable,
                format!("is set, but {}", variables.no_tls),
            ));
        }
    }
    let client = match (&certificate, &key) {
        (None, None) => None,
        (Some(_), None) => {
            let message = format!("must be set with {}", variables.certificate);
            return Err(invalid(variables.key, message));
        }
        (None, Some(_)) => {
            let message = format!("must be set with {}", variables.key);
            return Err(invalid(variables.certificate, message));
        }
        (Some(certificate), Some(key)) => Some((certificate.as_path(), key.as_path())),
    };
    TlsSettings::read(ca.as_deref(), client)
        .map_err(|error| invalid(variables.of(error.file), error.problem))
}

fn non_empty_name(variable: &'static str, value: String) -> Result<String, ConfigError> {
    if value.is_empty() || value.len() > 255 {
        return Err(invalid(variable, "must be 1 to 255 bytes"));
    }
    Ok(value)
}

impl TryFrom<Cli> for Settings {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let (redis_url, redis_variable) = match cli.redis_url {
            Some(url) => (url, "REDIS_URL"),
            None => {
                let host = cli.redis_hostname.unwrap_or_else(|| "127.0.0.1".into());
                let port = cli.redis_port.unwrap_or(6379);
                let db = cli.redis_db.unwrap_or(0);
                let auth = cli
                    .redis_password
                    .map(|password| format!(":{}@", encode_userinfo(&password)))
                    .unwrap_or_default();
                (
                    format!("redis://{auth}{host}:{port}/{db}"),
                    "REDIS_HOSTNAME",
                )
            }
        };
        // The parse error is not shown: it could quote the password.
        let redis_transport =
            RedisConnection::transport(&redis_url).map_err(|why| invalid(redis_variable, why))?;
        let redis_tls = tls_settings(
            TlsVariables {
                no_tls: match redis_variable {
                    "REDIS_URL" => "REDIS_URL is not a rediss:// URL".into(),
                    _ => "REDIS_URL is unset, and the URL made of REDIS_HOSTNAME etc. is redis://"
                        .into(),
                },
                ca: "REDIS_CA_FILE",
                certificate: "REDIS_CLIENT_CERT_FILE",
                key: "REDIS_CLIENT_KEY_FILE",
            },
            redis_transport,
            cli.redis_ca_file,
            cli.redis_client_cert_file,
            cli.redis_client_key_file,
        )?;
        let redis_mode = match cli.redis_cluster.to_ascii_lowercase().as_str() {
            "auto" => RedisMode::Auto,
            "yes" | "true" | "1" => RedisMode::Cluster,
            "no" | "false" | "0" => RedisMode::Standalone,
            _ => return Err(invalid("REDIS_CLUSTER", "must be auto, yes or no")),
        };
        let amqp_transport =
            AmqpLink::transport(&cli.amqp_url).map_err(|why| invalid("AMQP_URL", why))?;
        let amqp_tls = tls_settings(
            TlsVariables {
                no_tls: "AMQP_URL is not an amqps:// URL".into(),
                ca: "AMQP_CA_FILE",
                certificate: "AMQP_CLIENT_CERT_FILE",
                key: "AMQP_CLIENT_KEY_FILE",
            },
            amqp_transport,
            cli.amqp_ca_file,
            cli.amqp_client_cert_file,
            cli.amqp_client_key_file,
        )?;
        if cli.session_exp_sec == 0 {
            return Err(invalid("SESSION_EXP_SEC", "must be at least 1"));
        }
        if cli.session_exp_sec > 10 * 365 * 24 * 60 * 60 {
            return Err(invalid("SESSION_EXP_SEC", "must be at most ten years"));
        }
        if cli.session_idle_sec > cli.session_exp_sec {
            return Err(invalid(
                "SESSION_IDLE_SEC",
                "must not be longer than SESSION_EXP_SEC (0 turns idle expiry off)",
            ));
        }
        let max_per_user = match u32::try_from(cli.session_max_per_user) {
            Ok(0) => None,
            Ok(max) => Some(max),
            Err(_) => return Err(invalid("SESSION_MAX_PER_USER", "is too large")),
        };
        let keyring = match cli.session_encryption_key {
            None => Keyring::default(),
            Some(text) => Keyring::parse(&text)
                .map_err(|error| invalid("SESSION_ENCRYPTION_KEY", error.to_string()))?,
        };
        let prefix = cli.session_key_prefix;
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(invalid(
                "SESSION_KEY_PREFIX",
                "must be non-empty and contain no { or } (they would break hash tags)",
            ));
        }
        if !(1..=2500).contains(&cli.redis_wait_timeout_ms) {
            return Err(invalid(
                "REDIS_WAIT_TIMEOUT_MS",
                "must be 1 to 2500 (below the 3 s in which Redis must answer)",
            ));
        }
        let redis_wait = (cli.redis_wait_replicas > 0).then(|| Replication {
            replicas: cli.redis_wait_replicas,
            timeout: Duration::from_millis(cli.redis_wait_timeout_ms),
        });
        if cli.session_idempotency_sec == 0 {
            return Err(invalid("SESSION_IDEMPOTENCY_SEC", "must be at least 1"));
        }
        if cli.amqp_prefetch == 0 {
            return Err(invalid("AMQP_PREFETCH", "must be at least 1"));
        }
        let api_tokens: Vec<SecretString> = match cli.session_api_token {
            None => Vec::new(),
            Some(tokens) => tokens
                .split(',')
                .map(|token| match token.trim() {
                    "" => Err(invalid(
                        "SESSION_API_TOKEN",
                        "must be one or more non-empty tokens, comma-separated",
                    )),
                    token => Ok(SecretString::new(token)),
                })
                .collect::<Result<_, _>>()?,
        };
        let mut callers = match &cli.session_callers_file {
            None => Callers::default(),
            Some(path) => {
                Callers::read(path).map_err(|why| invalid("SESSION_CALLERS_FILE", why))?
            }
        };
        callers
            .add_api_tokens(&api_tokens)
            .map_err(|why| invalid("SESSION_API_TOKEN", why))?;
        let listen_addr = cli.service_listen_addr.unwrap_or(if callers.is_empty() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        let command_queue = non_empty_name("SESSION_COMMAND_QUEUE", cli.session_command_queue)?;
        let reply_to_prefixes = cli
            .session_reply_to_prefixes
            .split(',')
            .map(str::trim)
            .filter(|prefix| !prefix.is_empty())
            .map(|prefix| {
                if prefix.starts_with("amq.") {
                    // amq.* names are the broker's; the two it has for replies are always allowed.
                    return Err(invalid(
                        "SESSION_REPLY_TO_PREFIXES",
                        "a prefix must not start with amq. (server-named queues and Direct \
                         Reply-to are always allowed)",
                    ));
                }
                if command_queue.starts_with(prefix) {
                    // Replies would be published into the command queue or the dead letters.
                    return Err(invalid(
                        "SESSION_REPLY_TO_PREFIXES",
                        "a prefix must not match the command queue or its dead-letter queue",
                    ));
                }
                Ok(prefix.to_owned())
            })
            .collect::<Result<_, _>>()?;
        if cli.session_dead_letter_ttl_sec == 0
            || cli.session_dead_letter_ttl_sec > u32::MAX as u64 / 1000
        {
            return Err(invalid(
                "SESSION_DEAD_LETTER_TTL_SEC",
                "must be 1 to 4294967 (about 49 days)",
            ));
        }
        Ok(Self {
            port: cli.service_port,
            listen_addr,
            redis_url: SecretString::new(redis_url),
            redis_mode,
            redis_wait,
            redis_tls,
            amqp_url: SecretString::new(cli.amqp_url),
            amqp_tls,
            session_lifetime: Duration::from_secs(cli.session_exp_sec),
            idle_timeout: (cli.session_idle_sec > 0)
                .then(|| Duration::from_secs(cli.session_idle_sec)),
            max_per_user,
            idempotency_retention: Duration::from_secs(cli.session_idempotency_sec),
            key_prefix: prefix,
            command_queue,
            events_exchange: non_empty_name(
                "SESSION_EVENTS_EXCHANGE",
                cli.session_events_exchange,
            )?,
            callers,
            reply_to_prefixes,
            dead_letter_ttl: Duration::from_secs(cli.session_dead_letter_ttl_sec),
            keyring,
            prefetch: cli.amqp_prefetch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["session-manager"];
        argv.extend_from_slice(args);
        Settings::try_from(Cli::try_parse_from(argv).expect("arguments parse"))
    }

    #[test]
    fn redis_url_is_built_from_parts_with_the_password_encoded() {
        let s = settings(&[
            "--redis-hostname",
            "cache",
            "--redis-port",
            "6380",
            "--redis-password",
            "p@ss word",
            "--redis-db",
            "2",
        ])
        .unwrap();
        assert_eq!(s.redis_url.expose(), "redis://:p%40ss%20word@cache:6380/2");
        assert!(!format!("{s:?}").contains("p%40ss"));
    }

    #[test]
    fn several_amqp_urls_are_accepted_and_any_amqps_one_asks_for_tls() {
        assert!(settings(&["--amqp-url", "amqp://a/%2f, amqp://b/%2f"]).is_ok());
        // A CA file is for TLS: refused with plain URLs only, accepted when one is amqps://.
        let ca = ["--amqp-ca-file", "/nonexistent/ca.pem"];
        let plain = settings(&[&["--amqp-url", "amqp://a/%2f,amqp://b/%2f"][..], &ca].concat());
        assert_eq!(plain.unwrap_err().variable, "AMQP_CA_FILE");
        assert_eq!(
            AmqpLink::transport("amqp://a/%2f,amqps://b/%2f"),
            Ok(Transport::Tls)
        );
        assert_eq!(AmqpLink::transport("amqp://a/%2f"), Ok(Transport::Plain));
    }

    #[test]
    fn several_api_tokens_are_read_and_trimmed() {
        let (old, new) = ("old-one".repeat(5), "new-one".repeat(5));
        let s = settings(&["--session-api-token", &format!("{old}, {new}")]).unwrap();
        assert_eq!(s.callers.len(), 2);
        assert_eq!(
            s.callers.by_token(new.as_bytes()).unwrap().shown(),
            "token-2"
        );
        assert!(!format!("{s:?}").contains("old-one"));
        // With callers, the REST front end listens on every interface.
        assert_eq!(s.listen_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn without_callers_the_rest_front_end_listens_on_localhost_only() {
        let s = settings(&[]).unwrap();
        assert!(s.callers.is_empty());
        assert_eq!(s.listen_addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        let s = settings(&["--service-listen-addr", "::"]).unwrap();
        assert_eq!(s.listen_addr, "::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: [(&[&str], &str); 16] = [
            (&["--session-exp-sec", "0"], "SESSION_EXP_SEC"),
            (&["--session-key-prefix", "a{b}"], "SESSION_KEY_PREFIX"),
            (&["--redis-url", "nope://x"], "REDIS_URL"),
            (&["--amqp-url", "http://x"], "AMQP_URL"),
            (&["--amqp-url", "amqp://a/%2f,http://x"], "AMQP_URL"),
            (&["--amqp-url", " , "], "AMQP_URL"),
            (&["--session-api-token", " "], "SESSION_API_TOKEN"),
            (&["--session-api-token", "a,,b"], "SESSION_API_TOKEN"),
            (&["--session-api-token", "short"], "SESSION_API_TOKEN"),
            (
                &["--session-callers-file", "/nonexistent/callers.json"],
                "SESSION_CALLERS_FILE",
            ),
            (
                &["--session-reply-to-prefixes", "replies.,amq.gen-"],
                "SESSION_REPLY_TO_PREFIXES",
            ),
            (
                &["--session-dead-letter-ttl-sec", "0"],
                "SESSION_DEAD_LETTER_TTL_SEC",
            ),
            (
                &["--session-reply-to-prefixes", "session."],
                "SESSION_REPLY_TO_PREFIXES",
            ),
            (&["--redis-cluster", "maybe"], "REDIS_CLUSTER"),
            (&["--redis-wait-timeout-ms", "0"], "REDIS_WAIT_TIMEOUT_MS"),
            (
                &["--redis-wait-timeout-ms", "3000"],
                "REDIS_WAIT_TIMEOUT_MS",
            ),
        ];
        for (args, variable) in cases {
            let error = settings(args).unwrap_err();
            assert_eq!(error.variable, variable);
            assert!(error.to_string().starts_with(variable));
        }
    }
}
