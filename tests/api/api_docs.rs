//! The API documents against their official meta-schemas, and everything the tests receive
//! against the documents: every REST response (through [`Http`], the tests' HTTP client) against
//! the OpenAPI response of its route, method and status, every AMQP reply against the AsyncAPI
//! reply of its command's operation, every event against the AsyncAPI event message. So the
//! documents cannot drift from the code.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use jsonschema::{Resource, Validator};
use serde_json::{json, Value};

const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
/// Where the documents and schemas live, as far as references are concerned: the base of the
/// schemas' `$id`s, so that the documents' relative references reach them.
const BASE: &str = "https://session-manager.example/schemas/";
const OPENAPI: &str = "openapi.json";
const ASYNCAPI: &str = "asyncapi.json";

struct Documents {
    openapi: Value,
    asyncapi: Value,
    /// Every schema file and both documents, by URI.
    resources: Vec<(String, Value)>,
    /// Validators by the URI they check against.
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

fn read(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn documents() -> &'static Documents {
    static DOCUMENTS: OnceLock<Documents> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        let resources = std::fs::read_dir(SCHEMAS)
            .unwrap()
            .filter_map(|entry| {
                let path = entry.unwrap().path();
                (path.extension()? == "json").then_some(path)
            })
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (format!("{BASE}{name}"), read(path.to_str().unwrap()))
            })
            .collect();
        Documents {
            openapi: read(&format!("{SCHEMAS}/{OPENAPI}")),
            asyncapi: read(&format!("{SCHEMAS}/{ASYNCAPI}")),
            resources,
            validators: Mutex::default(),
        }
    })
}

impl Documents {
    /// A validator for the schema at `pointer` in `document` (a file name under `schemas/`).
    fn validator(&self, document: &str, pointer: &str) -> Arc<Validator> {
        // A pointer in a URI fragment has its braces percent-encoded (RFC 6901 §6).
        let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
        let uri = format!("{BASE}{document}#{fragment}");
        let mut validators = self.validators.lock().unwrap();
        validators
            .entry(uri.clone())
            .or_insert_with(|| {
                let resources = self.resources.iter().map(|(uri, contents)| {
                    let resource = Resource::from_contents(contents.clone())
                        .unwrap_or_else(|e| panic!("{uri}: {e}"));
                    (uri.clone(), resource)
                });
                // Formats are assertions here (2020-12 leaves them annotations by default), so
                // that date-time, ipv4 and ipv6 are checked.
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .with_resources(resources)
                    .build(&json!({ "$ref": uri }))
                    .unwrap_or_else(|e| panic!("{uri} is not a usable schema: {e}"));
                Arc::new(validator)
            })
            .clone()
    }

    /// Why `instance` does not match the schema at `pointer` in `document`: empty when it does.
    fn mismatches(&self, document: &str, pointer: &str, instance: &Value) -> Vec<String> {
        self.validator(document, pointer)
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect()
    }

    /// The JSON pointer that a `{"$ref": "#…"}` at `pointer` leads to, or `pointer` itself.
    fn follow(document: &Value, pointer: &str) -> String {
        let mut pointer = pointer.to_owned();
        while let Some(Value::String(reference)) = document
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("{pointer} is not in the document"))
            .get("$ref")
        {
            pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{reference} leaves the document"))
                .to_owned();
        }
        pointer
    }
}

/// Why `instance` does not match the schema at `pointer` in `schemas/<file>`: empty when it does.
pub fn mismatches(file: &str, pointer: &str, instance: &Value) -> Vec<String> {
    documents().mismatches(file, pointer, instance)
}

/// `~` and `/` escaped for a JSON pointer (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Whether the OpenAPI path template (`/a01/session/{session_id}`) matches `path`.
fn path_matches(template: &str, path: &str) -> bool {
    let mut template = template.split('/');
    let mut path = path.split('/');
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t.starts_with('{') && t.ends_with('}') => {
                if p.is_empty() {
                    return false;
                }
            }
            (Some(t), Some(p)) if t == p => {}
            _ => return false,
        }
    }
}

/// Asserts that a REST response is one that `openapi.json` describes for its route, method and
/// status: its required headers, its content type and its body.
pub fn check_response(
    method: &reqwest::Method,
    path: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) {
    let docs = documents();
    let paths = docs.openapi["paths"].as_object().unwrap();
    let request = format!("{method} {path} answered {status}");
    // The API token is checked before the route, so any path under /a01 may answer 401.
    let under_token = path == "/a01" || path.starts_with("/a01/");
    let response = match paths.iter().find(|(t, _)| path_matches(t, path)) {
        None => match status {
            401 if under_token => "/components/responses/Unauthorized".to_owned(),
            404 => "/components/responses/NotFound".to_owned(),
            _ => panic!("{request}: a path that is no route must be 404"),
        },
        Some((template, item)) => {
            let method = method.as_str().to_ascii_lowercase();
            match item.get(&method) {
                None => match status {
                    401 if under_token => "/components/responses/Unauthorized".to_owned(),
                    405 => "/components/responses/MethodNotAllowed".to_owned(),
                    _ => panic!("{request}: {template} has no {method}, so 405"),
                },
                Some(operation) => {
                    let status = status.to_string();
                    assert!(
                        operation["responses"].get(&status).is_some(),
                        "{request}, which openapi.json does not list for {method} {template}"
                    );
                    format!("/paths/{}/{method}/responses/{status}", escape(template))
                }
            }
        }
    };
    let response = Documents::follow(&docs.openapi, &response);
    let described = docs.openapi.pointer(&response).unwrap();
    for name in described["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, _)| n)
    {
        let header = Documents::follow(
            &docs.openapi,
            &format!("{response}/headers/{}", escape(name)),
        );
        let value = headers.get(name.as_str());
        if docs.openapi.pointer(&header).unwrap()["required"] == true {
            assert!(value.is_some(), "{request} without its header {name}");
        }
        if let Some(value) = value {
            let value = Value::String(value.to_str().unwrap().to_owned());
            let errors = docs.mismatches(OPENAPI, &format!("{header}/schema"), &value);
            assert!(errors.is_empty(), "{request}: header {name}: {errors:?}");
        }
    }
    let Some(content) = described["content"].as_object() else {
        assert!(
            body.is_empty(),
            "{request} with a body openapi.json does not describe"
        );
        return;
    };
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .unwrap_or_else(|| panic!("{request} without a content type"))
        .trim();
    assert!(
        content.contains_key(content_type),
        "{request} as {content_type}, which openapi.json does not list"
    );
    let instance = if content_type.ends_with("json") {
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{request}: not JSON: {e}"))
    } else {
        Value::String(String::from_utf8(body.to_vec()).unwrap())
    };
    let pointer = format!("{response}/content/{}/schema", escape(content_type));
    let errors = docs.mismatches(OPENAPI, &pointer, &instance);
    assert!(
        errors.is_empty(),
        "{request}: {instance} does not match {pointer}: {errors:?}"
    );
}

/// The pointers of the payload schemas of an operation's `messages` (or of its reply's).
fn payloads(asyncapi: &Value, messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            let reference = message["$ref"].as_str().unwrap().strip_prefix('#').unwrap();
            let message = Documents::follow(asyncapi, reference);
            let payload = &asyncapi.pointer(&message).unwrap()["payload"];
            assert_eq!(
                payload["schemaFormat"], "application/schema+json;version=draft-2020-12",
                "{message}"
            );
            format!("{message}/payload/schema")
        })
        .collect()
}

/// The AsyncAPI operations with `action`, each with the payload pointers of its messages and of
/// its reply's messages.
fn operations(action: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    let asyncapi = &documents().asyncapi;
    asyncapi["operations"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, operation)| operation["action"] == action)
        .map(|(name, operation)| {
            let replies = match operation.get("reply") {
                Some(reply) => payloads(asyncapi, &reply["messages"]),
                None => Vec::new(),
            };
            (
                name.clone(),
                payloads(asyncapi, &operation["messages"]),
                replies,
            )
        })
        .collect()
}

/// Asserts that `instance` matches the schema at one of `pointers` of `asyncapi.json`.
fn assert_one_of<'a>(pointers: impl IntoIterator<Item = &'a String>, instance: &Value, what: &str) {
    let docs = documents();
    let errors: Vec<_> = pointers
        .into_iter()
        .map(|pointer| docs.mismatches(ASYNCAPI, pointer, instance))
        .collect();
    assert!(
        errors.iter().any(Vec::is_empty),
        "{instance} is not {what} in asyncapi.json: {errors:?}"
    );
}

/// Asserts that `reply` is a reply that `asyncapi.json` describes for `command`: the reply of
/// the one operation whose message the command is, or, for a message that is no valid command,
/// an error reply that every operation's reply allows.
pub fn check_reply(command: &[u8], reply: &Value) {
    let docs = documents();
    let operations = operations("receive");
    let command: Option<Value> = serde_json::from_slice(command).ok();
    let matching: Vec<_> = operations
        .iter()
        .filter(|(_, messages, _)| {
            command.as_ref().is_some_and(|command| {
                messages
                    .iter()
                    .any(|pointer| docs.mismatches(ASYNCAPI, pointer, command).is_empty())
            })
        })
        .collect();
    match matching.as_slice() {
        [(name, _, replies)] => {
            assert_one_of(replies, reply, &format!("a reply of {name} to {command:?}"));
        }
        [] => {
            assert_eq!(
                reply["error"]["code"], "invalid_argument",
                "{command:?} is no command of asyncapi.json, yet answered {reply}"
            );
            for (name, _, replies) in &operations {
                assert_one_of(replies, reply, &format!("a reply of {name}"));
            }
        }
        several => panic!("{command:?} is the message of several operations: {several:?}"),
    }
}

/// Asserts that `reply`, to a command the test does not know, is a reply of some operation.
pub fn check_any_reply(reply: &Value) {
    let operations = operations("receive");
    let replies = operations.iter().flat_map(|(_, _, replies)| replies);
    assert_one_of(replies, reply, "a reply of any operation");
}

/// Asserts that `event`, with its AMQP `properties` and `routing_key`, is a message of an
/// operation the service sends: its body, content type, type property, persistence and routing
/// key as the document gives them.
pub fn check_event(event: &Value, properties: &lapin::BasicProperties, routing_key: &str) {
    let asyncapi = &documents().asyncapi;
    let operations = operations("send");
    let messages = operations.iter().flat_map(|(_, messages, _)| messages);
    assert_one_of(messages, event, "a message the service sends");
    let (name, operation) = asyncapi["operations"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, operation)| operation["action"] == "send")
        .unwrap();
    let channel = Documents::follow(
        asyncapi,
        operation["channel"]["$ref"]
            .as_str()
            .unwrap()
            .strip_prefix('#')
            .unwrap(),
    );
    assert_eq!(
        asyncapi.pointer(&channel).unwrap()["address"],
        routing_key,
        "{name}"
    );
    let message = Documents::follow(
        asyncapi,
        operation["messages"][0]["$ref"]
            .as_str()
            .unwrap()
            .strip_prefix('#')
            .unwrap(),
    );
    let message = asyncapi.pointer(&message).unwrap();
    let property = |value: &Option<lapin::types::ShortString>| {
        value.as_ref().map(|v| Value::String(v.to_string()))
    };
    assert_eq!(
        property(properties.content_type()),
        Some(message["contentType"].clone())
    );
    assert_eq!(
        property(properties.kind()),
        Some(message["bindings"]["amqp"]["messageType"].clone())
    );
    let binding = &operation["bindings"]["amqp"];
    assert_eq!(
        Some(Value::from(*properties.delivery_mode().as_ref().unwrap())),
        Some(binding["deliveryMode"].clone())
    );
    assert_eq!(
        properties.timestamp().is_some(),
        binding["timestamp"] == true
    );
}

/// Asserts that a reply's content type is the one of the document's replies.
pub fn check_reply_properties(properties: &lapin::BasicProperties) {
    let asyncapi = &documents().asyncapi;
    let content_types: Vec<&Value> = asyncapi["components"]["messages"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.ends_with("Reply"))
        .map(|(_, message)| &message["contentType"])
        .collect();
    let given = properties.content_type().as_ref().map(|t| t.to_string());
    assert!(
        content_types
            .iter()
            .all(|content_type| content_type.as_str() == given.as_deref()),
        "a reply as {given:?}, the document says {content_types:?}"
    );
}

/// The tests' HTTP client: a `reqwest::Client` whose every response is checked by
/// [`check_response`] before the test sees it.
#[derive(Clone, Default)]
pub struct Http(reqwest::Client);

impl Http {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn request(&self, method: reqwest::Method, url: impl reqwest::IntoUrl) -> Request {
        Request(self.0.request(method, url))
    }

    pub fn get(&self, url: impl reqwest::IntoUrl) -> Request {
        self.request(reqwest::Method::GET, url)
    }

    pub fn post(&self, url: impl reqwest::IntoUrl) -> Request {
        self.request(reqwest::Method::POST, url)
    }

    pub fn patch(&self, url: impl reqwest::IntoUrl) -> Request {
        self.request(reqwest::Method::PATCH, url)
    }

    pub fn delete(&self, url: impl reqwest::IntoUrl) -> Request {
        self.request(reqwest::Method::DELETE, url)
    }
}

/// A request of [`Http`].
pub struct Request(reqwest::RequestBuilder);

impl Request {
    pub fn json(self, body: &impl serde::Serialize) -> Self {
        Self(self.0.json(body))
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        Self(self.0.body(body))
    }

    pub fn header(self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        Self(self.0.header(name.as_ref(), value.as_ref()))
    }

    pub fn query(self, query: &impl serde::Serialize) -> Self {
        Self(self.0.query(query))
    }

    pub fn try_clone(&self) -> Option<Self> {
        self.0.try_clone().map(Self)
    }

    pub fn bearer_auth(self, token: impl std::fmt::Display) -> Self {
        Self(self.0.bearer_auth(token))
    }

    /// Sends the request and checks the response against `openapi.json`; the response is
    /// given back whole.
    pub async fn send(self) -> reqwest::Result<reqwest::Response> {
        let (client, request) = self.0.build_split();
        let request = request?;
        let method = request.method().clone();
        let path = request.url().path().to_owned();
        let response = client.execute(request).await?;
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        check_response(&method, &path, status.as_u16(), &headers, &body);
        let mut rebuilt = warp::http::Response::builder()
            .status(status)
            .version(version)
            .body(body)
            .expect("the parts of a response just received");
        *rebuilt.headers_mut() = headers;
        Ok(reqwest::Response::from(rebuilt))
    }
}

fn meta_schema_errors(meta_schema: &str, document: &Value) -> Vec<String> {
    let meta_schema = read(&format!("{SCHEMAS}/vendor/{meta_schema}"));
    let validator = jsonschema::validator_for(&meta_schema).unwrap();
    validator
        .iter_errors(document)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect()
}

const OPENAPI_META: &str = "openapi-schemas-2.1.0/openapi-3.1.json";
const ASYNCAPI_META: &str = "asyncapi-specs-6.11.1/asyncapi-3.0.0.json";

#[test]
fn both_documents_are_valid_against_their_official_meta_schemas() {
    let docs = documents();
    for (document, meta_schema, fault) in [
        (
            &docs.openapi,
            OPENAPI_META,
            "/paths/~1healthz/get/responses/200/content",
        ),
        (
            &docs.asyncapi,
            ASYNCAPI_META,
            "/operations/getSession/action",
        ),
    ] {
        assert_eq!(
            meta_schema_errors(meta_schema, document),
            Vec::<String>::new()
        );
        // The meta-schema does find faults.
        let mut broken = document.clone();
        *broken.pointer_mut(fault).unwrap() = json!([]);
        assert!(
            !meta_schema_errors(meta_schema, &broken).is_empty(),
            "{meta_schema}"
        );
    }
}

#[test]
fn every_schema_the_documents_reference_is_reached_and_usable() {
    let docs = documents();
    for (document, value) in [(OPENAPI, &docs.openapi), (ASYNCAPI, &docs.asyncapi)] {
        let mut references = Vec::new();
        collect_references(value, "", &mut references);
        assert!(references.len() > 20, "{document}: {references:?}");
        for (at, reference) in references {
            match reference.strip_prefix('#') {
                Some(pointer) => assert!(
                    value.pointer(pointer).is_some(),
                    "{document}{at}: {reference} resolves to nothing"
                ),
                // A reference to a schema file: its validator builds (the file and the pointer
                // into it exist).
                None => {
                    docs.validator(document, &at);
                }
            }
        }
    }
}

fn collect_references(value: &Value, at: &str, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(members) => {
            if let Some(Value::String(reference)) = members.get("$ref") {
                found.push((at.to_owned(), reference.clone()));
            }
            for (name, member) in members {
                collect_references(member, &format!("{at}/{}", escape(name)), found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_references(item, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_checks_refuse_what_the_documents_do_not_describe() {
    let headers = |content_type: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("content-type", content_type.parse().unwrap());
        headers.insert("cache-control", "no-store".parse().unwrap());
        headers
    };
    let refused = |check: Box<dyn FnOnce() + std::panic::UnwindSafe>| {
        std::panic::catch_unwind(check).is_err()
    };
    let json = headers("application/json");
    let session_id = "A".repeat(43);
    let path = format!("/a01/session/{session_id}");
    // As described: a delete's answer.
    check_response(
        &reqwest::Method::DELETE,
        &path,
        200,
        &json,
        format!(r#"{{"session_id":"{session_id}"}}"#).as_bytes(),
    );
    let (p, j) = (path.clone(), json.clone());
    // A status the operation does not list (a DELETE has no body to refuse).
    assert!(refused(Box::new(move || check_response(
        &reqwest::Method::DELETE,
        &p,
        415,
        &j,
        br#"{"error":{"code":"unsupported_media_type","message":"m"}}"#
    ))));
    let (p, j) = (path.clone(), json.clone());
    // A body of the wrong shape.
    assert!(refused(Box::new(move || check_response(
        &reqwest::Method::DELETE,
        &p,
        200,
        &j,
        br#"{"id":"x"}"#
    ))));
    // A 201 without its Location.
    let j = json.clone();
    assert!(refused(Box::new(move || check_response(
        &reqwest::Method::POST,
        "/a01/session",
        201,
        &j,
        format!(r#"{{"session_id":"{}"}}"#, "B".repeat(43)).as_bytes()
    ))));
    // A response that a cache may keep.
    let mut cached = headers("text/plain; charset=utf-8");
    check_response(&reqwest::Method::GET, "/healthz", 200, &cached, b"ok");
    cached.insert("cache-control", "max-age=60".parse().unwrap());
    assert!(refused(Box::new(move || check_response(
        &reqwest::Method::GET,
        "/healthz",
        200,
        &cached,
        b"ok"
    ))));
    // A content type the response does not have.
    assert!(refused(Box::new(|| check_response(
        &reqwest::Method::GET,
        "/healthz",
        200,
        &headers("application/json"),
        b"\"ok\""
    ))));
    // A reply of another operation's shape, and an event that is not a SessionClosed.
    let get = br#"{"type":"GetSession","session_id":"x"}"#;
    let created = json!({"status": "ok", "result": {"session_id": "C".repeat(43)}});
    assert!(refused(Box::new(move || check_reply(get, &created))));
    assert!(refused(Box::new(|| check_event(
        &json!({"specversion": "1.0"}),
        &lapin::BasicProperties::default(),
        "session.closed"
    ))));
}

#[tokio::test]
async fn get_openapi_json_serves_the_document_standing_alone_without_a_token() {
    let mut settings = crate::helpers::isolated_settings();
    settings.callers = session_manager::callers::Callers::of_api_tokens(&[
        session_manager::config::SecretString::new("secret-token-of-thirty-two-chars"),
    ])
    .unwrap();
    let app = crate::helpers::spawn_app_with(settings).await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let served: Value = response.json().await.unwrap();
    assert_eq!(
        meta_schema_errors(OPENAPI_META, &served),
        Vec::<String>::new()
    );
    let mut references = Vec::new();
    collect_references(&served, "", &mut references);
    for (at, reference) in references {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {reference} leaves the served document"));
        assert!(served.pointer(pointer).is_some(), "{at}: {reference}");
    }
    let file = &documents().openapi;
    assert_eq!(
        served["paths"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        file["paths"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
    assert_eq!(served["info"], file["info"]);
    // The session the served document describes is the schema file's.
    let session = read(&format!("{SCHEMAS}/result.Session.json"));
    assert_eq!(
        served["components"]["schemas"]["Session"]["properties"],
        session["properties"]
    );

    // The operational routes take no query parameter either.
    for path in ["/openapi.json", "/healthz", "/readyz", "/metrics"] {
        let (status, body) = app
            .rest(reqwest::Method::GET, &format!("{path}?verbose=1"))
            .await;
        assert_eq!(status, 400, "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("verbose"), "{path}: {body}");
    }
}
