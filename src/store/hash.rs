//! The session hash: the one table of its fields, each with the name the Rust side and the
//! scripts share (`FIELD.<name>` in a script's generated header) and the short code it is stored
//! under; and the conversions between a session and the hash's field/value pairs, which seal the
//! secret fields on the way in and open them on the way out ([`Keyring`]), so that no script
//! ever sees their plain text.

use super::StoreError;
use crate::{
    domain::{
        DeviceId, Field, IpAddress, MutableFields, Secret, Session, SessionId, SessionPatch,
        Timestamp, UserAgent, UserEmail, UserId,
    },
    keyring::{Keyring, OpenError},
};

/// A field of the session hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HashField {
    UserId,
    DeviceId,
    AuthCode,
    AccessToken,
    RefreshToken,
    ExpirationTime,
    UserEmail,
    CreatedAt,
    UpdatedAt,
    ExpiresAt,
    IpAddress,
    UserAgent,
    LastSeenAt,
}

impl HashField {
    /// Every field, with its shared name and its stored code.
    pub const TABLE: [(Self, &'static str, &'static str); 13] = [
        (Self::UserId, "user_id", "u"),
        (Self::DeviceId, "device_id", "d"),
        (Self::AuthCode, "auth_code", "ac"),
        (Self::AccessToken, "access_token", "at"),
        (Self::RefreshToken, "refresh_token", "rt"),
        (Self::ExpirationTime, "expiration_time", "et"),
        (Self::UserEmail, "user_email", "em"),
        (Self::CreatedAt, "created_at", "c"),
        (Self::UpdatedAt, "updated_at", "m"),
        (Self::ExpiresAt, "expires_at", "x"),
        (Self::IpAddress, "ip_address", "ip"),
        (Self::UserAgent, "user_agent", "ua"),
        (Self::LastSeenAt, "last_seen_at", "ls"),
    ];

    /// The code the field is stored under.
    pub fn code(self) -> &'static str {
        Self::TABLE[self as usize].2
    }

    /// The field's shared name, which a sealed value is bound to.
    pub fn name(self) -> &'static str {
        Self::TABLE[self as usize].1
    }

    /// The fields stored sealed when a key is set (contract §7.1).
    pub const SEALED: [Self; 4] = [
        Self::AuthCode,
        Self::AccessToken,
        Self::RefreshToken,
        Self::UserEmail,
    ];

    /// Whether the field is stored sealed when a key is set.
    pub fn is_sealed(self) -> bool {
        Self::SEALED.contains(&self)
    }
}

/// The code under which the session hash stores the field of shared name `name` (e.g.
/// `"last_seen_at"`), for tools and tests that read the hash itself.
pub fn field_code(name: &str) -> Option<&'static str> {
    HashField::TABLE
        .iter()
        .find(|(_, shared, _)| *shared == name)
        .map(|(_, _, code)| *code)
}

/// The field of `table` (a table of fields, their shared names and stored codes) stored as
/// `code`.
pub(super) fn of_code<T: Copy>(table: &[(T, &str, &str)], code: &str) -> Option<T> {
    table
        .iter()
        .find(|(_, _, stored)| *stored == code)
        .map(|(field, _, _)| *field)
}

/// The client-set fields of session `id` that have a value, as field code/value pairs in the
/// form to store (the secret ones sealed).
pub(super) fn pairs(
    fields: &MutableFields,
    id: &SessionId,
    keyring: &Keyring,
) -> Vec<(&'static str, String)> {
    let secret = |secret: &Option<Secret>| secret.as_ref().map(|s| s.expose().to_owned());
    [
        (HashField::AuthCode, secret(&fields.auth_code)),
        (HashField::AccessToken, secret(&fields.access_token)),
        (HashField::RefreshToken, secret(&fields.refresh_token)),
        (
            HashField::ExpirationTime,
            fields.expiration_time.map(|t| t.to_string()),
        ),
        (
            HashField::UserEmail,
            fields.user_email.as_ref().map(|e| e.as_str().to_owned()),
        ),
    ]
    .into_iter()
    .filter_map(|(field, value)| {
        let value = value?;
        let stored = if field.is_sealed() {
            keyring.seal(id.as_str(), field.name(), &value)
        } else {
            value
        };
        Some((field.code(), stored))
    })
    .collect()
}

/// What an update of session `id` writes: the pairs to set (the secret ones sealed) and the
/// codes of the fields to clear.
pub(super) fn patch(
    patch: &SessionPatch,
    id: &SessionId,
    keyring: &Keyring,
) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
    fn value<T: Clone>(field: &Field<T>) -> Option<T> {
        match field {
            Field::Value(value) => Some(value.clone()),
            Field::Absent | Field::Null => None,
        }
    }
    let set = pairs(
        &MutableFields {
            auth_code: value(&patch.auth_code),
            access_token: value(&patch.access_token),
            refresh_token: value(&patch.refresh_token),
            expiration_time: value(&patch.expiration_time),
            user_email: value(&patch.user_email),
        },
        id,
        keyring,
    );
    let cleared = [
        (HashField::AuthCode, matches!(patch.auth_code, Field::Null)),
        (
            HashField::AccessToken,
            matches!(patch.access_token, Field::Null),
        ),
        (
            HashField::RefreshToken,
            matches!(patch.refresh_token, Field::Null),
        ),
        (
            HashField::ExpirationTime,
            matches!(patch.expiration_time, Field::Null),
        ),
        (
            HashField::UserEmail,
            matches!(patch.user_email, Field::Null),
        ),
    ]
    .into_iter()
    .filter(|(_, clear)| *clear)
    .map(|(field, _)| field.code())
    .collect();
    (set, cleared)
}

/// A stored moment.
pub(super) fn timestamp(text: &str) -> Result<Timestamp, StoreError> {
    text.parse()
        .ok()
        .and_then(Timestamp::from_unix_millis)
        .ok_or_else(|| StoreError::Corrupt(format!("bad timestamp {text:?}")))
}

/// The plain text of `stored`, the value of the sealed `field` of session `id`.
fn open(
    keyring: &Keyring,
    id: &SessionId,
    field: HashField,
    stored: String,
) -> Result<String, StoreError> {
    keyring
        .open(id.as_str(), field.name(), stored)
        .map_err(|error| match error {
            OpenError::UnknownKey(key_id) => StoreError::UnknownKey {
                session_id: id.as_str().to_owned(),
                key_id,
            },
            OpenError::Forged => super::rewrap::broken(id, field),
        })
}

/// The session of id `id` from its hash's field/value pairs (as `HGETALL` returns them), its
/// secret fields opened.
pub(super) fn session(
    id: &SessionId,
    pairs: Vec<String>,
    keyring: &Keyring,
) -> Result<Session, StoreError> {
    let mut pairs = pairs.into_iter();
    let fields = std::iter::from_fn(|| Some((pairs.next()?, pairs.next()?)))
        .filter_map(|(code, value)| Some((of_code(&HashField::TABLE, &code)?, value)));
    session_of(id, fields, keyring)
}

/// The codes of every field, in the order of [`HashField::TABLE`]: an `HMGET` of them reads the
/// whole hash with half the answer of an `HGETALL` (no names), for [`session_of_values`].
pub(super) const EVERY_CODE: [&str; HashField::TABLE.len()] = {
    let mut codes = [""; HashField::TABLE.len()];
    let mut at = 0;
    while at < codes.len() {
        codes[at] = HashField::TABLE[at].2;
        at += 1;
    }
    codes
};

/// The session of id `id` from the values of [`EVERY_CODE`] (as `HMGET` returns them); `None`
/// when it has none (no such hash).
pub(super) fn session_of_values(
    id: &SessionId,
    values: Vec<Option<String>>,
    keyring: &Keyring,
) -> Result<Option<Session>, StoreError> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let fields = HashField::TABLE
        .iter()
        .zip(values)
        .filter_map(|((field, _, _), value)| Some((*field, value?)));
    session_of(id, fields, keyring).map(Some)
}

/// The session of id `id` from its stored fields, its secret fields opened.
fn session_of(
    id: &SessionId,
    stored: impl Iterator<Item = (HashField, String)>,
    keyring: &Keyring,
) -> Result<Session, StoreError> {
    let (mut user_id, mut device_id) = (None, None);
    let (mut created_at, mut updated_at, mut expires_at) = (None, None, None);
    let (mut ip_address, mut user_agent, mut last_seen_at) = (None, None, None);
    let mut fields = MutableFields::default();
    for (field, value) in stored {
        let value = if field.is_sealed() {
            open(keyring, id, field, value)?
        } else {
            value
        };
        match field {
            HashField::UserId => user_id = Some(UserId::from_stored(value)),
            HashField::DeviceId => device_id = Some(DeviceId::from_stored(value)),
            HashField::AuthCode => fields.auth_code = Some(Secret::from_stored(value)),
            HashField::AccessToken => fields.access_token = Some(Secret::from_stored(value)),
            HashField::RefreshToken => fields.refresh_token = Some(Secret::from_stored(value)),
            HashField::ExpirationTime => {
                let seconds = value
                    .parse()
                    .map_err(|_| StoreError::Corrupt("bad expiration_time".into()))?;
                fields.expiration_time = Some(seconds);
            }
            HashField::UserEmail => fields.user_email = Some(UserEmail::from_stored(value)),
            HashField::CreatedAt => created_at = Some(timestamp(&value)?),
            HashField::UpdatedAt => updated_at = Some(timestamp(&value)?),
            HashField::ExpiresAt => expires_at = Some(timestamp(&value)?),
            HashField::IpAddress => ip_address = Some(IpAddress::from_stored(value)),
            HashField::UserAgent => user_agent = Some(UserAgent::from_stored(value)),
            HashField::LastSeenAt => last_seen_at = Some(timestamp(&value)?),
        }
    }
    let missing = || StoreError::Corrupt("session hash lacks a required field".into());
    Ok(Session {
        session_id: id.clone(),
        user_id: user_id.ok_or_else(missing)?,
        device_id: device_id.ok_or_else(missing)?,
        auth_code: fields.auth_code,
        access_token: fields.access_token,
        refresh_token: fields.refresh_token,
        expiration_time: fields.expiration_time,
        user_email: fields.user_email,
        ip_address,
        user_agent,
        created_at: created_at.ok_or_else(missing)?,
        updated_at: updated_at.ok_or_else(missing)?,
        expires_at: expires_at.ok_or_else(missing)?,
        last_seen_at,
        secrets_withheld: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_the_enum_and_codes_are_distinct() {
        for (at, (field, _, code)) in HashField::TABLE.iter().enumerate() {
            assert_eq!(*field as usize, at);
            assert_eq!(of_code(&HashField::TABLE, code), Some(*field));
        }
    }

    #[test]
    fn values_of_every_code_read_as_the_pairs_of_the_same_hash() {
        let id = SessionId::parse("6bkppTcakqIU-QJk3FxZZDOgA6bBsDARH9cozyah23YGk").unwrap();
        let keyring = Keyring::default();
        let stored = [
            ("u", "ann"),
            ("d", "phone"),
            ("at", "token"),
            ("c", "1700000000000"),
            ("m", "1700000000001"),
            ("x", "1700003600000"),
            ("ua", "Firefox"),
        ];
        let values = |stored: &[(&str, &str)]| -> Vec<Option<String>> {
            EVERY_CODE
                .iter()
                .map(|code| {
                    let found = stored.iter().find(|(stored, _)| stored == code);
                    found.map(|(_, value)| (*value).to_owned())
                })
                .collect()
        };
        let pairs = stored
            .iter()
            .flat_map(|(code, value)| [(*code).to_owned(), (*value).to_owned()])
            .collect();
        let read = session_of_values(&id, values(&stored), &keyring).unwrap();
        let json = |session: &Session| serde_json::to_value(session).unwrap();
        assert_eq!(
            read.as_ref().map(json),
            Some(json(&session(&id, pairs, &keyring).unwrap()))
        );
        assert_eq!(read.unwrap().access_token.unwrap().expose(), "token");
        // No hash: nothing at all.
        assert!(session_of_values(&id, values(&[]), &keyring)
            .unwrap()
            .is_none());
        // A hash without a required field is corrupt.
        assert!(matches!(
            session_of_values(&id, values(&stored[1..]), &keyring),
            Err(StoreError::Corrupt(_))
        ));
    }
}
