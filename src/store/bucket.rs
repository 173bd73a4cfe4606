//! Buckets: how the store spreads users over Redis Cluster hash slots. A user's bucket is a hash
//! of the user id; every key of the user and of the user's sessions carries it as hash tag, so
//! that everything one command touches sits in one slot, and each session id starts with it, so
//! that a session is found from its id alone.

use std::fmt;

use crate::domain::{Command, SessionId, UserId};

/// Number of buckets that users are spread over.
pub const BUCKETS: u16 = 256;

/// One of the [`BUCKETS`] buckets; shown as two lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bucket(u8);

impl Bucket {
    /// The bucket of a user.
    pub fn of_user(user_id: &UserId) -> Self {
        Self::of_text(user_id.as_str())
    }

    /// The bucket of a text: a user id, or an idempotency key (whose claim is kept there).
    pub fn of_text(text: &str) -> Self {
        // FNV-1a: stable across versions and platforms, which is all a bucket needs.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Self((hash % u64::from(BUCKETS)) as u8)
    }

    /// The bucket of a session: its user's, carried in its id.
    pub fn of_session(id: &SessionId) -> Self {
        Self(id.shard())
    }

    /// The bucket of everything a command touches.
    pub fn of_command(command: &Command) -> Self {
        match command {
            Command::CreateSession(new) => Self::of_user(&new.user_id),
            Command::GetSession(id)
            | Command::UpdateSession(id, _)
            | Command::DeleteSession(id) => Self::of_session(id),
            Command::ListSessions(user_id, _) | Command::DeleteUserSessions(user_id, _) => {
                Self::of_user(user_id)
            }
        }
    }

    /// The bucket numbered `n`, if there is one.
    pub fn new(n: u16) -> Option<Self> {
        u8::try_from(n).ok().map(Self)
    }

    /// Every bucket, for work that must visit all of them.
    pub fn all() -> impl Iterator<Item = Bucket> {
        (0..BUCKETS).map(|bucket| Self(bucket as u8))
    }

    /// A new session id in this bucket.
    pub fn new_session_id(self) -> SessionId {
        SessionId::generate(self.0)
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_session_is_in_its_users_bucket() {
        let user = UserId::parse("alice".into()).unwrap();
        let bucket = Bucket::of_user(&user);
        let id = bucket.new_session_id();
        assert_eq!(Bucket::of_session(&id), bucket);
        assert!(id.as_str().starts_with(&bucket.to_string()));
    }

    #[test]
    fn buckets_are_stable_across_versions() {
        // A change here moves every stored user: keys would no longer be found.
        let user = UserId::parse("alice".into()).unwrap();
        assert_eq!(Bucket::of_user(&user).to_string(), "07");
        assert_eq!(Bucket::all().count(), 256);
    }
}
