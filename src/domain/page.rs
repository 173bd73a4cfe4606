//! Pages of a user's session list (contract §7.5): how many to answer (`limit`) and where the
//! previous page ended (`after`, an opaque cursor the service issued). A cursor holds the
//! position of the last session answered (its place in the user's creation order) and a tag
//! that the store makes and checks with a key of its own, over the user and the position
//! (`store::cursor`): so a cursor the service did not issue, or one issued for another user, is
//! refused rather than quietly paging from wherever it says. Here a cursor is only read.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use super::Error;

/// The most sessions one page holds, and the default.
pub const MAX_LIMIT: u32 = 1000;
/// The cursor format's version, its first byte.
const VERSION: u8 = 2;
/// The bytes of a cursor's tag.
pub const TAG_BYTES: usize = 16;
const CURSOR_BYTES: usize = 1 + 8 + TAG_BYTES;

/// Which page of a user's list to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPage {
    /// At most this many sessions (1–[`MAX_LIMIT`]).
    pub limit: u32,
    /// After the position of this cursor; from the oldest when `None`.
    pub after: Option<Cursor>,
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

/// A cursor as given: a position and the tag that should vouch for it, not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Where the previous page ended.
    pub position: Position,
    /// The store's tag over the user and the position.
    pub tag: [u8; TAG_BYTES],
}

impl Cursor {
    /// The cursor's text.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(CURSOR_BYTES);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.position.0.to_be_bytes());
        bytes.extend_from_slice(&self.tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn decode(text: &str) -> Result<Self, Error> {
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| Self::refused())?;
        if bytes.len() != CURSOR_BYTES || bytes[0] != VERSION {
            return Err(Self::refused());
        }
        let position: [u8; 8] = bytes[1..9].try_into().expect("the length was checked");
        Ok(Self {
            position: Position(i64::from_be_bytes(position)),
            tag: bytes[9..].try_into().expect("the length was checked"),
        })
    }

    /// The answer to a cursor the service did not issue for this user.
    pub fn refused() -> Error {
        Error::InvalidArgument("after: is not a cursor of this user's list".into())
    }
}

impl ListPage {
    /// The page that `limit` and `after` (as given, if given) name; the store checks the
    /// cursor's tag against the user.
    pub fn parse(limit: Option<u64>, after: Option<&str>) -> Result<Self, Error> {
        let limit = match limit {
            None => MAX_LIMIT,
            Some(limit) => u32::try_from(limit)
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("limit: must be from 1 to {MAX_LIMIT}"))
                })?,
        };
        let after = after.map(Cursor::decode).transpose()?;
        Ok(Self { limit, after })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_cursor_reads_back_and_text_that_is_none_is_named() {
        let issued = Cursor {
            position: Position(1_733_300_000_000_123),
            tag: [7; TAG_BYTES],
        };
        let page = ListPage::parse(Some(10), Some(&issued.encode())).unwrap();
        assert_eq!(page.after, Some(issued));
        assert_eq!(page.limit, 10);
        for text in ["nope", "", "AQ"] {
            let error = ListPage::parse(None, Some(text)).unwrap_err();
            assert!(error.to_string().starts_with("after: "), "{error}");
        }
    }

    #[test]
    fn limit_is_one_to_a_thousand_and_defaults_to_the_most() {
        assert_eq!(ListPage::parse(None, None).unwrap().limit, MAX_LIMIT);
        for bad in [0, 1001, u64::MAX] {
            let error = ListPage::parse(Some(bad), None).unwrap_err();
            assert!(error.to_string().starts_with("limit: "), "{error}");
        }
    }

    proptest! {
        /// Any text as a cursor: a cursor or a refusal naming `after`, never a panic.
        #[test]
        fn any_cursor_text_is_a_cursor_or_named(text in ".{0,40}") {
            if let Err(error) = ListPage::parse(None, Some(&text)) {
                prop_assert!(error.to_string().starts_with("after: "));
            }
        }

        /// Every cursor round-trips through its text.
        #[test]
        fn cursors_round_trip(position in any::<i64>(), tag in any::<[u8; TAG_BYTES]>()) {
            let issued = Cursor { position: Position(position), tag };
            let page = ListPage::parse(None, Some(&issued.encode())).unwrap();
            prop_assert_eq!(page.after, Some(issued));
        }
    }
}
