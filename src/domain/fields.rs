//! Reading a JSON object field by field, so that every rejection names the field it is about.
//! Used by the domain parsers of create and update inputs and of AMQP commands; it knows JSON
//! shapes, not session rules.

use serde_json::{Map, Value};

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

    /// Applies a fallible parser to the value, keeping `Absent` and `Null`.
    pub fn try_map<U>(self, parse: impl FnOnce(T) -> Result<U, Error>) -> Result<Field<U>, Error> {
        Ok(match self {
            Field::Absent => Field::Absent,
            Field::Null => Field::Null,
            Field::Value(value) => Field::Value(parse(value)?),
        })
    }
}

/// The fields of one JSON object, taken out one by one; [`Fields::finish`] rejects the rest.
#[derive(Debug)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// Parses a request body, which must be one JSON object.
    pub fn from_slice(body: &[u8]) -> Result<Self, Error> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|error| Error::InvalidArgument(format!("body is not valid JSON: {error}")))?;
        Self::from_value(value)
    }

    /// The object of a JSON value, which must be one.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        match value {
            Value::Object(map) => Ok(Self(map)),
            _ => Err(Error::InvalidArgument("body must be a JSON object".into())),
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
            Some(name) => Err(Error::InvalidArgument(format!("{name}: unknown field"))),
        }
    }
}
