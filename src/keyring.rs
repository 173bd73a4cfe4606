//! Sealing secret values at rest (contract §7.1): the keyring of `SESSION_ENCRYPTION_KEY` and
//! the sealed form of a value. Only this module writes and reads that form; it knows nothing of
//! Redis or of where a value is kept: the store seals a value before it leaves for Redis and
//! opens it when it comes back, so that the scripts only ever see sealed text.
//!
//! # Sealed form
//!
//! ```text
//! $sm1$<key id>$<base64url, unpadded: 24-byte nonce ‖ ciphertext ‖ 16-byte tag>
//! ```
//!
//! Format 1 is XChaCha20-Poly1305 with a fresh random 192-bit nonce per value (random nonces
//! that long need no counter shared between instances). The associated data binds the value to
//! the format, the key id, the session id and the field name, so that a sealed value copied to
//! another session or field, or relabelled with another key id, does not open. A stored value
//! without the `$sm1$` prefix is plain text, written before a key was set: it is read as it is,
//! and sealed at its next write or by `session-manager rewrap`. So that a client cannot plant a
//! value that later reads as sealed, a value stored plain (no key set) that starts with `$` is
//! stored with one more `$` in front, which reading takes off.

use std::fmt;

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine,
};
use chacha20poly1305::{
    aead::{Aead, AeadInPlace, KeyInit, Payload},
    Tag, XChaCha20Poly1305, XNonce,
};
use rand::RngCore;
use zeroize::Zeroizing;

/// The prefix of every value sealed in format 1.
const PREFIX: &str = "$sm1$";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
const KEY_BYTES: usize = 32;
const MAX_ID_CHARS: usize = 16;
/// The id of a key given bare, without `<id>:`.
const BARE_ID: &str = "0";

/// The keys of `SESSION_ENCRYPTION_KEY`: the first seals, every one opens. Empty when no key is
/// set: values are then stored as given. Its `Debug` shows the key ids, never a key.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    /// Keys the digests of idempotency records ([`Keyring::digests`]), derived from the key.
    digests: ring::hmac::Key,
}

/// The length of a [`Keyring::digests`] digest: 128 bits, as unpadded base64url (22 characters).
pub const DIGEST_BYTES: usize = 16;

/// Why a keyring cannot be used. The message never quotes a key.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// An entry is empty (e.g. two commas in a row).
    #[error("entry {0} is empty")]
    Empty(usize),
    /// An id is not 1–16 characters of `[A-Za-z0-9_-]`.
    #[error("entry {0}: the key id must be 1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 _ -")]
    BadId(usize),
    /// Two entries share an id.
    #[error("entry {entry}: the key id {id:?} is used twice")]
    DuplicateId {
        /// The later entry.
        entry: usize,
        /// Its id.
        id: String,
    },
    /// A key is not standard base64.
    #[error("entry {0}: the key is not standard base64")]
    BadBase64(usize),
    /// A key is not 32 bytes long.
    #[error("entry {entry}: the key must be {KEY_BYTES} bytes, it is {length}")]
    BadLength {
        /// The entry.
        entry: usize,
        /// The length of its key in bytes.
        length: usize,
    },
    /// More than one entry, and one of them without `<id>:`.
    #[error("entry {0}: in a ring of several keys every key needs an id (<id>:<key>)")]
    MissingId(usize),
}

/// Why a stored value cannot be opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// It is sealed under a key that the ring does not hold.
    #[error("sealed under key id {0:?}, which SESSION_ENCRYPTION_KEY does not hold")]
    UnknownKey(String),
    /// It has the sealed form's prefix but does not open: damaged, or moved from another session
    /// or field.
    #[error("a sealed value that does not open (damaged, or moved from elsewhere)")]
    Forged,
}

/// How a stored value is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing<'a> {
    /// In plain text.
    Plain,
    /// Sealed under the key of this id.
    Sealed(&'a str),
}

impl Keyring {
    /// Parses `SESSION_ENCRYPTION_KEY`: one bare key, or `<id>:<key>` entries separated by
    /// commas; keys are 32 bytes in standard base64. Entries are numbered from 1 in errors.
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        let mut keys: Vec<Key> = Vec::with_capacity(entries.len());
        for (at, entry) in entries.iter().enumerate() {
            let number = at + 1;
            if entry.is_empty() {
                return Err(KeyringError::Empty(number));
            }
            let (id, encoded) = match entry.split_once(':') {
                Some((id, key)) => (id, key),
                None if entries.len() == 1 => (BARE_ID, *entry),
                None => return Err(KeyringError::MissingId(number)),
            };
            let id_ok = (1..=MAX_ID_CHARS).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(KeyringError::BadId(number));
            }
            if keys.iter().any(|key| key.id == id) {
                return Err(KeyringError::DuplicateId {
                    entry: number,
                    id: id.to_owned(),
                });
            }
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| KeyringError::BadBase64(number))?,
            );
            if bytes.len() != KEY_BYTES {
                return Err(KeyringError::BadLength {
                    entry: number,
                    length: bytes.len(),
                });
            }
            keys.push(Key {
                id: id.to_owned(),
                cipher: XChaCha20Poly1305::new_from_slice(&bytes)
                    .expect("the length was checked just above"),
                digests: digest_key(&bytes),
            });
        }
        Ok(Self { keys })
    }

    /// Whether no key is set, so that values are stored as given.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The header that every value sealed now starts with (`$sm1$<key id>$`), if a key is set.
    pub fn sealed_prefix(&self) -> Option<String> {
        self.sealing_id().map(|id| format!("{PREFIX}{id}$"))
    }

    /// The id of the key that seals, if any.
    pub fn sealing_id(&self) -> Option<&str> {
        self.keys.first().map(|key| key.id.as_str())
    }

    /// `plain`, the value of `field` of session `session_id`, in the form to store: sealed under
    /// the first key, or as it is when the ring is empty.
    pub fn seal(&self, session_id: &str, field: &str, plain: &str) -> String {
        let Some(key) = self.keys.first() else {
            return match plain.starts_with('$') {
                true => format!("${plain}"),
                false => plain.to_owned(),
            };
        };
        let mut nonce = [0u8; NONCE_BYTES];
        // ThreadRng is a CSPRNG (ChaCha12) seeded from the OS.
        rand::rng().fill_bytes(&mut nonce);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &associated_data(&key.id, session_id, field),
                },
            )
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut text = String::with_capacity(
            PREFIX.len() + key.id.len() + 1 + (NONCE_BYTES + sealed.len()).div_ceil(3) * 4,
        );
        text.push_str(PREFIX);
        text.push_str(&key.id);
        text.push('$');
        let mut bytes = Vec::with_capacity(NONCE_BYTES + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode_string(bytes, &mut text);
        text
    }

    /// The plain text of `stored`, the stored value of `field` of session `session_id`.
    pub fn open(&self, session_id: &str, field: &str, stored: String) -> Result<String, OpenError> {
        let Some((id, encoded)) = split(&stored) else {
            return Ok(
                match stored
                    .strip_prefix('$')
                    .filter(|rest| rest.starts_with('$'))
                {
                    Some(escaped) => escaped.to_owned(),
                    None => stored,
                },
            );
        };
        let key = self
            .keys
            .iter()
            .find(|key| key.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let mut bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| OpenError::Forged)?;
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return Err(OpenError::Forged);
        }
        // Opened in place: nonce ‖ ciphertext ‖ tag becomes the plain text, one allocation.
        let tag_at = bytes.len() - TAG_BYTES;
        let (nonce, rest) = bytes.split_at_mut(NONCE_BYTES);
        let (text, tag) = rest.split_at_mut(tag_at - NONCE_BYTES);
        key.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                &associated_data(id, session_id, field),
                text,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Forged)?;
        bytes.truncate(tag_at);
        bytes.drain(..NONCE_BYTES);
        String::from_utf8(bytes).map_err(|_| OpenError::Forged)
    }

    /// The digests of `bytes` (the fingerprint of a command, kept in its idempotency record so
    /// that a key used again can be told apart from a repetition), the one to record first: an
    /// HMAC under a key derived from each key of the ring, so that no digest in Redis lets a
    /// reader test guesses of an e-mail address; then its plain SHA-256, which is recorded only
    /// without a key (Redis then holds the values in plain text anyway). A record written under
    /// any key of the ring, or before a key was set, still matches. Each is [`DIGEST_BYTES`]
    /// long, in unpadded base64url.
    pub fn digests(&self, bytes: &[u8]) -> Vec<String> {
        let short = |digest: &[u8]| URL_SAFE_NO_PAD.encode(&digest[..DIGEST_BYTES]);
        self.keys
            .iter()
            .map(|key| short(ring::hmac::sign(&key.digests, bytes).as_ref()))
            .chain([short(
                ring::digest::digest(&ring::digest::SHA256, bytes).as_ref(),
            )])
            .collect()
    }

    /// How `stored` is kept, read from its header alone.
    pub fn sealing(stored: &str) -> Sealing<'_> {
        split(stored).map_or(Sealing::Plain, |(id, _)| Sealing::Sealed(id))
    }

    /// Whether `stored` is already as the ring would store it now: sealed under the first key,
    /// or plain when the ring is empty.
    pub fn is_current(&self, stored: &str) -> bool {
        match (Self::sealing(stored), self.sealing_id()) {
            (Sealing::Plain, None) => true,
            (Sealing::Sealed(id), Some(current)) => id == current,
            _ => false,
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|key| &key.id))
            .finish()
    }
}

/// The HMAC key of the digests, derived from a ring key with HKDF-SHA256 for that purpose alone,
/// so that the digests tell nothing about the key that seals.
fn digest_key(key: &[u8]) -> ring::hmac::Key {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"session-manager");
    salt.extract(key)
        .expand(&[b"idempotency record digest"], ring::hmac::HMAC_SHA256)
        .expect("HMAC-SHA256's key length is within HKDF-SHA256's output limit")
        .into()
}

/// The key id and the encoded bytes of a sealed value; `None` for plain text.
fn split(stored: &str) -> Option<(&str, &str)> {
    stored.strip_prefix(PREFIX)?.split_once('$')
}

/// What a sealed value is bound to besides its key.
fn associated_data(key_id: &str, session_id: &str, field: &str) -> Vec<u8> {
    let mut data =
        Vec::with_capacity(PREFIX.len() + key_id.len() + session_id.len() + field.len() + 3);
    for part in [PREFIX, key_id, session_id, field] {
        data.extend_from_slice(part.as_bytes());
        data.push(0);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; KEY_BYTES])
    }

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_session_and_field() {
        let ring = ring(&key(1));
        let sealed = ring.seal("s1", "access_token", "secret-token");
        assert!(sealed.starts_with("$sm1$0$"), "{sealed}");
        assert!(!sealed.contains("secret-token"));
        assert_eq!(
            ring.open("s1", "access_token", sealed.clone()).unwrap(),
            "secret-token"
        );
        assert_eq!(
            ring.open("s2", "access_token", sealed.clone()),
            Err(OpenError::Forged)
        );
        assert_eq!(
            ring.open("s1", "refresh_token", sealed.clone()),
            Err(OpenError::Forged)
        );
        // Two seals of one value differ (a fresh nonce each).
        assert_ne!(ring.seal("s1", "access_token", "secret-token"), sealed);
    }

    #[test]
    fn every_key_opens_the_first_seals_and_an_unknown_id_is_named() {
        let old = ring(&format!("old:{}", key(1)));
        let rotated = ring(&format!("new:{},old:{}", key(2), key(1)));
        let by_old = old.seal("s", "f", "v");
        assert_eq!(rotated.open("s", "f", by_old.clone()).unwrap(), "v");
        let by_new = rotated.seal("s", "f", "v");
        assert_eq!(Keyring::sealing(&by_new), Sealing::Sealed("new"));
        assert!(rotated.is_current(&by_new) && !rotated.is_current(&by_old));
        assert_eq!(
            old.open("s", "f", by_new),
            Err(OpenError::UnknownKey("new".into()))
        );
        // Relabelling a value with another id of the ring does not open it.
        let relabelled = by_old.replacen("$old$", "$new$", 1);
        assert_eq!(rotated.open("s", "f", relabelled), Err(OpenError::Forged));
    }

    #[test]
    fn a_plain_value_that_looks_sealed_is_escaped_and_reads_back() {
        let none = Keyring::default();
        let planted = "$sm1$0$AAAA";
        let stored = none.seal("s", "f", planted);
        assert_eq!(stored, "$$sm1$0$AAAA");
        assert_eq!(Keyring::sealing(&stored), Sealing::Plain);
        assert_eq!(none.open("s", "f", stored.clone()).unwrap(), planted);
        // A key set later reads it as the plain value it is, and seals it.
        let ring = ring(&key(1));
        assert_eq!(ring.open("s", "f", stored).unwrap(), planted);
        let sealed = ring.seal("s", "f", planted);
        assert_eq!(ring.open("s", "f", sealed).unwrap(), planted);
        assert_eq!(none.open("s", "f", "$plain".into()).unwrap(), "$plain");
    }

    #[test]
    fn plain_text_reads_as_it_is_and_an_empty_ring_stores_plain() {
        let ring = ring(&key(1));
        assert_eq!(ring.open("s", "f", "legacy".into()).unwrap(), "legacy");
        assert!(!ring.is_current("legacy"));
        let none = Keyring::default();
        assert_eq!(none.seal("s", "f", "v"), "v");
        assert!(none.is_current("v"));
    }

    #[test]
    fn digests_depend_on_every_key_and_match_across_a_rotation() {
        let (old, new) = (
            ring(&format!("a:{}", key(1))),
            ring(&format!("b:{},a:{}", key(2), key(1))),
        );
        let print = b"the fingerprint of a command";
        let under_old = old.digests(print);
        let under_new = new.digests(print);
        assert_eq!(under_old.len(), 2);
        assert_eq!(under_new.len(), 3);
        // The new ring writes its first key's, and still knows the old one's and the plain one.
        assert_ne!(under_new[0], under_old[0]);
        assert_eq!(under_new[1], under_old[0]);
        assert_eq!(under_old[0].len(), 22);
        assert_ne!(old.digests(b"another command"), under_old);
        let plain = Keyring::default().digests(print);
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0], under_new[2]);
        assert!(!under_old[..1].contains(&plain[0]));
    }

    #[test]
    fn a_malformed_ring_is_refused_without_quoting_a_key() {
        let short = STANDARD.encode([7u8; 16]);
        let cases = [
            ("".to_owned(), KeyringError::Empty(1)),
            (format!("a:{},", key(1)), KeyringError::Empty(2)),
            ("not base64!".to_owned(), KeyringError::BadBase64(1)),
            (
                short.clone(),
                KeyringError::BadLength {
                    entry: 1,
                    length: 16,
                },
            ),
            (
                format!("a:{},{}", key(1), key(2)),
                KeyringError::MissingId(2),
            ),
            (format!("bad id:{}", key(1)), KeyringError::BadId(1)),
            (
                format!("{}:{}", "x".repeat(17), key(1)),
                KeyringError::BadId(1),
            ),
            (
                format!("a:{},a:{}", key(1), key(2)),
                KeyringError::DuplicateId {
                    entry: 2,
                    id: "a".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            let error = Keyring::parse(&text).unwrap_err();
            assert_eq!(error, expected, "{text}");
            for part in [key(1), key(2), short.clone()] {
                assert!(!error.to_string().contains(&part));
            }
        }
        assert!(!format!("{:?}", ring(&key(3))).contains(&key(3)));
    }

    mod properties {
        use proptest::{collection, prelude::*};

        use super::*;

        proptest! {
            /// Any text: a ring or a refusal whose message quotes no part of the text's keys.
            #[test]
            fn any_text_is_a_ring_or_a_refusal(text in ".{0,200}") {
                if let Err(error) = Keyring::parse(&text) {
                    for entry in text.split(',') {
                        let key = entry.rsplit(':').next().unwrap_or_default().trim();
                        if key.len() >= 8 {
                            prop_assert!(!error.to_string().contains(key), "{error}");
                        }
                    }
                }
            }

            /// A valid ring parses, seals under its first key, and opens what any of its keys
            /// sealed, for any value.
            #[test]
            fn a_valid_ring_round_trips(
                ids in collection::btree_set("[A-Za-z0-9_-]{1,16}", 1..5),
                seed in any::<u8>(),
                plain in ".{0,100}",
            ) {
                let ids: Vec<String> = ids.into_iter().collect();
                let entries: Vec<String> = ids
                    .iter()
                    .enumerate()
                    .map(|(n, id)| format!("{id}:{}", key(seed.wrapping_add(n as u8))))
                    .collect();
                let ring = Keyring::parse(&entries.join(",")).unwrap();
                prop_assert_eq!(ring.sealing_id(), Some(ids[0].as_str()));
                for (first, id) in ids.iter().enumerate() {
                    let mut rotated = entries.clone();
                    rotated.rotate_left(first);
                    let sealed = Keyring::parse(&rotated.join(",")).unwrap().seal("s", "f", &plain);
                    prop_assert_eq!(Keyring::sealing(&sealed), Sealing::Sealed(id.as_str()));
                    prop_assert_eq!(ring.open("s", "f", sealed).unwrap(), plain.clone());
                }
            }
        }
    }
}
