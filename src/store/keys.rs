//! Every Redis key the service writes, in one place. All keys live under the configured prefix
//! and carry the bucket of their user as Redis Cluster hash tag (`{xx}`), so that everything one
//! command touches sits in one hash slot.
//!
//! # Layout
//!
//! ```text
//! <prefix>:{<bucket>}:s:<session_id>   hash: the session (fields u d ac at rt et em c m x)
//! <prefix>:{<bucket>}:u:<user_id>      sorted set: the user's session ids by creation
//! <prefix>:{<bucket>}:r:<type>:<n>:<target>:<message_id>
//!                                       string: recorded outcome of a command (its target is
//!                                       the session or user id, n its length in bytes), kept
//!                                       SESSION_IDEMPOTENCY_SEC
//! <prefix>:{<bucket>}:p:<type>:<n>:<target>:<message_id>, or without message id
//! <prefix>:{<bucket>}:p:<uuid>          list: progress of a DeleteUserSessions that takes more
//!                                       than one step, deleted by its last step
//! <prefix>:{<bucket>}:exp               sorted set: session ids by the moment they end
//! <prefix>:{<bucket>}:outbox            stream: SessionClosed events not yet published
//!                                       (consumer group `relay`)
//! ```

use crate::domain::{Bucket, Command, MessageId, SessionId, UserId};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn in_bucket(&self, bucket: Bucket, kind: &str) -> String {
        format!("{}{kind}:", self.base(bucket))
    }

    /// `<prefix>:{<bucket>}:`, from which the scripts build the keys of one bucket.
    pub fn base(&self, bucket: Bucket) -> String {
        format!("{}:{{{bucket}}}:", self.prefix)
    }

    /// The schedule of the moments at which the bucket's sessions end.
    pub fn schedule(&self, bucket: Bucket) -> String {
        self.base(bucket) + "exp"
    }

    /// The bucket's outbox of events to publish.
    pub fn outbox(&self, bucket: Bucket) -> String {
        self.base(bucket) + "outbox"
    }

    pub fn session(&self, id: &SessionId) -> String {
        self.in_bucket(id.bucket(), "s") + id.as_str()
    }

    pub fn index(&self, user_id: &UserId) -> String {
        self.in_bucket(user_id.bucket(), "u") + user_id.as_str()
    }

    /// The idempotency record of a command, by command type, target (session or user id) and
    /// message id: an id reused for another command is another command, and can never return
    /// another session's outcome. For a command without message id, a key of the same slot
    /// that the scripts never read.
    pub fn record(&self, command: &Command, message_id: Option<&MessageId>) -> String {
        match message_id {
            Some(id) => self.of_command("r", command, id),
            None => self.in_bucket(command.bucket(), "r"),
        }
    }

    /// Where a DeleteUserSessions keeps its progress between steps: under its command type,
    /// target and message id like its record, so that a redelivery resumes it; without message
    /// id, under a key of its own.
    pub fn progress(&self, command: &Command, message_id: Option<&MessageId>) -> String {
        match message_id {
            Some(id) => self.of_command("p", command, id),
            None => self.in_bucket(command.bucket(), "p") + &uuid::Uuid::new_v4().to_string(),
        }
    }

    /// `<kind>:<type>:<n>:<target>:<message_id>` in the command's bucket.
    fn of_command(&self, kind: &str, command: &Command, message_id: &MessageId) -> String {
        let target = command.target();
        format!(
            "{}{}:{}:{target}:{}",
            self.in_bucket(command.bucket(), kind),
            command.name(),
            target.len(),
            message_id.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_and_its_sessions_keys_share_the_hash_tag() {
        let keys = Keys::new("p");
        let user = UserId::parse("alice".into()).unwrap();
        let session = SessionId::generate(&user);
        let tag = format!("{{{}}}", user.bucket());
        assert!(keys.index(&user).starts_with(&format!("p:{tag}:u:")));
        assert!(keys.session(&session).starts_with(&format!("p:{tag}:s:")));
        let message_id = MessageId::parse("m-1").unwrap();
        let delete = Command::DeleteSession(session.clone());
        assert_eq!(
            keys.record(&delete, Some(&message_id)),
            format!("p:{tag}:r:DeleteSession:45:{}:m-1", session.as_str())
        );
    }
}
