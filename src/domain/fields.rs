//! Reading a JSON object field by field, so that every rejection names the field it is about.
//! Used by the domain parsers of create and update inputs and of AMQP commands; it knows JSON
//! shapes, not session rules.

use std::fmt;

use serde::{
    de::{self, Deserializer, MapAccess, SeqAccess, Visitor},
    Deserialize,
};
use serde_json::{error::Category, Map, Number, Value};

use super::Error;

/// One field of an input object: absent, explicitly `null`, or a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field<T> {
    /// Not in the object.
    Absent,
    /// Given as `null`.
    Null,
    /// Given with a value.
    Value(T),
}

impl<T> Field<T> {
    /// The value, treating `null` like an absent field.
    pub fn into_option(self) -> Option<T> {
        match self {
            Field::Value(value) => Some(value),
            Field::Absent | Field::Null => None,
        }
    }

    /// Whether the field was not in the object.
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// The field with a reference to its value.
    pub fn as_ref(&self) -> Field<&T> {
        match self {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(value) => Field::Value(value),
        }
    }

    /// Maps the value, keeping `Absent` and `Null`.
    pub fn map<U>(self, map: impl FnOnce(T) -> U) -> Field<U> {
        match self {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(value) => Field::Value(map(value)),
        }
    }

    /// Applies a fallible parser to the value, keeping `Absent` and `Null`.
    pub fn try_map<U>(self, parse: impl FnOnce(T) -> Result<U, Error>) -> Result<Field<U>, Error> {
        Ok(match self {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(value) => Field::Value(parse(value)?),
        })
    }
}

/// Parses JSON in which no object repeats a member name (I-JSON, RFC 7493), as every input of the
/// service is read: request bodies, commands, the callers file.
pub fn strict_json(body: &[u8]) -> Result<Value, Error> {
    let Strict(value) = serde_json::from_slice(body).map_err(|error| match error.classify() {
        // Only `Strict` raises data errors: it takes every JSON type.
        Category::Data => Error::InvalidArgument(error.to_string()),
        Category::Io | Category::Syntax | Category::Eof => {
            Error::InvalidArgument(format!("body: is not valid JSON: {error}"))
        }
    })?;
    Ok(value)
}

/// The fields of one JSON object, taken out one by one; [`Fields::finish`] rejects the rest.
#[derive(Debug)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// Parses a request body, which must be one JSON object in which no object repeats a
    /// member name (I-JSON, RFC 7493; contract §7.7): a parser that kept the first or the last
    /// would let a gateway and this service disagree about whose session it is.
    pub fn from_slice(body: &[u8]) -> Result<Self, Error> {
        Self::from_value(strict_json(body)?)
    }

    /// The object of a JSON value, which must be one.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        match value {
            Value::Object(map) => Ok(Self(map)),
            _ => Err(Error::InvalidArgument("body: must be a JSON object".into())),
        }
    }

    /// Whether every field has been taken.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes a string field.
    pub fn string(&mut self, name: &str) -> Result<Field<String>, Error> {
        match self.0.remove(name) {
            None => Ok(Field::Absent),
            Some(Value::Null) => Ok(Field::Null),
            Some(Value::String(value)) => Ok(Field::Value(value)),
            Some(_) => Err(Error::InvalidArgument(format!("{name}: must be a string"))),
        }
    }

    /// Takes a string field that must be present and not `null`.
    pub fn required_string(&mut self, name: &str) -> Result<String, Error> {
        self.string(name)?
            .into_option()
            .ok_or_else(|| Error::InvalidArgument(format!("{name}: is required")))
    }

    /// Takes a non-negative integer field.
    pub fn unsigned(&mut self, name: &str) -> Result<Field<u64>, Error> {
        match self.0.remove(name) {
            None => Ok(Field::Absent),
            Some(Value::Null) => Ok(Field::Null),
            Some(Value::Number(number)) => number
                .as_u64()
                .map(Field::Value)
                .ok_or_else(|| Error::InvalidArgument(format!("{name}: must be an integer >= 0"))),
            Some(_) => Err(Error::InvalidArgument(format!(
                "{name}: must be an integer >= 0"
            ))),
        }
    }

    /// Rejects any field that was not taken.
    pub fn finish(self) -> Result<(), Error> {
        match self.0.keys().min() {
            None => Ok(()),
            Some(name) => Err(Error::InvalidArgument(format!(
                "{}: unknown field",
                shown_name(name)
            ))),
        }
    }
}

/// A name the client chose, as an error message starts with it: as it is when it is a plain
/// name (1–64 of `A-Z a-z 0-9 _ -`), else quoted, escaped and cut at 64 characters, so that an
/// empty, huge or odd name still reads as a name.
pub fn shown_name(name: &str) -> String {
    let plain = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        return name.to_owned();
    }
    let cut: String = name.chars().take(64).collect();
    let quoted = serde_json::to_string(&cut).expect("a string serializes");
    if cut.len() < name.len() {
        format!("{quoted}…")
    } else {
        quoted
    }
}

/// A JSON value whose objects, at any depth, never repeat a member name; the error of a repeated
/// one starts with its name.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // serde_json only hands over finite numbers.
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                return Err(de::Error::custom(format_args!(
                    "{}: member name repeated in an object",
                    shown_name(&name)
                )));
            }
            let Strict(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(body: &str) -> String {
        match Fields::from_slice(body.as_bytes()) {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_repeated_member_name_is_invalid_and_named_at_any_depth() {
        let message = invalid(r#"{"user_id":"a","device_id":"d","user_id":"b"}"#);
        assert!(
            message.starts_with("user_id: member name repeated"),
            "{message}"
        );
        let message = invalid(r#"{"x":[{"deep":1,"deep":2}]}"#);
        assert!(
            message.starts_with("deep: member name repeated"),
            "{message}"
        );
    }

    #[test]
    fn values_of_every_json_type_are_kept() {
        let body = r#"{"s":"x\u00e9","i":-3,"u":18446744073709551615,"f":1.5,"b":true,"n":null,"a":[1,{"k":"v"}]}"#;
        let Fields(members) = Fields::from_slice(body.as_bytes()).unwrap();
        assert_eq!(
            Value::Object(members),
            serde_json::from_str::<Value>(body).unwrap()
        );
    }

    #[test]
    fn what_is_not_json_says_so() {
        assert!(invalid("{\"a\":").starts_with("body: is not valid JSON"));
        assert!(invalid("[1]").contains("object"));
    }
}
