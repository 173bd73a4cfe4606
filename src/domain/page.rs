//! Pages of a user's session list (contract §7.5): how many to answer (`limit`) and where the
//! previous page ended (`after`, an opaque cursor the service issued). A cursor holds the
//! position of the last session answered (its place in the user's creation order) and a
//! fingerprint of the user, so that a cursor of one user's list given with another user is
//! refused rather than quietly paging through the other list.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use super::{Error, UserId};

/// The most sessions one page holds, and the default.
pub const MAX_LIMIT: u32 = 1000;
/// The cursor format's version, its first byte.
const VERSION: u8 = 1;
const FINGERPRINT_BYTES: usize = 8;
const CURSOR_BYTES: usize = 1 + FINGERPRINT_BYTES + 8;

/// Which page of a user's list to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPage {
    /// At most this many sessions (1–[`MAX_LIMIT`]).
    pub limit: u32,
    /// After this position in the user's creation order; from the oldest when `None`.
    pub after: Option<Position>,
}

impl Default for ListPage {
    fn default() -> Self {
        Self {
            limit: MAX_LIMIT,
            after: None,
        }
    }
}

/// A place in a user's creation order (the store's index score).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(pub i64);

impl ListPage {
    /// The page of `user_id`'s list that `limit` and `after` (as given, if given) name.
    pub fn parse(user_id: &UserId, limit: Option<u64>, after: Option<&str>) -> Result<Self, Error> {
        let limit = match limit {
            None => MAX_LIMIT,
            Some(limit) => u32::try_from(limit)
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("limit: must be from 1 to {MAX_LIMIT}"))
                })?,
        };
        let after = after
            .map(|cursor| Self::position(user_id, cursor))
            .transpose()?;
        Ok(Self { limit, after })
    }

    fn position(user_id: &UserId, cursor: &str) -> Result<Position, Error> {
        let refused =
            || Error::InvalidArgument("after: is not a cursor of this user's list".into());
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| refused())?;
        if bytes.len() != CURSOR_BYTES || bytes[0] != VERSION {
            return Err(refused());
        }
        if bytes[1..1 + FINGERPRINT_BYTES] != fingerprint(user_id) {
            return Err(refused());
        }
        let position: [u8; 8] = bytes[1 + FINGERPRINT_BYTES..]
            .try_into()
            .expect("the length was checked");
        Ok(Position(i64::from_be_bytes(position)))
    }
}

/// The cursor of the page after the one that ended at `position` in `user_id`'s list.
pub fn cursor(user_id: &UserId, position: Position) -> String {
    let mut bytes = Vec::with_capacity(CURSOR_BYTES);
    bytes.push(VERSION);
    bytes.extend_from_slice(&fingerprint(user_id));
    bytes.extend_from_slice(&position.0.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A stable fingerprint of a user id (a name-based UUID's first bytes): not secret, it only
/// tells one user's cursors from another's.
fn fingerprint(user_id: &UserId) -> [u8; FINGERPRINT_BYTES] {
    let uuid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, user_id.as_str().as_bytes());
    uuid.as_bytes()[..FINGERPRINT_BYTES]
        .try_into()
        .expect("a UUID has 16 bytes")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name.into()).unwrap()
    }

    #[test]
    fn a_cursor_reads_back_for_its_user_only() {
        let alice = user("alice");
        let next = cursor(&alice, Position(1_733_300_000_000_123));
        let page = ListPage::parse(&alice, Some(10), Some(&next)).unwrap();
        assert_eq!(page.after, Some(Position(1_733_300_000_000_123)));
        assert_eq!(page.limit, 10);
        for (who, text) in [
            (&user("bob"), next.as_str()),
            (&alice, "nope"),
            (&alice, ""),
        ] {
            let error = ListPage::parse(who, None, Some(text)).unwrap_err();
            assert!(error.to_string().starts_with("after: "), "{error}");
        }
    }

    #[test]
    fn limit_is_one_to_a_thousand_and_defaults_to_the_most() {
        let alice = user("alice");
        assert_eq!(
            ListPage::parse(&alice, None, None).unwrap().limit,
            MAX_LIMIT
        );
        for bad in [0, 1001, u64::MAX] {
            let error = ListPage::parse(&alice, Some(bad), None).unwrap_err();
            assert!(error.to_string().starts_with("limit: "), "{error}");
        }
    }

    proptest! {
        /// Any text as a cursor: a position or a refusal naming `after`, never a panic.
        #[test]
        fn any_cursor_text_is_a_position_or_named(text in ".{0,40}") {
            if let Err(error) = ListPage::parse(&user("u"), None, Some(&text)) {
                prop_assert!(error.to_string().starts_with("after: "));
            }
        }

        /// Every position round-trips through its cursor.
        #[test]
        fn positions_round_trip(position in any::<i64>(), name in "[a-z]{1,20}") {
            let who = user(&name);
            let page = ListPage::parse(&who, None, Some(&cursor(&who, Position(position)))).unwrap();
            prop_assert_eq!(page.after, Some(Position(position)));
        }
    }
}
