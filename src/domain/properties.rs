//! Property tests of the domain's parsers (issue 9 §4): an AMQP command body and a REST create
//! or update body, however malformed (arbitrary bytes, broken UTF-8, deep nesting, huge numbers,
//! wrong types, repeated and unknown members), never panics and is refused as
//! `invalid_argument` naming a field (or, for a well-formed command naming a session id that
//! cannot exist, `not_found`); valid input round-trips.

use proptest::{collection, prelude::*, sample};
use serde_json::{json, Map, Value};

use super::{Command, Error, Fields, IdempotencyKey, NewSession, SessionPatch};

/// Member names the parsers know, and some they do not.
const NAMES: &[&str] = &[
    "type",
    "session_id",
    "user_id",
    "device_id",
    "auth_code",
    "access_token",
    "refresh_token",
    "expiration_time",
    "user_email",
    "created_at",
    "colour",
    "",
];

const TYPES: &[&str] = &[
    "CreateSession",
    "GetSession",
    "ListSessions",
    "UpdateSession",
    "DeleteSession",
    "DeleteUserSessions",
    "createsession",
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => sample::select(NAMES).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

/// Any JSON value, nested up to 4 deep, with numbers of every size.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        sample::select(TYPES).prop_map(|t| json!(t)),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            collection::vec((name(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON object as text, possibly repeating a member name, with a plausible `type`.
fn object_text() -> impl Strategy<Value = String> {
    (
        proptest::option::of(sample::select(TYPES)),
        collection::vec((name(), json_value()), 0..8),
    )
        .prop_map(|(kind, members)| {
            let mut parts: Vec<String> = kind
                .map(|kind| format!("\"type\":\"{kind}\""))
                .into_iter()
                .collect();
            parts.extend(
                members
                    .into_iter()
                    .map(|(name, value)| format!("{}:{value}", json!(name))),
            );
            format!("{{{}}}", parts.join(","))
        })
}

/// Bytes a client could send: arbitrary, a mutated object, or an object with huge numbers or
/// deep nesting spliced in.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        collection::vec(any::<u8>(), 0..200),
        object_text().prop_map(String::into_bytes),
        (
            object_text(),
            collection::vec(any::<u8>(), 1..4),
            any::<prop::sample::Index>()
        )
            .prop_map(|(text, noise, at)| {
                let mut bytes = text.into_bytes();
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, noise);
                bytes
            }),
        (1usize..300)
            .prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        Just(
            br#"{"type":"CreateSession","user_id":"u","device_id":"d","expiration_time":1e400}"#
                .to_vec()
        ),
    ]
}

/// An error of a parser is `invalid_argument` naming what it is about (`<name>: …`).
fn names_a_field(error: &Error) -> bool {
    match error {
        Error::InvalidArgument(message) => message
            .split_once(": ")
            .is_some_and(|(name, _)| !name.is_empty()),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_amqp_body_is_a_command_or_a_named_refusal(body in body()) {
        match Command::parse(&body) {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(error) => prop_assert!(names_a_field(&error), "{error:?} for {:?}", String::from_utf8_lossy(&body)),
        }
    }

    #[test]
    fn any_rest_body_is_an_input_or_a_named_refusal(body in body()) {
        let create = Fields::from_slice(&body).and_then(NewSession::from_fields);
        let update = Fields::from_slice(&body).and_then(SessionPatch::from_fields);
        for result in [create.map(|_| ()), update.map(|_| ())] {
            if let Err(error) = result {
                prop_assert!(names_a_field(&error), "{error:?} for {:?}", String::from_utf8_lossy(&body));
            }
        }
    }

    #[test]
    fn any_message_id_property_is_taken_or_refused(id in ".{0,300}") {
        let parsed = IdempotencyKey::from_message_id(&id);
        prop_assert_eq!(parsed.is_some(), !id.is_empty() && id.len() <= 255);
        if let Some(parsed) = parsed {
            prop_assert_eq!(parsed.as_str(), id.as_str());
        }
    }

    #[test]
    fn any_idempotency_key_header_is_taken_or_refused(key in proptest::collection::vec(any::<u8>(), 0..300)) {
        let parsed = IdempotencyKey::from_header(&key);
        let inner = match key.as_slice() {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        let visible = (1..=255).contains(&inner.len()) && inner.iter().all(u8::is_ascii_graphic);
        prop_assert_eq!(parsed.is_ok(), visible);
        if let Ok(parsed) = parsed {
            prop_assert_eq!(parsed.as_str().as_bytes(), inner);
        }
    }

    #[test]
    fn a_valid_create_round_trips(
        user_id in "[^\\p{Cc}]{1,40}",
        device_id in "[^\\p{Cc}]{1,40}",
        access_token in proptest::option::of(".{0,80}"),
        expiration_time in proptest::option::of(any::<u32>()),
        user_email in proptest::option::of("[a-z.]{1,10}@[a-z]{1,10}"),
    ) {
        let mut body = json!({"type": "CreateSession", "user_id": user_id, "device_id": device_id});
        if let Some(token) = &access_token { body["access_token"] = json!(token); }
        if let Some(seconds) = expiration_time { body["expiration_time"] = json!(seconds); }
        if let Some(email) = &user_email { body["user_email"] = json!(email); }
        let Command::CreateSession(new) = Command::parse(body.to_string().as_bytes()).unwrap() else {
            panic!("not a create");
        };
        prop_assert_eq!(new.user_id.as_str(), user_id.as_str());
        prop_assert_eq!(new.device_id.as_str(), device_id.as_str());
        prop_assert_eq!(new.fields.access_token.as_ref().map(|t| t.expose().to_owned()), access_token);
        prop_assert_eq!(new.fields.expiration_time, expiration_time.map(u64::from));
        prop_assert_eq!(new.fields.user_email.as_ref().map(|e| e.as_str().to_owned()), user_email);
    }

    #[test]
    fn a_valid_update_round_trips(token in ".{0,80}", clear_email in any::<bool>()) {
        let id = format!("0a{}", "A".repeat(43));
        let mut body = json!({"type": "UpdateSession", "session_id": id, "refresh_token": token});
        if clear_email { body["user_email"] = Value::Null; }
        let Command::UpdateSession(parsed_id, patch) = Command::parse(body.to_string().as_bytes()).unwrap() else {
            panic!("not an update");
        };
        prop_assert_eq!(parsed_id.as_str(), id.as_str());
        prop_assert_eq!(patch.refresh_token.into_option().map(|t| t.expose().to_owned()), Some(token));
        prop_assert_eq!(matches!(patch.user_email, super::Field::Null), clear_email);
    }
}
