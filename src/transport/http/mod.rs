//! The REST front end (contract §2) on warp: one filter takes every request, routes it by path
//! and method, turns it into a domain `Command` for the core and the outcome into JSON. Every
//! failure, including those warp itself would produce (no route, wrong method, bad or too large
//! body, wrong content type), becomes the contract's JSON error; the status mapping of errors is
//! in [`HttpError`] and nowhere else.

mod error;
mod openapi;
mod query;
mod server;

pub use error::HttpError;
pub use server::serve;

use query::Query;

use std::{convert::Infallible, panic::AssertUnwindSafe, sync::Arc, time::Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use serde::Serialize;
use warp::{
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    path::FullPath,
    reply::Response,
    Filter,
};

use crate::{
    callers::Callers,
    domain::{
        Caller, Command, Error, Fields, IdempotencyKey, NewSession, Outcome, SessionId,
        SessionPatch,
    },
    metrics::Metrics,
    service::SessionService,
    telemetry::Chain,
};

const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Tells whether the instance can serve: Redis reachable and RabbitMQ connected.
pub type ReadinessProbe =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, bool> + Send + Sync>;

/// What the handlers share.
pub struct HttpState {
    /// The core.
    pub service: SessionService,
    /// Where requests are counted.
    pub metrics: Arc<Metrics>,
    /// Who may call; none: protected mode, every request is [`Caller::anyone`]'s.
    pub callers: Callers,
    /// Answers `/readyz`.
    pub readiness: ReadinessProbe,
}

/// The whole REST API as one warp filter.
pub fn routes(
    state: Arc<HttpState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Bundled now, so that a broken description stops the start rather than a request.
    openapi::document();
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method, path: FullPath, query, headers, body| {
            let state = state.clone();
            async move {
                let request = Request {
                    method,
                    path: path.as_str().to_owned(),
                    query,
                    headers,
                };
                // A panic is a bug; it must neither take the connection down unanswered nor
                // print what the handler held (the panic hook logs its place, not its message).
                match AssertUnwindSafe(state.handle(request, body))
                    .catch_unwind()
                    .await
                {
                    Ok(response) => response,
                    Err(_) => {
                        tracing::error!("a request handler panicked; answered internal");
                        HttpError::from(Error::internal("a handler panicked")).into_response()
                    }
                }
            }
        })
        .recover(|rejection: warp::Rejection| async move {
            // The filter above matches every request; this maps anything warp still rejects.
            tracing::debug!(?rejection, "request rejected by warp");
            Ok::<_, Infallible>(
                HttpError::from(Error::internal("request rejected")).into_response(),
            )
        })
        .unify()
}

struct Request {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
}

/// The routes of the API, also the `route` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Metrics,
    OpenApi,
    Sessions,
    Session,
    Unknown,
}

impl Route {
    fn of(path: &str) -> (Self, Option<&str>) {
        match path {
            "/healthz" => (Self::Health, None),
            "/readyz" => (Self::Ready, None),
            "/metrics" => (Self::Metrics, None),
            "/openapi.json" => (Self::OpenApi, None),
            "/a01/session" => (Self::Sessions, None),
            _ => match path.strip_prefix("/a01/session/") {
                Some(id) if !id.is_empty() && !id.contains('/') => (Self::Session, Some(id)),
                _ => (Self::Unknown, None),
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Health => "/healthz",
            Self::Ready => "/readyz",
            Self::Metrics => "/metrics",
            Self::OpenApi => "/openapi.json",
            Self::Sessions => "/a01/session",
            Self::Session => "/a01/session/{id}",
            Self::Unknown => "unknown",
        }
    }

    /// The methods the route has: the `Allow` header of its 405 answers (RFC 9110 §15.5.6).
    fn allowed_methods(self) -> Option<&'static str> {
        match self {
            Self::Health | Self::Ready | Self::Metrics | Self::OpenApi => Some("GET"),
            Self::Sessions => Some("GET, POST, DELETE"),
            Self::Session => Some("GET, PATCH, DELETE"),
            Self::Unknown => None,
        }
    }
}

impl HttpState {
    async fn handle<S, B>(&self, request: Request, body: S) -> Response
    where
        S: Stream<Item = Result<B, warp::Error>> + Send,
        B: Buf,
    {
        let started = Instant::now();
        let (route, id) = Route::of(&request.path);
        let response = match self.route(&request, route, id, body).await {
            Ok(response) => response,
            Err(error) => {
                if let HttpError::Core(Error::Internal(cause) | Error::Unavailable(cause)) = &error
                {
                    tracing::error!(error = %Chain(cause.as_ref()), path = route.label(), "request failed");
                }
                error.into_response()
            }
        };
        let status = response.status().as_u16();
        let took = started.elapsed();
        self.metrics
            .record_request(route.label(), request.method.as_str(), status, took);
        tracing::debug!(method = %request.method, route = route.label(), status, ?took, "request");
        response
    }

    async fn route<S, B>(
        &self,
        request: &Request,
        route: Route,
        id: Option<&str>,
        body: S,
    ) -> Result<Response, HttpError>
    where
        S: Stream<Item = Result<B, warp::Error>> + Send,
        B: Buf,
    {
        let method = &request.method;
        let caller = if request.path == "/a01" || request.path.starts_with("/a01/") {
            self.authenticate(&request.headers)?
        } else {
            Caller::anyone()
        };
        let command = match (route, method) {
            (Route::Health, &Method::GET) => {
                Query::parse(&request.query, &[])?;
                return Ok(bytes_response(StatusCode::OK, "ok\n", PLAIN_TEXT));
            }
            (Route::Ready, &Method::GET) => {
                Query::parse(&request.query, &[])?;
                return Ok(if (self.readiness)().await {
                    bytes_response(StatusCode::OK, "ready\n", PLAIN_TEXT)
                } else {
                    bytes_response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n", PLAIN_TEXT)
                });
            }
            (Route::Metrics, &Method::GET) => {
                Query::parse(&request.query, &[])?;
                return Ok(bytes_response(
                    StatusCode::OK,
                    self.metrics.render(),
                    "text/plain; version=0.0.4; charset=utf-8",
                ));
            }
            (Route::OpenApi, &Method::GET) => {
                Query::parse(&request.query, &[])?;
                return Ok(bytes_response(
                    StatusCode::OK,
                    openapi::document(),
                    "application/json",
                ));
            }
            (Route::Unknown, _) => return Err(Error::NotFound("no such route".into()).into()),
            (Route::Sessions, &Method::POST) => {
                Query::parse(&request.query, &[])?;
                let fields = json_body(&request.headers, body).await?;
                Command::CreateSession(NewSession::from_fields(fields)?)
            }
            (Route::Sessions, &Method::GET) => {
                let (user_id, page) = Query::list(&request.query)?;
                Command::ListSessions(user_id, page)
            }
            (Route::Sessions, &Method::DELETE) => {
                let (user_id, except) = Query::delete_all(&request.query)?;
                Command::DeleteUserSessions(user_id, except)
            }
            (Route::Session, &Method::GET) => {
                Query::parse(&request.query, &[])?;
                Command::GetSession(session_id(id)?)
            }
            (Route::Session, &Method::PATCH) => {
                Query::parse(&request.query, &[])?;
                let fields = json_body(&request.headers, body).await?;
                let patch = SessionPatch::from_fields(fields)?;
                Command::UpdateSession(session_id(id)?, patch)
            }
            (Route::Session, &Method::DELETE) => {
                Query::parse(&request.query, &[])?;
                Command::DeleteSession(session_id(id)?)
            }
            (route, _) => {
                let allowed = route
                    .allowed_methods()
                    .expect("every route but Unknown (answered above) has methods");
                return Err(HttpError::MethodNotAllowed(allowed));
            }
        };
        let key = match command.changes() {
            true => idempotency_key(&request.headers)?,
            false => None,
        };
        let outcome = self
            .service
            .execute(&caller, &command, key.as_ref())
            .await?;
        Ok(match &outcome {
            Outcome::SessionCreated { session_id } => {
                let mut response = json_response(StatusCode::CREATED, &outcome);
                let location =
                    HeaderValue::from_str(&format!("/a01/session/{}", session_id.as_str()))
                        .expect("a session id is URL-safe base64, a valid header value");
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            _ => json_response(StatusCode::OK, &outcome),
        })
    }

    /// The caller of a request to `/a01/*`: the one whose token the bearer token is, or anyone
    /// when no caller is configured; no token, or one no caller has, is `unauthorized`.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, HttpError> {
        if self.callers.is_empty() {
            return Ok(Caller::anyone());
        }
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| {
                let (scheme, token) = value.as_bytes().split_at_checked(7)?;
                scheme
                    .eq_ignore_ascii_case(b"bearer ")
                    .then(|| token.trim_ascii())
            })
            .and_then(|token| self.callers.by_token(token))
            .cloned()
            .ok_or(HttpError::Core(Error::Unauthorized(
                "missing or unknown API token",
            )))
    }
}

/// The `Idempotency-Key` of a changing request, if it has one (contract §8.3); given twice, or
/// not 1–255 visible ASCII characters, it is `invalid_argument`.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Error> {
    let mut given = headers.get_all("idempotency-key").iter();
    let Some(value) = given.next() else {
        return Ok(None);
    };
    if given.next().is_some() {
        return Err(Error::InvalidArgument(
            "Idempotency-Key: given more than once".into(),
        ));
    }
    IdempotencyKey::from_header(value.as_bytes()).map(Some)
}

fn session_id(id: Option<&str>) -> Result<SessionId, Error> {
    SessionId::parse_existing(id.expect("Route::Session always comes with its id"))
}

/// Checks the content type and reads at most [`MAX_BODY_BYTES`] of the body as a JSON object.
async fn json_body<S, B>(headers: &HeaderMap, body: S) -> Result<Fields, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(HttpError::UnsupportedMediaType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(HttpError::PayloadTooLarge);
    }
    Ok(Fields::from_slice(&read_body(body).await?)?)
}

async fn read_body<S, B>(body: S) -> Result<Bytes, HttpError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|_| Error::InvalidArgument("body: could not be read".into()))?;
        if collected.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(HttpError::PayloadTooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let taken = part.len();
            chunk.advance(taken);
        }
    }
    Ok(collected.freeze())
}

/// A JSON response that no cache keeps.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body)
        .expect("a response body serializes: strings, numbers, lists and maps with string keys");
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn bytes_response(
    status: StatusCode,
    text: impl Into<Bytes>,
    content_type: &'static str,
) -> Response {
    let mut response = Response::new(text.into().into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
