//! The REST front end (contract §2): [`RestClient`] makes the six session calls under `/a01`
//! and returns the same typed results as the AMQP commands. It owns URLs, the bearer token and
//! the error body; the bodies themselves are the commands of [`crate::command`] without `type`.

use futures_util::{Stream, TryStreamExt, stream};
use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::command::{
    CreateSession, ErrorReply, Session, SessionCreated, SessionDeleted, SessionList,
    SessionSummary, UpdateSession, UserSessionsDeleted,
};

/// Why a REST call got no result.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The service answered with an error status and body `{"error": {"code", "message"}}`.
    #[error("HTTP {status} {code}: {message}")]
    Api {
        /// The HTTP status, e.g. 404.
        status: u16,
        /// The error code, e.g. `not_found`.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// No answer, or one that is not the JSON expected.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
}

/// The error body of every REST error response.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorReply,
}

/// A client of one service's REST front end.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use session_manager_testkit::{Instance, isolated_settings};
/// # let instance = Instance::start(isolated_settings()).await;
/// # let base_url = instance.url("");
/// use session_manager_client::{command::*, rest::{RestClient, RestError}};
///
/// let rest = RestClient::new(&base_url);
/// let create = CreateSession::new("alice", "phone").user_email("a@example.com");
/// let created = rest.create(&create).await?;
/// let session = rest.get(&created.session_id).await?;
/// assert_eq!(session.user_email.as_deref(), Some("a@example.com"));
/// rest.delete(&created.session_id).await?;
/// match rest.get(&created.session_id).await {
///     Err(RestError::Api { status: 404, code, .. }) => assert_eq!(code, "not_found"),
///     other => panic!("expected not_found, got {other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RestClient {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl RestClient {
    /// A client of the service at `base_url`, e.g. `http://127.0.0.1:8090`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` (the service's `SESSION_API_TOKEN`) with every call.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let base_url = instance.url("");
    /// use session_manager_client::rest::RestClient;
    ///
    /// let rest = RestClient::new(&base_url).with_token("the API token");
    /// assert!(rest.list("alice").await?.sessions.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// `POST /a01/session`: creates a session.
    pub async fn create(&self, command: &CreateSession) -> Result<SessionCreated, RestError> {
        let body = body_of(command, &[]);
        self.send(self.request(Method::POST, "/a01/session").json(&body))
            .await
    }

    /// `GET /a01/session/{id}`: the whole session.
    pub async fn get(&self, session_id: &str) -> Result<Session, RestError> {
        self.send(self.session(Method::GET, session_id)).await
    }

    /// `GET /a01/session?user_id=U`: the first page of the user's sessions, oldest first (at
    /// most 1000; `next` names the following page: see [`RestClient::sessions_of`] for all), each
    /// with its device fields.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let base_url = instance.url("");
    /// use session_manager_client::{command::*, rest::RestClient};
    ///
    /// let rest = RestClient::new(&base_url);
    /// let phone = CreateSession::new("alice", "phone")
    ///     .ip_address("::ffff:203.0.113.7")
    ///     .user_agent("ExampleApp/2.1");
    /// let phone = rest.create(&phone).await?;
    /// let laptop = rest.create(&CreateSession::new("alice", "laptop")).await?;
    /// let list = rest.list("alice").await?;
    /// let ids: Vec<_> = list.sessions.iter().map(|s| s.session_id.clone()).collect();
    /// assert_eq!(ids, [phone.session_id, laptop.session_id]);
    /// assert_eq!(list.sessions[0].ip_address.as_deref(), Some("203.0.113.7"));
    /// assert_eq!(list.sessions[0].user_agent.as_deref(), Some("ExampleApp/2.1"));
    /// assert_eq!(list.sessions[1].ip_address, None);
    /// assert!(list.next.is_none());
    ///
    /// let deleted = rest.delete_user("alice").await?;
    /// assert_eq!(deleted.session_ids.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, user_id: &str) -> Result<SessionList, RestError> {
        self.send(self.user(Method::GET, user_id)).await
    }

    /// `GET /a01/session?user_id=U&limit=N[&after=C]`: one page of the user's sessions; its
    /// `next` is the `after` of the page that follows.
    pub async fn list_page(
        &self,
        user_id: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<SessionList, RestError> {
        let mut request = self
            .user(Method::GET, user_id)
            .query(&[("limit", limit.to_string())]);
        if let Some(cursor) = after {
            request = request.query(&[("after", cursor)]);
        }
        self.send(request).await
    }

    /// Every session of `user_id`, oldest first, as a stream of pages of `page` sessions
    /// fetched one after the other (see [`RestClient::list_page`]).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let base_url = instance.url("");
    /// use futures_util::TryStreamExt;
    /// use session_manager_client::{command::*, rest::RestClient};
    ///
    /// let rest = RestClient::new(&base_url);
    /// let mut created = Vec::new();
    /// for device in ["phone", "laptop", "tablet"] {
    ///     created.push(rest.create(&CreateSession::new("bob", device)).await?.session_id);
    /// }
    /// let all: Vec<SessionSummary> = rest.sessions_of("bob", 2).try_collect().await?;
    /// assert_eq!(all.iter().map(|s| &s.session_id).collect::<Vec<_>>(), created.iter().collect::<Vec<_>>());
    ///
    /// // Sign out everywhere else: every session of bob but the first.
    /// let closed = rest.delete_user_except("bob", &created[0]).await?;
    /// assert_eq!(closed.session_ids, created[1..]);
    /// # Ok(()) }
    /// ```
    pub fn sessions_of<'a>(
        &'a self,
        user_id: &'a str,
        page: u32,
    ) -> impl Stream<Item = Result<SessionSummary, RestError>> + 'a {
        stream::try_unfold(Some(None::<String>), move |after| async move {
            let Some(after) = after else {
                return Ok::<_, RestError>(None);
            };
            let list = self.list_page(user_id, page, after.as_deref()).await?;
            let next = list.next.map(Some);
            Ok(Some((
                stream::iter(list.sessions.into_iter().map(Ok)),
                next,
            )))
        })
        .try_flatten()
    }

    /// `PATCH /a01/session/{id}`: changes the session; the whole session after the change.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let base_url = instance.url("");
    /// use session_manager_client::{command::*, rest::RestClient};
    ///
    /// let rest = RestClient::new(&base_url);
    /// let create = CreateSession::new("alice", "phone").auth_code("code").expiration_time(60);
    /// let created = rest.create(&create).await?;
    /// let update = UpdateSession::new(&created.session_id)
    ///     .auth_code(Change::Clear)
    ///     .expiration_time(Change::Set(3600));
    /// let session = rest.update(&update).await?;
    /// assert_eq!((session.auth_code, session.expiration_time), (None, Some(3600)));
    /// # Ok(()) }
    /// ```
    pub async fn update(&self, command: &UpdateSession) -> Result<Session, RestError> {
        let body = body_of(command, &["session_id"]);
        self.send(self.session(Method::PATCH, &command.session_id).json(&body))
            .await
    }

    /// `DELETE /a01/session/{id}`: ends the session.
    pub async fn delete(&self, session_id: &str) -> Result<SessionDeleted, RestError> {
        self.send(self.session(Method::DELETE, session_id)).await
    }

    /// `DELETE /a01/session?user_id=U`: ends all of the user's sessions.
    pub async fn delete_user(&self, user_id: &str) -> Result<UserSessionsDeleted, RestError> {
        self.send(self.user(Method::DELETE, user_id)).await
    }

    /// `DELETE /a01/session?user_id=U&except=S`: ends every session of the user but `keep`,
    /// which must be a live session of the user (else `not_found`, and nothing is closed).
    pub async fn delete_user_except(
        &self,
        user_id: &str,
        keep: &str,
    ) -> Result<UserSessionsDeleted, RestError> {
        self.send(
            self.user(Method::DELETE, user_id)
                .query(&[("except", keep)]),
        )
        .await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn session(&self, method: Method, session_id: &str) -> RequestBuilder {
        // A session id is URL-safe by construction; any other text is escaped as one segment.
        let mut url = reqwest::Url::parse("http://x/a01/session/").expect("a constant URL");
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .pop_if_empty()
            .push(session_id);
        self.request(method, url.path())
    }

    fn user(&self, method: Method, user_id: &str) -> RequestBuilder {
        self.request(method, "/a01/session")
            .query(&[("user_id", user_id)])
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, RestError> {
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let text = response.text().await?;
        let error = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            Err(_) => ErrorReply {
                code: status.canonical_reason().unwrap_or("unknown").to_owned(),
                message: text,
            },
        };
        Err(RestError::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        })
    }
}

/// The JSON body of a REST call: the command without `type` and the fields in the path.
fn body_of(command: &impl serde::Serialize, in_path: &[&str]) -> Value {
    let mut body = serde_json::to_value(command).expect("commands hold strings and integers only");
    if let Value::Object(fields) = &mut body {
        fields.remove("type");
        for field in in_path {
            fields.remove(*field);
        }
    }
    body
}
