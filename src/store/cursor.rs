//! The key that signs list cursors: 32 random bytes kept in Redis (`<prefix>:cursor-key`), made
//! by the first instance that needs it (`SET … NX`) and read by every other, so that a cursor
//! issued by one instance is good at all of them. A cursor's tag is HMAC-SHA256 over the user
//! and the position, cut to 16 bytes: a cursor the service did not issue, or issued for another
//! user, is refused (contract §7.5).

use ring::hmac;

use super::{Store, StoreError};
use crate::domain::{Cursor, Position, UserId, TAG_BYTES};

/// Signs and checks cursors.
pub(super) struct CursorKey(hmac::Key);

impl CursorKey {
    fn tag(&self, user_id: &UserId, position: Position) -> [u8; TAG_BYTES] {
        let mut signed = Vec::with_capacity(8 + user_id.as_str().len());
        signed.extend_from_slice(&position.0.to_be_bytes());
        signed.extend_from_slice(user_id.as_str().as_bytes());
        hmac::sign(&self.0, &signed).as_ref()[..TAG_BYTES]
            .try_into()
            .expect("HMAC-SHA256 has 32 bytes")
    }

    /// The cursor of the page after `position` in `user_id`'s list.
    pub fn issue(&self, user_id: &UserId, position: Position) -> String {
        Cursor {
            position,
            tag: self.tag(user_id, position),
        }
        .encode()
    }

    /// The position of `cursor`, if the service issued it for `user_id`.
    pub fn check(&self, user_id: &UserId, cursor: &Cursor) -> Option<Position> {
        let expected = self.tag(user_id, cursor.position);
        // Compared without returning early, so that the time taken does not tell how much of a
        // forged tag is right.
        let difference = expected
            .iter()
            .zip(&cursor.tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (difference == 0).then_some(cursor.position)
    }
}

impl Store {
    /// The cursor key, read from Redis (and made there first if no instance has) once.
    pub(super) async fn cursor_key(&self) -> Result<&CursorKey, StoreError> {
        self.cursor_key
            .get_or_try_init(|| async {
                let key = self.keys.cursor_key();
                let fresh: [u8; 32] = rand::random();
                let mut connection = self.connection.clone();
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh[..])
                    .arg("NX")
                    .query_async::<()>(&mut connection)
                    .await?;
                let stored: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await?;
                if stored.len() != fresh.len() {
                    return Err(StoreError::Corrupt(format!(
                        "{key} holds {} bytes, not 32",
                        stored.len()
                    )));
                }
                Ok(CursorKey(hmac::Key::new(hmac::HMAC_SHA256, &stored)))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_good_for_its_user_and_key_only() {
        let key = CursorKey(hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]));
        let other_key = CursorKey(hmac::Key::new(hmac::HMAC_SHA256, &[2; 32]));
        let alice = UserId::parse("alice".into()).unwrap();
        let bob = UserId::parse("bob".into()).unwrap();
        let text = key.issue(&alice, Position(42));
        let page = crate::domain::ListPage::parse(None, Some(&text)).unwrap();
        let cursor = page.after.unwrap();
        assert_eq!(key.check(&alice, &cursor), Some(Position(42)));
        assert_eq!(key.check(&bob, &cursor), None);
        assert_eq!(other_key.check(&alice, &cursor), None);
        let moved = Cursor {
            position: Position(41),
            ..cursor
        };
        assert_eq!(key.check(&alice, &moved), None);
    }
}
