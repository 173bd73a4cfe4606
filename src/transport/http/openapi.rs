//! `GET /openapi.json`: `schemas/openapi.json` with the JSON Schemas it references bundled in, so
//! that a client generator reading it from a URL needs no other file. The files are compiled
//! into the binary; the bundle is built once, at the first request.
//!
//! Bundling moves every schema file the document references as a whole into
//! `components.schemas` (under the component name that already stands for the whole file, else
//! under the file's name without `.json`), drops their `$id` and `$schema`, and rewrites each
//! `"$ref": "<file>"` to `"#/components/schemas/<name>"`; a `"$ref": "<file>#<pointer>"` (a
//! parameter's schema, say) is replaced by a copy of what it points to, which client generators
//! read more readily than a pointer into a component.

use std::{collections::BTreeMap, sync::OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value};

/// The description and every schema file, by file name.
const FILES: &[(&str, &str)] = &[
    (
        "openapi.json",
        include_str!("../../../schemas/openapi.json"),
    ),
    (
        "command.CreateSession.json",
        include_str!("../../../schemas/command.CreateSession.json"),
    ),
    (
        "command.DeleteSession.json",
        include_str!("../../../schemas/command.DeleteSession.json"),
    ),
    (
        "command.DeleteUserSessions.json",
        include_str!("../../../schemas/command.DeleteUserSessions.json"),
    ),
    (
        "command.GetSession.json",
        include_str!("../../../schemas/command.GetSession.json"),
    ),
    (
        "command.ListSessions.json",
        include_str!("../../../schemas/command.ListSessions.json"),
    ),
    (
        "command.UpdateSession.json",
        include_str!("../../../schemas/command.UpdateSession.json"),
    ),
    ("error.json", include_str!("../../../schemas/error.json")),
    (
        "event.SessionClosed.json",
        include_str!("../../../schemas/event.SessionClosed.json"),
    ),
    (
        "fields.CreateSession.json",
        include_str!("../../../schemas/fields.CreateSession.json"),
    ),
    (
        "fields.UpdateSession.json",
        include_str!("../../../schemas/fields.UpdateSession.json"),
    ),
    ("reply.json", include_str!("../../../schemas/reply.json")),
    (
        "result.Session.json",
        include_str!("../../../schemas/result.Session.json"),
    ),
    (
        "result.SessionCreated.json",
        include_str!("../../../schemas/result.SessionCreated.json"),
    ),
    (
        "result.SessionDeleted.json",
        include_str!("../../../schemas/result.SessionDeleted.json"),
    ),
    (
        "result.SessionList.json",
        include_str!("../../../schemas/result.SessionList.json"),
    ),
    (
        "result.UserSessionsDeleted.json",
        include_str!("../../../schemas/result.UserSessionsDeleted.json"),
    ),
];

/// The bundled document, serialized.
pub fn document() -> Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let files = FILES
                .iter()
                .map(|(name, text)| {
                    let value = serde_json::from_str(text)
                        .unwrap_or_else(|e| panic!("schemas/{name} is JSON: {e}"));
                    (*name, value)
                })
                .collect();
            let bundled = bundle(files).unwrap_or_else(|e| panic!("schemas/openapi.json: {e}"));
            Bytes::from(serde_json::to_vec(&bundled).expect("JSON serializes"))
        })
        .clone()
}

/// `openapi.json` of `files` with the schema files it reaches moved in.
fn bundle(mut files: BTreeMap<&str, Value>) -> Result<Value, String> {
    let mut document = files
        .remove("openapi.json")
        .ok_or("the description is missing")?;
    // A component that is exactly `{"$ref": "<file>"}` names that file.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (name, schema) in document["components"]["schemas"]
        .as_object()
        .ok_or("components.schemas is missing")?
    {
        let whole_file = schema.as_object().is_some_and(|members| members.len() == 1);
        if let (true, Some(Value::String(file))) = (whole_file, schema.get("$ref")) {
            names.insert(file.clone(), name.clone());
        }
    }
    let mut pending = Vec::new();
    rewrite(&mut document, &files, &mut names, &mut pending)?;
    let mut bundled = Map::new();
    while let Some(file) = pending.pop() {
        let name = names[&file].clone();
        if bundled.contains_key(&name) {
            continue;
        }
        let mut schema = files
            .get(file.as_str())
            .ok_or_else(|| format!("{file} is referenced but not compiled in"))?
            .clone();
        if let Value::Object(members) = &mut schema {
            members.remove("$id");
            members.remove("$schema");
        }
        rewrite(&mut schema, &files, &mut names, &mut pending)?;
        bundled.insert(name, schema);
    }
    let components = document["components"]["schemas"]
        .as_object_mut()
        .expect("checked above");
    for (name, schema) in bundled {
        components.insert(name, schema);
    }
    Ok(document)
}

/// Rewrites every reference to a whole file in `value` to its component, naming new files and
/// noting them in `pending`; a reference to a part of a file is replaced by a copy of that part.
fn rewrite(
    value: &mut Value,
    files: &BTreeMap<&str, Value>,
    names: &mut BTreeMap<String, String>,
    pending: &mut Vec<String>,
) -> Result<(), String> {
    match value {
        Value::Object(members) => {
            if let Some(Value::String(reference)) = members.get("$ref") {
                if let Some((file, pointer)) = reference
                    .split_once('#')
                    .filter(|(file, pointer)| !file.is_empty() && !pointer.is_empty())
                {
                    let part = files
                        .get(file)
                        .and_then(|schema| schema.pointer(pointer))
                        .ok_or_else(|| format!("{reference} resolves to nothing"))?
                        .clone();
                    // Keywords beside the reference still apply, beside the copy.
                    members.remove("$ref");
                    *value = if members.is_empty() {
                        part
                    } else {
                        members.insert("allOf".into(), Value::Array(vec![part]));
                        Value::Object(std::mem::take(members))
                    };
                    return rewrite(value, files, names, pending);
                }
                if !reference.starts_with('#') {
                    let file = reference.trim_end_matches('#').to_owned();
                    let name = names
                        .entry(file.clone())
                        .or_insert_with(|| file.trim_end_matches(".json").to_owned());
                    members.insert(
                        "$ref".into(),
                        Value::String(format!("#/components/schemas/{name}")),
                    );
                    pending.push(file);
                }
            }
            for member in members.values_mut() {
                rewrite(member, files, names, pending)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite(item, files, names, pending)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(members) => {
                if let Some(Value::String(reference)) = members.get("$ref") {
                    found.push(reference.clone());
                }
                members.values().for_each(|v| references(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, found)),
            _ => {}
        }
    }

    #[test]
    fn the_bundle_stands_alone_and_every_reference_resolves() {
        let document: Value = serde_json::from_slice(&document()).unwrap();
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for reference in found {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{reference} points outside the document"));
            assert!(
                document.pointer(pointer).is_some(),
                "{reference} resolves to nothing"
            );
        }
        let schemas = &document["components"]["schemas"];
        assert_eq!(schemas["Session"]["title"], "Session");
        assert!(schemas["Session"].get("$id").is_none());
        assert!(schemas["fields.CreateSession"]["properties"]["user_id"].is_object());
    }
}
