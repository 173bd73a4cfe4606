//! The dead-letter queue `<command queue>.dead` (contract §3, §8.4): what a dead-lettered command
//! becomes there. The worker dead-letters a command itself, publishing a copy with the values of
//! the secret fields replaced by `"[redacted]"` and acknowledging the original once the broker
//! has confirmed the copy, so that no plain token reaches the queue; the queue keeps a message
//! at most `SESSION_DEAD_LETTER_TTL_SEC`. (The broker's own dead-lettering of the command queue
//! stays behind it, for what the worker never takes, such as a message over a delivery limit.)
//!
//! # Format
//!
//! ```text
//! body     the command, with "auth_code", "access_token", "refresh_token" and "user_email"
//!          values "[redacted]"
//! headers  x-dead-letter-reason: invalid_argument | reply_to_refused | internal
//!          x-original-reply-to, x-original-user-id (when the command had them)
//!          x-original-size (a body over 64 KiB, which the copy leaves out)
//!          and the command's own headers, but CC and BCC (which would route the copy)
//! expiration  SESSION_DEAD_LETTER_TTL_SEC, in milliseconds
//! ```

use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable, ShortString},
    BasicProperties,
};
use serde_json::Value;

/// The fields whose values never reach the dead-letter queue.
pub const REDACTED_FIELDS: [&str; 4] = ["auth_code", "access_token", "refresh_token", "user_email"];

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Why a command was dead-lettered, as its `x-dead-letter-reason` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It cannot be understood (not JSON, unknown type, invalid fields).
    InvalidArgument,
    /// Its `reply_to` is not a queue replies may go to (contract §8.2).
    ReplyToRefused,
    /// Handling it failed in a way that retrying cannot mend (a handler panicked).
    Internal,
}

impl Reason {
    /// The reason as its header writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::ReplyToRefused => "reply_to_refused",
            Self::Internal => "internal",
        }
    }
}

/// The largest body a copy keeps (the contract's command size, §8.4): a larger one is
/// dead-lettered without its body (redacting would only make it larger), its size in a header.
pub const MAX_COPIED_BODY: usize = 64 * 1024;

/// The headers by which RabbitMQ routes a message to more queues (sender-selected
/// distribution): never copied, or the service would publish the copy wherever the command's
/// publisher named, with its own rights.
const ROUTING_HEADERS: [&str; 2] = ["CC", "BCC"];

/// The body and properties of the dead-letter copy of `delivery`, which expires after `ttl`
/// (also in a dead-letter queue declared without a TTL).
pub fn copy_of(
    delivery: &Delivery,
    reason: Reason,
    ttl: std::time::Duration,
) -> (Vec<u8>, BasicProperties) {
    let original = &delivery.properties;
    let kept: std::collections::BTreeMap<ShortString, AMQPValue> = original
        .headers()
        .iter()
        .flat_map(|headers| headers.inner())
        .filter(|(name, _)| !ROUTING_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let mut headers = FieldTable::from(kept);
    headers.insert(
        "x-dead-letter-reason".into(),
        AMQPValue::LongString(reason.as_str().into()),
    );
    // The copy is published by the service, so it cannot carry the publisher's user_id (the
    // broker would refuse it) nor be answered: both are kept as headers.
    for (name, value) in [
        ("x-original-reply-to", original.reply_to()),
        ("x-original-user-id", original.user_id()),
    ] {
        if let Some(value) = value {
            headers.insert(name.into(), AMQPValue::LongString(value.as_str().into()));
        }
    }
    let body = if delivery.data.len() > MAX_COPIED_BODY {
        headers.insert(
            "x-original-size".into(),
            AMQPValue::LongLongInt(delivery.data.len() as i64),
        );
        Vec::new()
    } else {
        redact(&delivery.data)
    };
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_expiration(ttl.as_millis().to_string().as_str().into())
        .with_headers(headers);
    if let Some(content_type) = original.content_type() {
        properties = properties.with_content_type(content_type.clone());
    }
    for (set, value) in [
        (
            BasicProperties::with_message_id as fn(BasicProperties, ShortString) -> BasicProperties,
            original.message_id(),
        ),
        (
            BasicProperties::with_correlation_id,
            original.correlation_id(),
        ),
        (BasicProperties::with_type, original.kind()),
    ] {
        if let Some(value) = value {
            properties = set(properties, value.clone());
        }
    }
    (body, properties)
}

/// `body` with the value of every member named in [`REDACTED_FIELDS`], at any depth, replaced by
/// [`REDACTED`], when it is JSON; a body that is not JSON has the string values that follow those
/// names replaced in its text, as far as they can be found. The rest is kept as it is.
pub fn redact(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            redact_value(&mut value);
            serde_json::to_vec(&value).expect("a JSON value serializes")
        }
        Err(_) => redact_text(body),
    }
}

fn redact_value(value: &mut Value) {
    match value {
        Value::Object(members) => {
            for (name, member) in members.iter_mut() {
                if REDACTED_FIELDS.contains(&name.as_str()) {
                    *member = Value::String(REDACTED.into());
                } else {
                    redact_value(member);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

/// Replaces, in text that does not parse as JSON (a trailing comma, say), each string that
/// follows `"<secret field>"` and a colon.
fn redact_text(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    while at < body.len() {
        let name = REDACTED_FIELDS.iter().find(|name| {
            let quoted = body[at..].strip_prefix(b"\"");
            quoted
                .and_then(|rest| rest.strip_prefix(name.as_bytes()))
                .is_some_and(|rest| rest.starts_with(b"\""))
        });
        let Some(name) = name else {
            out.push(body[at]);
            at += 1;
            continue;
        };
        let after_name = at + name.len() + 2;
        out.extend_from_slice(&body[at..after_name]);
        at = after_name;
        let mut value_at = at;
        while body
            .get(value_at)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b':')
        {
            value_at += 1;
        }
        if body.get(value_at) != Some(&b'"') || !body[at..value_at].contains(&b':') {
            continue;
        }
        // The value's end: the next quote not escaped, or the end of the body.
        let mut end = value_at + 1;
        while end < body.len() && body[end] != b'"' {
            end += if body[end] == b'\\' { 2 } else { 1 };
        }
        out.extend_from_slice(&body[at..value_at]);
        out.extend_from_slice(format!("\"{REDACTED}\"").as_bytes());
        at = (end + 1).min(body.len()).max(value_at + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_secret_value_replaced_at_any_depth() {
        let body = br#"{"type":"UpdateSession","access_token":"AT","refresh_token":{"x":"RT"},
            "nested":[{"auth_code":"AC"}],"user_email":"a@b","user_id":"u","device_id":"d"}"#;
        let redacted: Value = serde_json::from_slice(&redact(body)).unwrap();
        let text = redacted.to_string();
        for secret in ["AT", "RT", "AC", "a@b"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(redacted["access_token"], REDACTED);
        assert_eq!(redacted["refresh_token"], REDACTED);
        assert_eq!(redacted["nested"][0]["auth_code"], REDACTED);
        assert_eq!(redacted["user_id"], "u");
        // A member given twice, which the command parser refuses, is redacted too.
        let twice = br#"{"access_token":"first","access_token":"second"}"#;
        let text = String::from_utf8(redact(twice)).unwrap();
        assert!(
            !text.contains("first") && !text.contains("second"),
            "{text}"
        );
    }

    #[test]
    fn text_that_is_not_json_has_the_values_after_secret_names_replaced() {
        let body = br#"{"type": "CreateSession", "refresh_token" : "R\"T", "auth_code":"AC",}"#;
        let text = String::from_utf8(redact(body)).unwrap();
        assert!(!text.contains("R\\\"T") && !text.contains("AC"), "{text}");
        assert!(text.contains(r#""refresh_token" : "[redacted]""#), "{text}");
        assert!(text.contains("CreateSession"), "{text}");
        // An unterminated value is redacted to the end.
        let cut = br#"{"access_token": "abc"#;
        assert_eq!(redact(cut), br#"{"access_token": "[redacted]""#);
        // A name not followed by a colon and a string is left alone.
        assert_eq!(redact(br#"["access_token", 5]"#), br#"["access_token",5]"#);
        assert_eq!(redact(b"\"access_token\" x"), b"\"access_token\" x");
        assert_eq!(redact(b"not json at all"), b"not json at all");
    }
}
