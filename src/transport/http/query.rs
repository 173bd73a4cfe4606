//! The query string of a REST request, read strictly (contract §7.7): every parameter must be
//! one the route knows, none may be given twice, and names and values must be percent-encoded
//! UTF-8. A server that ignored an unknown parameter would, for example, close every session of
//! a user on `DELETE /a01/session?user_id=U&except=S` when it does not know `except`.

use std::collections::HashMap;

use crate::domain::{shown_name, Error, ListPage, SessionId, UserId, MAX_LIMIT};

/// The parameters of `GET /a01/session`.
const LIST: &[&str] = &["user_id", "limit", "after"];
/// The parameters of `DELETE /a01/session`.
const DELETE_ALL: &[&str] = &["user_id", "except"];

/// The decoded parameters of one query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query(HashMap<&'static str, String>);

impl Query {
    /// Reads `query` (without the `?`), which may hold only parameters named in `known`.
    pub fn parse(query: &str, known: &[&'static str]) -> Result<Self, Error> {
        let mut params = HashMap::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = form_decode(name).ok_or_else(|| {
                Error::InvalidArgument("query: must be percent-encoded UTF-8".into())
            })?;
            let Some(known) = known.iter().copied().find(|known| *known == name) else {
                return Err(Error::InvalidArgument(format!(
                    "{}: unknown query parameter",
                    shown_name(&name)
                )));
            };
            let value = form_decode(value).ok_or_else(|| {
                Error::InvalidArgument(format!("{known}: must be percent-encoded UTF-8"))
            })?;
            if params.insert(known, value).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{known}: query parameter given more than once"
                )));
            }
        }
        Ok(Self(params))
    }

    /// The query of `GET /a01/session`: the user and the page.
    pub fn list(query: &str) -> Result<(UserId, ListPage), Error> {
        let mut query = Self::parse(query, LIST)?;
        let user_id = query.user_id()?;
        let limit = query
            .0
            .remove("limit")
            .map(|limit| {
                limit.parse::<u64>().map_err(|_| {
                    Error::InvalidArgument(format!("limit: must be from 1 to {MAX_LIMIT}"))
                })
            })
            .transpose()?;
        let page = ListPage::parse(limit, query.0.get("after").map(String::as_str))?;
        Ok((user_id, page))
    }

    /// The query of `DELETE /a01/session`: the user and the session to keep, if any.
    pub fn delete_all(query: &str) -> Result<(UserId, Option<SessionId>), Error> {
        let mut query = Self::parse(query, DELETE_ALL)?;
        let user_id = query.user_id()?;
        let except = query
            .0
            .remove("except")
            .map(|id| SessionId::parse_existing(&id))
            .transpose()?;
        Ok((user_id, except))
    }

    /// The `user_id` parameter, which must be given.
    fn user_id(&mut self) -> Result<UserId, Error> {
        let user_id = self
            .0
            .remove("user_id")
            .ok_or_else(|| Error::InvalidArgument("user_id: query parameter is required".into()))?;
        UserId::parse(user_id)
    }
}

/// Decodes one `application/x-www-form-urlencoded` component strictly: `None` when the bytes
/// are not UTF-8 (a lossy decoding would silently name another user).
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |offset: usize| {
            bytes
                .get(at + offset)
                .and_then(|b| (*b as char).to_digit(16))
        };
        match (bytes[at], hex(1), hex(2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                at += 3;
            }
            (b'+', _, _) => {
                decoded.push(b' ');
                at += 1;
            }
            (byte, _, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn form_components_decode_strictly() {
        assert_eq!(form_decode("a+b%20c%C3%BC").as_deref(), Some("a b cü"));
        assert_eq!(form_decode("100%").as_deref(), Some("100%"));
        assert_eq!(form_decode("%4"), Some("%4".into()));
        assert_eq!(form_decode("%FF"), None);
    }

    fn invalid(query: &str) -> String {
        match Query::list(query) {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn unknown_repeated_and_missing_parameters_are_named() {
        assert!(invalid("user_id=u&except=s").starts_with("except: unknown query parameter"));
        assert!(invalid("user_id=u&limit=0").starts_with("limit: "));
        assert!(invalid("user_id=u&limit=ten").starts_with("limit: "));
        assert!(invalid("user_id=u&after=zz").starts_with("after: "));
        assert!(matches!(
            Query::delete_all("user_id=u&limit=1"),
            Err(Error::InvalidArgument(message)) if message.starts_with("limit: unknown")
        ));
        assert!(invalid("user_id=a&user_id=b").starts_with("user_id: query parameter given more"));
        assert!(invalid("").starts_with("user_id: query parameter is required"));
        assert!(invalid("user_id=%FF").starts_with("user_id: must be percent-encoded"));
        assert!(invalid("%FF=1").starts_with("query: must be percent-encoded"));
        let long = "x".repeat(300);
        assert!(invalid(&format!("{long}=1")).len() < 120);
        assert!(matches!(
            Query::parse("x=1", &[]),
            Err(Error::InvalidArgument(message)) if message.starts_with("x: unknown")
        ));
        assert_eq!(Query::parse("&&", &[]).unwrap(), Query::default());
    }

    /// Percent-encodes every byte that is not unreserved.
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (byte as char).to_string()
                }
                _ => format!("%{byte:02X}"),
            })
            .collect()
    }

    proptest! {
        /// Any query string: no panic, and an error names a parameter (or the query).
        #[test]
        fn any_query_is_answered_with_a_user_or_a_named_error(query in ".{0,200}") {
            match Query::list(&query) {
                Ok(_) => {}
                Err(Error::InvalidArgument(message)) => prop_assert!(
                    message.contains(": "),
                    "{message}"
                ),
                Err(other) => prop_assert!(false, "{query}: {other:?}"),
            }
        }

        /// A valid user id, encoded, reads back as itself.
        #[test]
        fn a_valid_user_id_round_trips(user_id in "[^\\p{Cc}]{1,64}") {
            let (parsed, page) = Query::list(&format!("user_id={}&limit=7", encode(&user_id))).unwrap();
            prop_assert_eq!(parsed.as_str(), user_id.as_str());
            prop_assert_eq!(page.limit, 7);
        }
    }
}
