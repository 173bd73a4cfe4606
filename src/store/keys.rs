//! Every Redis key the service writes, in one place. All keys live under the configured prefix
//! and carry the bucket of their user as Redis Cluster hash tag (`{xx}`), so that everything one
//! command touches sits in one hash slot.
//!
//! # Layout
//!
//! ```text
//! <prefix>:{<bucket>}:s:<session_id>   hash: the session (fields: see `hash.rs`)
//! <prefix>:{<bucket>}:u:<user_id>      sorted set: the user's session ids by creation
//! <prefix>:{<bucket>}:r:<type>:<n>:<target>:<key>
//!                                       string: recorded outcome of a command and the digest of
//!                                       its fingerprint (its target is the session or user id,
//!                                       n its length in bytes, key its idempotency key), kept
//!                                       SESSION_IDEMPOTENCY_SEC
//! <prefix>:{<bucket>}:p:<type>:<n>:<target>:<key>, or without idempotency key
//! <prefix>:{<bucket>}:p:<uuid>          list: progress of a DeleteUserSessions that takes more
//!                                       than one step, deleted by its last step
//! <prefix>:{<bucket>}:k:<n>:<caller>:<key>
//!                                       string: the digest of the command that first used the
//!                                       idempotency key (any session or user) of that caller (n
//!                                       its name's length; empty for anyone), kept
//!                                       SESSION_IDEMPOTENCY_SEC; in the bucket of what follows k:
//! <prefix>:{<bucket>}:exp               sorted set: session ids by the moment they end
//! <prefix>:{<bucket>}:outbox            stream: SessionClosed events not yet published
//!                                       (consumer group: `outbox::GROUP`)
//! <prefix>:relay-leases                 hash: which relay visits which bucket (`lease.rs`);
//!                                       no bucket
//! <prefix>:cursor-key                   string: 32 random bytes that sign list cursors
//!                                       (`cursor.rs`), one for all instances; no bucket
//! ```

use super::Bucket;
use crate::domain::{Command, IdempotencyKey, SessionId, UserId};

/// The kind of a key, the part after its bucket. The scripts derive session and index keys with
/// the same kinds (`KIND.session`, `KIND.index` in their generated header).
pub(super) mod kind {
    pub const SESSION: &str = "s:";
    pub const INDEX: &str = "u:";
    pub const RECORD: &str = "r:";
    pub const PROGRESS: &str = "p:";
    pub const CLAIM: &str = "k:";
    pub const SCHEDULE: &str = "exp";
    pub const OUTBOX: &str = "outbox";
}

/// The keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under `prefix` (`SESSION_KEY_PREFIX`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>:{<bucket>}:`, from which the scripts derive the keys of one bucket.
    pub fn base(&self, bucket: Bucket) -> String {
        format!("{}:{{{bucket}}}:", self.prefix)
    }

    fn of_kind(&self, bucket: Bucket, kind: &str) -> String {
        self.base(bucket) + kind
    }

    /// The schedule of the moments at which the bucket's sessions end.
    pub fn schedule(&self, bucket: Bucket) -> String {
        self.of_kind(bucket, kind::SCHEDULE)
    }

    /// The bucket's outbox of events to publish.
    pub fn outbox(&self, bucket: Bucket) -> String {
        self.of_kind(bucket, kind::OUTBOX)
    }

    /// The keys of the service as a whole, which hold no user's data: the relays' leases and the
    /// key of list cursors.
    pub fn shared(&self) -> [String; 2] {
        [self.relay_leases(), self.cursor_key()]
    }

    /// The relays' bucket leases.
    pub fn relay_leases(&self) -> String {
        format!("{}:relay-leases", self.prefix)
    }

    /// The key that signs list cursors.
    pub fn cursor_key(&self) -> String {
        format!("{}:cursor-key", self.prefix)
    }

    /// A session's hash.
    pub fn session(&self, id: &SessionId) -> String {
        self.of_kind(Bucket::of_session(id), kind::SESSION) + id.as_str()
    }

    /// A user's index of sessions.
    pub fn index(&self, user_id: &UserId) -> String {
        self.of_kind(Bucket::of_user(user_id), kind::INDEX) + user_id.as_str()
    }

    /// The idempotency record of a command, by command type, target (session or user id) and
    /// key: a key used for a command about another session or user can never return that
    /// session's outcome. For a command without key, a key of the same slot that the scripts
    /// never read.
    pub fn record(&self, command: &Command, key: Option<&IdempotencyKey>) -> String {
        match key {
            Some(key) => self.of_command(kind::RECORD, command, key),
            None => self.of_kind(Bucket::of_command(command), kind::RECORD),
        }
    }

    /// The claim of an idempotency key given by `caller` (`None`: anyone): which command it
    /// belongs to, whatever that command is about. In the caller's own namespace (its name,
    /// length-prefixed), and in the bucket of that name and the key.
    pub fn claim(&self, caller: Option<&str>, key: &IdempotencyKey) -> String {
        let caller = caller.unwrap_or("");
        let name = format!("{}:{caller}:{}", caller.len(), key.as_str());
        self.of_kind(Bucket::of_text(&name), kind::CLAIM) + &name
    }

    /// Where a DeleteUserSessions keeps its progress between steps: under its command type,
    /// target and message id like its record, so that a redelivery resumes it; without message
    /// id, under a key of its own.
    pub fn progress(&self, command: &Command, key: Option<&IdempotencyKey>) -> String {
        match key {
            Some(key) => self.of_command(kind::PROGRESS, command, key),
            None => {
                self.of_kind(Bucket::of_command(command), kind::PROGRESS)
                    + &uuid::Uuid::new_v4().to_string()
            }
        }
    }

    /// `<kind><type>:<n>:<target>:<key>` in the command's bucket.
    fn of_command(&self, kind: &str, command: &Command, key: &IdempotencyKey) -> String {
        let target = command.target();
        format!(
            "{}{}:{}:{target}:{}",
            self.of_kind(Bucket::of_command(command), kind),
            command.name(),
            target.len(),
            key.as_str()
        )
    }
}

/// What a key under the prefix holds, as far as its name tells (for `rewrap`, and for tests
/// that check what is left).
#[derive(Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// The hash of this session.
    Session(SessionId),
    /// The recorded outcome of a command with a `message_id`; for an UpdateSession, the id of
    /// its session (the record holds the session's fields).
    Record {
        /// The session of a recorded UpdateSession.
        update_of: Option<SessionId>,
        /// Whether it records a read (`GetSession`, `ListSessions`), which only versions
        /// before reads went unrecorded wrote.
        read: bool,
    },
    /// The claim of an idempotency key (the digest of the command it belongs to).
    Claim,
    /// Anything else: an index, a schedule, an outbox, a progress list. None holds a secret.
    Other,
}

impl Keys {
    /// `SCAN`'s pattern of every key under the prefix, the prefix's glob characters escaped.
    pub(super) fn pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 2);
        for c in self.prefix.chars() {
            if matches!(c, '\\' | '*' | '?' | '[' | ']') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern + ":*"
    }

    /// What the key named `key` holds.
    pub fn kind_of(&self, key: &str) -> KeyKind {
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(":{"))
            .and_then(|rest| rest.split_once("}:"))
            .map(|(_bucket, rest)| rest);
        let Some(rest) = rest else {
            return KeyKind::Other;
        };
        if let Some(id) = rest.strip_prefix(kind::SESSION) {
            return SessionId::parse(id).map_or(KeyKind::Other, KeyKind::Session);
        }
        if rest.starts_with(kind::CLAIM) {
            return KeyKind::Claim;
        }
        let Some(record) = rest.strip_prefix(kind::RECORD) else {
            return KeyKind::Other;
        };
        let read = READS.iter().any(|name| {
            record
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(':'))
        });
        // `r:UpdateSession:<n>:<session id>:<message id>`, as `of_command` writes it.
        let update_of = record
            .strip_prefix(UPDATE_SESSION)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(length, rest)| rest.get(..length.parse::<usize>().ok()?))
            .and_then(SessionId::parse);
        KeyKind::Record { update_of, read }
    }
}

/// The type of UpdateSession commands, in their record keys.
const UPDATE_SESSION: &str = "UpdateSession";
/// The types of the reads, in the record keys that versions before 7.4 wrote.
const READS: [&str; 2] = ["GetSession", "ListSessions"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_and_its_sessions_keys_share_the_hash_tag() {
        let keys = Keys::new("p");
        let user = UserId::parse("alice".into()).unwrap();
        let bucket = Bucket::of_user(&user);
        let session = bucket.new_session_id();
        let tag = format!("{{{bucket}}}");
        assert!(keys.index(&user).starts_with(&format!("p:{tag}:u:")));
        assert!(keys.session(&session).starts_with(&format!("p:{tag}:s:")));
        let message_id = IdempotencyKey::from_message_id("m-1").unwrap();
        let delete = Command::DeleteSession(session.clone());
        assert_eq!(
            keys.record(&delete, Some(&message_id)),
            format!("p:{tag}:r:DeleteSession:45:{}:m-1", session.as_str())
        );
        let claim = keys.claim(Some("bff"), &message_id);
        assert_eq!(
            claim,
            format!("p:{{{}}}:k:3:bff:m-1", Bucket::of_text("3:bff:m-1"))
        );
        assert_ne!(keys.claim(None, &message_id), claim);
        assert_eq!(keys.kind_of(&claim), KeyKind::Claim);
    }

    #[test]
    fn kind_of_reads_back_sessions_and_update_records() {
        let keys = Keys::new("p");
        let session = Bucket::of_user(&UserId::parse("bob".into()).unwrap()).new_session_id();
        let message_id = IdempotencyKey::from_message_id("m:1").unwrap();
        let update = Command::parse(
            format!(
                r#"{{"type":"UpdateSession","session_id":"{}","auth_code":"c"}}"#,
                session.as_str()
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(update.name(), UPDATE_SESSION);
        assert_eq!(
            keys.kind_of(&keys.session(&session)),
            KeyKind::Session(session.clone())
        );
        assert_eq!(
            keys.kind_of(&keys.record(&update, Some(&message_id))),
            KeyKind::Record {
                update_of: Some(session.clone()),
                read: false
            }
        );
        let get = Command::GetSession(session.clone());
        assert_eq!(get.name(), READS[0]);
        assert_eq!(
            keys.kind_of(&keys.record(&get, Some(&message_id))),
            KeyKind::Record {
                update_of: None,
                read: true
            }
        );
        let delete = Command::DeleteSession(session.clone());
        assert_eq!(
            keys.kind_of(&keys.record(&delete, Some(&message_id))),
            KeyKind::Record {
                update_of: None,
                read: false
            }
        );
        for other in [
            keys.schedule(Bucket::of_session(&session)),
            Keys::new("q").session(&session),
        ] {
            assert_eq!(keys.kind_of(&other), KeyKind::Other, "{other}");
        }
    }
}
