//! The configured callers (contract §8.1): read from `SESSION_CALLERS_FILE` and
//! `SESSION_API_TOKEN`, and found by a REST bearer token or by the AMQP user that RabbitMQ
//! vouches for (the message's `user_id`). The file holds SHA-256 digests of the tokens, never
//! a token; a token given is hashed and compared, in constant time, with every caller's digest.
//! What a caller may do is the domain's [`Caller`]; this module only knows who is who.
//!
//! # Format
//!
//! ```text
//! {"callers": [{"name": "bff", "token_sha256": "<64 hex digits>", "amqp_user": "bff",
//!               "scopes": ["sessions:read", "secrets:read", "sessions:create"]}]}
//! ```

use std::{collections::HashMap, fmt, path::Path};

use ring::digest::{digest, SHA256};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::{
    config::SecretString,
    domain::{Caller, CallerName, Scopes},
};

/// The shortest API token `SESSION_API_TOKEN` accepts.
pub const MIN_API_TOKEN_CHARS: usize = 32;

/// One configured caller and how it is recognised.
#[derive(Clone)]
struct Entry {
    caller: Caller,
    token_sha256: Option<[u8; 32]>,
}

/// The callers of one instance; none configured is protected mode (every request comes from
/// [`Caller::anyone`]).
#[derive(Clone, Default)]
pub struct Callers {
    entries: Vec<Entry>,
    by_amqp_user: HashMap<String, usize>,
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names and scopes only: the digests are not secret, but nothing needs them in a log.
        f.debug_list()
            .entries(self.entries.iter().map(|entry| &entry.caller))
            .finish()
    }
}

/// An entry of the callers file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    amqp_user: Option<String>,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    callers: Vec<serde_json::Value>,
}

impl Callers {
    /// Whether no caller is configured (protected mode).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some caller publishes over AMQP (has an `amqp_user`).
    pub fn has_amqp_users(&self) -> bool {
        !self.by_amqp_user.is_empty()
    }

    /// How many callers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Reads the callers file at `path`; the error names the entry that is wrong.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Self::from_json(&text)
    }

    /// Parses the text of a callers file; the error names the entry that is wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        // Strictly: a member given twice in an entry (two `scopes`, say) is refused, not won by
        // one of them.
        let file = crate::domain::strict_json(text.as_bytes())
            .map_err(|error| format!("is not a callers file: {error}"))?;
        let file: File = serde_json::from_value(file)
            .map_err(|error| format!("is not a callers file: {error}"))?;
        let mut callers = Self::default();
        for (at, entry) in file.callers.into_iter().enumerate() {
            // Named by its position, and by its name when it has one that is a string.
            let name = entry.get("name").and_then(serde_json::Value::as_str);
            let named = match name {
                Some(name) => format!("callers[{at}] {}", crate::domain::shown_name(name)),
                None => format!("callers[{at}]"),
            };
            let entry: FileEntry =
                serde_json::from_value(entry).map_err(|error| format!("{named}: {error}"))?;
            callers
                .add_entry(entry)
                .map_err(|why| format!("{named}: {why}"))?;
        }
        Ok(callers)
    }

    fn add_entry(&mut self, entry: FileEntry) -> Result<(), String> {
        let name = CallerName::parse(&entry.name).map_err(|why| format!("name: {why}"))?;
        let scopes = Scopes::parse(entry.scopes.iter().map(String::as_str))
            .map_err(|why| format!("scopes: {why}"))?;
        let token_sha256 = entry
            .token_sha256
            .as_deref()
            .map(parse_digest)
            .transpose()
            .map_err(|why| format!("token_sha256: {why}"))?;
        if token_sha256.is_none() && entry.amqp_user.is_none() {
            return Err(
                "needs token_sha256, amqp_user or both (else no one is this caller)".into(),
            );
        }
        if let Some(user) = &entry.amqp_user {
            if user.is_empty() || user.len() > 255 {
                return Err("amqp_user: must be 1 to 255 bytes".into());
            }
        }
        self.push(Caller::new(name, scopes), token_sha256, entry.amqp_user)
    }

    fn push(
        &mut self,
        caller: Caller,
        token_sha256: Option<[u8; 32]>,
        amqp_user: Option<String>,
    ) -> Result<(), String> {
        if self
            .entries
            .iter()
            .any(|entry| entry.caller.name() == caller.name())
        {
            return Err("name: another caller has this name".into());
        }
        if let Some(digest) = &token_sha256 {
            if self.entries.iter().any(|e| e.token_sha256 == Some(*digest)) {
                return Err("token_sha256: another caller has this token".into());
            }
        }
        if let Some(user) = amqp_user {
            if self.by_amqp_user.contains_key(&user) {
                return Err("amqp_user: another caller has this AMQP user".into());
            }
            self.by_amqp_user.insert(user, self.entries.len());
        }
        self.entries.push(Entry {
            caller,
            token_sha256,
        });
        Ok(())
    }

    /// Adds each of `tokens` (`SESSION_API_TOKEN`) as a caller with every scope, named
    /// `token-1`, `token-2`, …; a token shorter than [`MIN_API_TOKEN_CHARS`] is refused.
    pub fn add_api_tokens(&mut self, tokens: &[SecretString]) -> Result<(), String> {
        for (at, token) in tokens.iter().enumerate() {
            let name = format!("token-{}", at + 1);
            if token.expose().chars().count() < MIN_API_TOKEN_CHARS {
                return Err(format!(
                    "{name} is shorter than {MIN_API_TOKEN_CHARS} characters"
                ));
            }
            let caller = Caller::new(
                CallerName::parse(&name).expect("token-<n> is a valid name"),
                Scopes::all(),
            );
            self.push(caller, Some(sha256(token.expose().as_bytes())), None)
                .map_err(|why| format!("{name}: {why}"))?;
        }
        Ok(())
    }

    /// The callers of `tokens` alone, as `SESSION_API_TOKEN` gives them.
    pub fn of_api_tokens(tokens: &[SecretString]) -> Result<Self, String> {
        let mut callers = Self::default();
        callers.add_api_tokens(tokens)?;
        Ok(callers)
    }

    /// The caller whose token this is. The token's digest is compared with every caller's,
    /// each in constant time and none skipped, so the time taken tells nothing of how near a
    /// guess came.
    pub fn by_token(&self, token: &[u8]) -> Option<&Caller> {
        let given = sha256(token);
        let mut found = None;
        for entry in &self.entries {
            let Some(digest) = &entry.token_sha256 else {
                continue;
            };
            if bool::from(digest.ct_eq(&given)) {
                found = Some(&entry.caller);
            }
        }
        found
    }

    /// The caller that publishes as the AMQP user `user` (the message's validated `user_id`).
    pub fn by_amqp_user(&self, user: &str) -> Option<&Caller> {
        self.by_amqp_user
            .get(user)
            .map(|&at| &self.entries[at].caller)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// 64 hex digits (either case) as the 32 bytes they spell.
fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let wrong = || "must be 64 hex digits (the SHA-256 of the token)".to_string();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(wrong());
    }
    let mut digest = [0u8; 32];
    for (at, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * at..2 * at + 2], 16).map_err(|_| wrong())?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Scope;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    const TOKEN: &str = "a-token-of-the-bff-that-is-long-enough";

    fn file() -> String {
        format!(
            r#"{{"callers": [
                {{"name": "bff", "token_sha256": "{}", "amqp_user": "bff-user",
                  "scopes": ["sessions:read", "secrets:read"]}},
                {{"name": "gateway", "amqp_user": "gw", "scopes": ["sessions:read"]}}
            ]}}"#,
            hex(&sha256(TOKEN.as_bytes())).to_uppercase()
        )
    }

    #[test]
    fn callers_are_found_by_token_and_by_amqp_user() {
        let callers = Callers::from_json(&file()).unwrap();
        assert_eq!(callers.len(), 2);
        let bff = callers.by_token(TOKEN.as_bytes()).unwrap();
        assert_eq!(bff.shown(), "bff");
        assert!(bff.reads_secrets());
        assert!(callers
            .by_token(b"a-token-of-the-bff-that-is-long-enougH")
            .is_none());
        assert!(callers.by_token(b"").is_none());
        let gateway = callers.by_amqp_user("gw").unwrap();
        assert_eq!(gateway.shown(), "gateway");
        assert!(gateway.require(Scope::SessionsDelete).is_err());
        assert!(callers.by_amqp_user("bff").is_none());
        assert!(!format!("{callers:?}").contains(&hex(&sha256(TOKEN.as_bytes()))));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let digest = hex(&[7; 32]);
        let cases = [
            (r#"{"callers": [{"name": "a b", "amqp_user": "u", "scopes": []}]}"#.to_string(), "callers[0] \"a b\": name"),
            (format!(r#"{{"callers": [{{"name": "a", "amqp_user": "u", "scopes": []}}, {{"name": "b", "token_sha256": "{}", "scopes": []}}]}}"#, &digest[1..]), "callers[1] b: token_sha256"),
            (r#"{"callers": [{"name": "a", "amqp_user": "u", "scopes": ["sessions:all"]}]}"#.to_string(), "callers[0] a: scopes"),
            (r#"{"callers": [{"name": "a", "scopes": ["*"]}]}"#.to_string(), "callers[0] a: needs"),
            (r#"{"callers": [{"name": "a", "amqp_user": "u", "scopes": []}, {"name": "a", "amqp_user": "v", "scopes": []}]}"#.to_string(), "callers[1] a: name"),
            (r#"{"callers": [{"name": "a", "amqp_user": "u", "scopes": []}, {"name": "b", "amqp_user": "u", "scopes": []}]}"#.to_string(), "callers[1] b: amqp_user"),
            (format!(r#"{{"callers": [{{"name": "a", "token_sha256": "{digest}", "scopes": []}}, {{"name": "b", "token_sha256": "{digest}", "scopes": []}}]}}"#), "callers[1] b: token_sha256"),
            (r#"{"callers": [{"name": "a", "amqp_user": "u", "scope": []}]}"#.to_string(), "callers[0] a: unknown field `scope`"),
            (r#"{"callers": [{"name": "a", "amqp_user": 5, "scopes": []}]}"#.to_string(), "callers[0] a: invalid type"),
            (r#"{"callers": [{"amqp_user": "u", "scopes": []}]}"#.to_string(), "callers[0]: missing field `name`"),
            (format!(r#"{{"callers": [{{"name": "a", "token_sha256": "+{}", "scopes": []}}]}}"#, &digest[1..]), "callers[0] a: token_sha256"),
            ("[]".to_string(), "is not a callers file"),
            (r#"{"callers": [{"name": "a", "amqp_user": "u", "scopes": [], "scopes": ["*"]}]}"#.to_string(), "is not a callers file: scopes: member name repeated"),
        ];
        for (text, expected) in cases {
            let error = Callers::from_json(&text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
    }

    #[test]
    fn api_tokens_are_callers_with_every_scope_and_must_be_long() {
        let tokens = [
            SecretString::new("x".repeat(32)),
            SecretString::new("y".repeat(40)),
        ];
        let callers = Callers::of_api_tokens(&tokens).unwrap();
        let second = callers.by_token("y".repeat(40).as_bytes()).unwrap();
        assert_eq!(second.shown(), "token-2");
        assert_eq!(second.scopes(), Scopes::all());
        let short = Callers::of_api_tokens(&[SecretString::new("z".repeat(31))]).unwrap_err();
        assert!(
            short.contains("token-1") && !short.contains("zzz"),
            "{short}"
        );
        // A token given twice would make two callers of one token.
        let twice = [tokens[0].clone(), tokens[0].clone()];
        assert!(Callers::of_api_tokens(&twice).is_err());
        // Tokens are added after the file's callers; their names must not clash.
        let mut named = Callers::from_json(
            r#"{"callers": [{"name": "token-1", "amqp_user": "u", "scopes": []}]}"#,
        )
        .unwrap();
        assert!(named.add_api_tokens(&tokens[..1]).is_err());
    }
}
