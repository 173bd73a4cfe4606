//! The session and its parts (contract §1): newtypes whose only constructors check the rules, so
//! that the core never holds an unchecked value, and the inputs of create and update.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde::{Serialize, Serializer};
use time::OffsetDateTime;

use super::{
    fields::{Field, Fields},
    Error,
};

const SHARD_LEN: usize = 2; // two lowercase hex digits
const RANDOM_BYTES: usize = 32;
const RANDOM_LEN: usize = 43; // base64url of 32 bytes, unpadded
const MAX_ID_BYTES: usize = 256;
const MAX_SECRET_BYTES: usize = 16 * 1024;
const MAX_EMAIL_BYTES: usize = 320;

/// A session id: a shard number chosen by the store (2 lowercase hex digits), so that the store
/// finds a session from its id alone, followed by 256 random bits from the OS CSPRNG in unpadded
/// base64url, so that it is URL-safe and never reused in practice.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A new random id carrying `shard`.
    pub fn generate(shard: u8) -> Self {
        let mut random = [0u8; RANDOM_BYTES];
        // ThreadRng is a CSPRNG (ChaCha12) seeded from the OS and reseeded periodically.
        rand::rng().fill_bytes(&mut random);
        let mut id = String::with_capacity(SHARD_LEN + RANDOM_LEN);
        id.push_str(&format!("{shard:02x}"));
        URL_SAFE_NO_PAD.encode_string(random, &mut id);
        Self(id)
    }

    /// Parses an id given by a client; `None` when it cannot be an id this service issued.
    pub fn parse(id: &str) -> Option<Self> {
        let (shard, random) = id.split_at_checked(SHARD_LEN)?;
        let shard_ok = shard
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let random_ok = random.len() == RANDOM_LEN
            && random
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (shard_ok && random_ok).then(|| Self(id.to_owned()))
    }

    /// Parses an id field of a command or request; an id that cannot exist is `not_found`.
    pub fn parse_existing(id: &str) -> Result<Self, Error> {
        Self::parse(id).ok_or_else(Error::session_not_found)
    }

    /// The shard the id was generated with.
    pub fn shard(&self) -> u8 {
        u8::from_str_radix(&self.0[..SHARD_LEN], 16)
            .expect("every id starts with two hex digits: generate writes them, parse checks them")
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A session id is a bearer credential for the session: log only its shard and a prefix.
        write!(f, "SessionId({}…)", &self.0[..8])
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

fn check_identifier(name: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{name}: must be 1 to {MAX_ID_BYTES} bytes of UTF-8"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{name}: must not contain control characters"
        )));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks the rules; the error names the field.
            pub fn parse(value: String) -> Result<Self, Error> {
                check_identifier($field, &value)?;
                Ok(Self(value))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A value read back from the store, where only checked values are written.
            pub(crate) fn from_stored(value: String) -> Self {
                Self(value)
            }
        }
    };
}

identifier!(
    /// A user id: 1–256 bytes of UTF-8 without control characters.
    UserId,
    "user_id"
);
identifier!(
    /// A device id: 1–256 bytes of UTF-8 without control characters.
    DeviceId,
    "device_id"
);

/// A token or auth code (at most 16 KiB). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Checks the size; the error names the field `name`.
    pub fn parse(name: &str, value: String) -> Result<Self, Error> {
        if value.len() > MAX_SECRET_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{name}: must be at most {MAX_SECRET_BYTES} bytes"
            )));
        }
        Ok(Self(value))
    }

    /// The value, for storing it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A value read back from the store, where only checked values are written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A user's e-mail address: at most 320 bytes and containing `@`. Its `Debug` never shows the
/// value.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UserEmail(String);

impl UserEmail {
    /// Checks the rules; the error names the field.
    pub fn parse(value: String) -> Result<Self, Error> {
        if value.len() > MAX_EMAIL_BYTES || !value.contains('@') {
            return Err(Error::InvalidArgument(format!(
                "user_email: must contain @ and be at most {MAX_EMAIL_BYTES} bytes"
            )));
        }
        Ok(Self(value))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A value read back from the store, where only checked values are written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for UserEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserEmail([redacted])")
    }
}

/// The IP address a session was created from (contract §7.6), normalised: an IPv4-mapped IPv6
/// address (`::ffff:1.2.3.4`) is the IPv4 address, and IPv6 is written in its short form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct IpAddress(String);

impl IpAddress {
    /// Parses an IPv4 or IPv6 address in text form; the error names the field.
    pub fn parse(value: String) -> Result<Self, Error> {
        let address: std::net::IpAddr = value.parse().map_err(|_| {
            Error::InvalidArgument("ip_address: must be an IPv4 or IPv6 address".into())
        })?;
        Ok(Self(address.to_canonical().to_string()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A value read back from the store, where only checked values are written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }
}

const MAX_USER_AGENT_BYTES: usize = 512;

/// The user agent a session was created from: 1 to 512 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UserAgent(String);

impl UserAgent {
    /// Checks the rules; the error names the field.
    pub fn parse(value: String) -> Result<Self, Error> {
        if value.is_empty()
            || value.len() > MAX_USER_AGENT_BYTES
            || value.chars().any(char::is_control)
        {
            return Err(Error::InvalidArgument(format!(
                "user_agent: must be 1 to {MAX_USER_AGENT_BYTES} bytes without control characters"
            )));
        }
        Ok(Self(value))
    }

    /// The user agent as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A value read back from the store, where only checked values are written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }
}

/// A moment, kept as milliseconds since the Unix epoch (by the store's clock), shown as RFC 3339
/// UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The last moment RFC 3339 can write with four year digits: 9999-12-31T23:59:59.999Z.
    const LAST_MILLIS: i64 = 253_402_300_799_999;

    /// A moment from 1970 to the end of year 9999; `None` outside (never a clock reading).
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        (0..=Self::LAST_MILLIS)
            .contains(&millis)
            .then_some(Self(millis))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// RFC 3339 in UTC with exactly three fractional digits, so that the text of two
    /// timestamps sorts like the moments they stand for.
    pub fn to_rfc3339(self) -> String {
        self.write_rfc3339(&mut [0; RFC3339_LEN]).to_owned()
    }

    /// [`Self::to_rfc3339`] written into `out`, without allocating (every answer holds several).
    fn write_rfc3339(self, out: &mut [u8; RFC3339_LEN]) -> &str {
        let moment = OffsetDateTime::from_unix_timestamp(self.0.div_euclid(1000))
            .expect("a moment from 1970 to 9999 (checked at construction)");
        let (year, month, day) = moment.to_calendar_date();
        let parts = [
            (0, 4, year as u32),
            (5, 2, u32::from(u8::from(month))),
            (8, 2, u32::from(day)),
            (11, 2, u32::from(moment.hour())),
            (14, 2, u32::from(moment.minute())),
            (17, 2, u32::from(moment.second())),
            (20, 3, self.0.rem_euclid(1000) as u32),
        ];
        *out = *b"0000-00-00T00:00:00.000Z";
        for (at, digits, mut value) in parts {
            for place in (at..at + digits).rev() {
                out[place] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        std::str::from_utf8(out).expect("ASCII digits and separators")
    }
}

/// The length of a [`Timestamp`]'s RFC 3339 form.
const RFC3339_LEN: usize = 24;

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.write_rfc3339(&mut [0; RFC3339_LEN]))
    }
}

/// The client-set fields that can change after creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MutableFields {
    /// The authorization code.
    pub auth_code: Option<Secret>,
    /// The access token.
    pub access_token: Option<Secret>,
    /// The refresh token.
    pub refresh_token: Option<Secret>,
    /// The tokens' validity in seconds, as the client gives it.
    pub expiration_time: Option<u64>,
    /// The user's e-mail address.
    pub user_email: Option<UserEmail>,
}

/// A session as stored and returned: every field of §1. Serialized with every member, unset
/// optional ones as `null`; once [`Session::withhold_secrets`] has run, without the four
/// sealed members (contract §8.1).
#[derive(Debug, Clone)]
pub struct Session {
    /// Its id.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// Its device.
    pub device_id: DeviceId,
    /// The authorization code.
    pub auth_code: Option<Secret>,
    /// The access token.
    pub access_token: Option<Secret>,
    /// The refresh token.
    pub refresh_token: Option<Secret>,
    /// The tokens' validity in seconds, as the client gives it.
    pub expiration_time: Option<u64>,
    /// The user's e-mail address.
    pub user_email: Option<UserEmail>,
    /// The address it was created from, if given.
    pub ip_address: Option<IpAddress>,
    /// The user agent it was created from, if given.
    pub user_agent: Option<UserAgent>,
    /// When it was created, by the store's clock.
    pub created_at: Timestamp,
    /// When it was last updated.
    pub updated_at: Timestamp,
    /// When it ends at the latest.
    pub expires_at: Timestamp,
    /// When it was last used: created, updated, or read (reads count at most once a minute).
    /// `None` for sessions written before the service kept it.
    pub last_seen_at: Option<Timestamp>,
    /// Whether the sealed fields were taken out for a caller that may not read them.
    pub secrets_withheld: bool,
}

impl Session {
    /// Takes out the sealed fields (`auth_code`, `access_token`, `refresh_token`,
    /// `user_email`), which its answer then leaves out.
    pub fn withhold_secrets(&mut self) {
        self.auth_code = None;
        self.access_token = None;
        self.refresh_token = None;
        self.user_email = None;
        self.secrets_withheld = true;
    }
}

impl Serialize for Session {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let shown = !self.secrets_withheld;
        let mut out = serializer.serialize_struct("Session", if shown { 14 } else { 10 })?;
        out.serialize_field("session_id", &self.session_id)?;
        out.serialize_field("user_id", &self.user_id)?;
        out.serialize_field("device_id", &self.device_id)?;
        if shown {
            out.serialize_field("auth_code", &self.auth_code)?;
            out.serialize_field("access_token", &self.access_token)?;
            out.serialize_field("refresh_token", &self.refresh_token)?;
        }
        out.serialize_field("expiration_time", &self.expiration_time)?;
        if shown {
            out.serialize_field("user_email", &self.user_email)?;
        }
        out.serialize_field("ip_address", &self.ip_address)?;
        out.serialize_field("user_agent", &self.user_agent)?;
        out.serialize_field("created_at", &self.created_at)?;
        out.serialize_field("updated_at", &self.updated_at)?;
        out.serialize_field("expires_at", &self.expires_at)?;
        out.serialize_field("last_seen_at", &self.last_seen_at)?;
        out.end()
    }
}

/// The input of a create: who, on which device, and the optional fields.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Whose session.
    pub user_id: UserId,
    /// On which device.
    pub device_id: DeviceId,
    /// From which address, if given.
    pub ip_address: Option<IpAddress>,
    /// With which user agent, if given.
    pub user_agent: Option<UserAgent>,
    /// The optional client fields.
    pub fields: MutableFields,
}

/// The input of an update. `Field::Null` clears an optional field.
#[derive(Debug, Clone)]
pub struct SessionPatch {
    /// Given only to assert the stored value; a different one is a conflict.
    pub user_id: Option<UserId>,
    /// Given only to assert the stored value; a different one is a conflict.
    pub device_id: Option<DeviceId>,
    /// Given only to assert the stored value (set at create, never changed); a different one,
    /// or one the session was created without, is a conflict.
    pub ip_address: Option<IpAddress>,
    /// As `ip_address`.
    pub user_agent: Option<UserAgent>,
    /// The authorization code.
    pub auth_code: Field<Secret>,
    /// The access token.
    pub access_token: Field<Secret>,
    /// The refresh token.
    pub refresh_token: Field<Secret>,
    /// The tokens' validity in seconds.
    pub expiration_time: Field<u64>,
    /// The user's e-mail address.
    pub user_email: Field<UserEmail>,
}

fn secret(fields: &mut Fields, name: &str) -> Result<Field<Secret>, Error> {
    fields
        .string(name)?
        .try_map(|value| Secret::parse(name, value))
}

/// `expiration_time`, also accepted under its old spelling `exiration_time`.
fn expiration_time(fields: &mut Fields) -> Result<Field<u64>, Error> {
    let current = fields.unsigned("expiration_time")?;
    let old = fields.unsigned("exiration_time")?;
    match (current.is_absent(), old.is_absent()) {
        (false, false) => Err(Error::InvalidArgument(
            "expiration_time: given twice (also as exiration_time)".into(),
        )),
        (true, _) => Ok(old),
        (false, true) => Ok(current),
    }
}

fn optional_identifier<T>(
    fields: &mut Fields,
    name: &str,
    parse: fn(String) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    match fields.string(name)? {
        Field::Absent => Ok(None),
        Field::Null => Err(Error::InvalidArgument(format!("{name}: must be a string"))),
        Field::Value(value) => parse(value).map(Some),
    }
}

impl NewSession {
    /// Takes the session fields of a create out of `fields` (which the caller then finishes).
    pub fn take_from(fields: &mut Fields) -> Result<Self, Error> {
        let user_id = UserId::parse(fields.required_string("user_id")?)?;
        let device_id = DeviceId::parse(fields.required_string("device_id")?)?;
        let ip_address = fields
            .string("ip_address")?
            .try_map(IpAddress::parse)?
            .into_option();
        let user_agent = fields
            .string("user_agent")?
            .try_map(UserAgent::parse)?
            .into_option();
        let mutable = MutableFields {
            auth_code: secret(fields, "auth_code")?.into_option(),
            access_token: secret(fields, "access_token")?.into_option(),
            refresh_token: secret(fields, "refresh_token")?.into_option(),
            expiration_time: expiration_time(fields)?.into_option(),
            user_email: fields
                .string("user_email")?
                .try_map(UserEmail::parse)?
                .into_option(),
        };
        Ok(Self {
            user_id,
            device_id,
            ip_address,
            user_agent,
            fields: mutable,
        })
    }

    /// Parses a whole create body (REST).
    pub fn from_fields(mut fields: Fields) -> Result<Self, Error> {
        let new = Self::take_from(&mut fields)?;
        fields.finish()?;
        Ok(new)
    }
}

impl SessionPatch {
    /// Takes the fields of an update out of `fields`; at least one must be given.
    pub fn take_from(fields: &mut Fields) -> Result<Self, Error> {
        if fields.is_empty() {
            return Err(Error::InvalidArgument(
                "body: give at least one field to change".into(),
            ));
        }
        Ok(Self {
            user_id: optional_identifier(fields, "user_id", UserId::parse)?,
            device_id: optional_identifier(fields, "device_id", DeviceId::parse)?,
            ip_address: optional_identifier(fields, "ip_address", IpAddress::parse)?,
            user_agent: optional_identifier(fields, "user_agent", UserAgent::parse)?,
            auth_code: secret(fields, "auth_code")?,
            access_token: secret(fields, "access_token")?,
            refresh_token: secret(fields, "refresh_token")?,
            expiration_time: expiration_time(fields)?,
            user_email: fields.string("user_email")?.try_map(UserEmail::parse)?,
        })
    }

    /// Parses a whole PATCH body (REST).
    pub fn from_fields(mut fields: Fields) -> Result<Self, Error> {
        let patch = Self::take_from(&mut fields)?;
        fields.finish()?;
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_new(json: &str) -> Result<NewSession, Error> {
        NewSession::from_fields(Fields::from_slice(json.as_bytes())?)
    }

    fn message(result: Result<NewSession, Error>) -> String {
        result.expect_err("should be rejected").to_string()
    }

    #[test]
    fn session_id_has_256_random_bits_and_its_shard() {
        let id = SessionId::generate(0xa7);
        assert_eq!(id.as_str().len(), SHARD_LEN + RANDOM_LEN);
        assert!(id.as_str().starts_with("a7"));
        assert_eq!(id.shard(), 0xa7);
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(SessionId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(SessionId::generate(0xa7), id);
    }

    #[test]
    fn session_id_parse_rejects_what_the_service_never_issues() {
        for bad in [
            "",
            "zz",
            "0g0123456789012345678901234567890123456789012",
            "../x",
        ] {
            assert!(SessionId::parse(bad).is_none(), "{bad}");
        }
        let good = format!("0a{}", "A".repeat(RANDOM_LEN));
        assert!(SessionId::parse(&good).is_some());
        assert!(SessionId::parse(&format!("{good}A")).is_none());
        assert!(SessionId::parse(&format!("0a{}", "é".repeat(21))).is_none());
    }

    #[test]
    fn identifiers_follow_the_length_and_control_character_rules() {
        assert!(UserId::parse("u".into()).is_ok());
        assert!(UserId::parse("ü".repeat(128)).is_ok()); // 256 bytes
        assert!(UserId::parse("ü".repeat(128) + "x").is_err()); // 257 bytes
        assert!(UserId::parse(String::new()).is_err());
        assert!(DeviceId::parse("a\nb".into()).is_err());
        assert!(DeviceId::parse("a\u{7f}b".into()).is_err());
        assert!(DeviceId::parse("a\u{85}b".into()).is_err());
    }

    #[test]
    fn create_requires_user_and_device_and_names_the_field() {
        assert!(message(parse_new(r#"{"device_id":"d"}"#)).starts_with("user_id"));
        assert!(message(parse_new(r#"{"user_id":"u"}"#)).starts_with("device_id"));
        assert!(message(parse_new(r#"{"user_id":5,"device_id":"d"}"#)).starts_with("user_id"));
        assert!(message(parse_new(r#"{"user_id":"u","device_id":"d","x":1}"#)).starts_with("x:"));
        assert!(message(parse_new("[1]")).contains("object"));
        assert!(message(parse_new("{")).contains("JSON"));
    }

    #[test]
    fn create_checks_optional_fields() {
        let ok = parse_new(
            r#"{"user_id":"u","device_id":"d","auth_code":"c","exiration_time":7,"user_email":"a@b"}"#,
        )
        .unwrap();
        assert_eq!(ok.fields.expiration_time, Some(7));
        assert_eq!(ok.fields.auth_code.as_ref().map(Secret::expose), Some("c"));
        let long = "x".repeat(MAX_SECRET_BYTES + 1);
        let body = format!(r#"{{"user_id":"u","device_id":"d","access_token":"{long}"}}"#);
        assert!(message(parse_new(&body)).starts_with("access_token"));
        assert!(message(parse_new(
            r#"{"user_id":"u","device_id":"d","user_email":"ab"}"#
        ))
        .starts_with("user_email"));
        assert!(message(parse_new(
            r#"{"user_id":"u","device_id":"d","expiration_time":-1}"#
        ))
        .starts_with("expiration_time"));
        assert!(message(parse_new(
            r#"{"user_id":"u","device_id":"d","expiration_time":1.5}"#
        ))
        .starts_with("expiration_time"));
        assert!(message(parse_new(
            r#"{"user_id":"u","device_id":"d","expiration_time":1,"exiration_time":1}"#
        ))
        .starts_with("expiration_time"));
    }

    #[test]
    fn patch_must_not_be_empty_and_null_clears() {
        let empty = SessionPatch::from_fields(Fields::from_slice(b"{}").unwrap());
        assert!(matches!(empty, Err(Error::InvalidArgument(_))));
        let patch =
            SessionPatch::from_fields(Fields::from_slice(br#"{"auth_code":null}"#).unwrap())
                .unwrap();
        assert_eq!(patch.auth_code, Field::Null);
        let null_user =
            SessionPatch::from_fields(Fields::from_slice(br#"{"user_id":null}"#).unwrap());
        assert!(null_user.unwrap_err().to_string().starts_with("user_id"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let secret = Secret::parse("access_token", "hunter2".into()).unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            Timestamp::from_unix_millis(1_700_000_000_123)
                .unwrap()
                .to_rfc3339(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            Timestamp::from_unix_millis(1_700_000_000_100)
                .unwrap()
                .to_rfc3339(),
            "2023-11-14T22:13:20.100Z"
        );
        assert_eq!(
            Timestamp::from_unix_millis(Timestamp::LAST_MILLIS)
                .unwrap()
                .to_rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
        assert!(Timestamp::from_unix_millis(Timestamp::LAST_MILLIS + 1).is_none());
        assert!(Timestamp::from_unix_millis(-1).is_none());
    }

    #[test]
    fn timestamps_are_written_as_the_time_crate_formats_them() {
        const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        // Moments spread over the whole range (a step prime to every calendar period), and its
        // ends and leap days.
        let spread = (0..Timestamp::LAST_MILLIS).step_by(7_919_843_561);
        let edges = [0, 951_782_400_000, 951_868_799_999, 4_107_542_399_999];
        for millis in spread.chain(edges).chain([Timestamp::LAST_MILLIS]) {
            let expected =
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
                    .unwrap()
                    .format(FORMAT)
                    .unwrap();
            let written = Timestamp::from_unix_millis(millis).unwrap();
            assert_eq!(written.to_rfc3339(), expected, "{millis}");
            assert_eq!(
                serde_json::to_string(&written).unwrap(),
                format!("\"{expected}\"")
            );
        }
    }
}
