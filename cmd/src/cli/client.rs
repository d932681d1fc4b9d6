//! The HTTP client of the REST API: one method per endpoint the CLI uses,
//! answers decoded into the API's own wire types (`sluice_api::types`).

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_api::types::*;

/// The default server, where `sluice standalone` listens.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:12345";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address `{0}`: expected a URL such as {DEFAULT_SERVER}")]
    BadServer(String),
    #[error(
        "cannot reach the Sluice server at {server}: {cause} \
         (is it running? `sluice standalone` starts one; --server or SLUICE_SERVER points elsewhere)"
    )]
    Unreachable { server: String, cause: String },
    /// The API refused the request and said why.
    #[error("{}", api_message(.0))]
    Api(ErrorDetail, StatusCode),
    /// An answer that is not the API's (a proxy, another service on the port).
    #[error("{request} answered {status}: {body}")]
    Unexpected { request: String, status: StatusCode, body: String },
    /// A log stream that broke off.
    #[error("{request}: {message}")]
    Stream { request: String, message: String },
    #[error("{request}: unreadable answer: {cause}")]
    Decode { request: String, cause: String },
}

impl ClientError {
    /// The API's error code (`not_found`, `conflict`, ...), if it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api(detail, _) => Some(&detail.code),
            _ => None,
        }
    }
}

/// The message as the API wrote it, with the offending field when the
/// message does not already name it.
fn api_message(detail: &ErrorDetail) -> String {
    match &detail.field {
        Some(field) if !detail.message.contains(field.as_str()) => format!("{field}: {}", detail.message),
        _ => detail.message.clone(),
    }
}

/// An answer: decoded, and as the JSON the server sent (for `--output json`).
pub struct Answer<T> {
    pub value: T,
    pub json: Value,
}

#[derive(Clone)]
pub struct Client {
    /// `…/api/v1`, without a trailing slash.
    base: Url,
    server: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `server` (`http://host:port`; the scheme
    /// may be left out).
    pub fn new(server: &str) -> Result<Client, ClientError> {
        let with_scheme =
            if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
        let mut base = Url::parse(&with_scheme).map_err(|_| ClientError::BadServer(server.to_owned()))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::BadServer(server.to_owned()));
        }
        base.path_segments_mut()
            .map_err(|_| ClientError::BadServer(server.to_owned()))?
            .pop_if_empty()
            .extend(["api", "v1"]);
        // reqwest is built without a TLS crypto provider; use ring (once
        // per process; a second install is refused harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("sluice-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS settings");
        Ok(Client { base, server: with_scheme.trim_end_matches('/').to_owned(), http })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Percent-encodes each segment: a name never changes the path's shape.
        url.path_segments_mut().expect("checked in new").extend(segments);
        url
    }

    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<Answer<T>, ClientError> {
        let request = request.build().expect("requests the CLI builds are well-formed");
        // `GET http://…/api/v1/…`, for messages.
        let described = format!("{} {}", request.method(), request.url());
        let response = self.http.execute(request).await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => ClientError::Api(error.error, status),
                Err(_) => ClientError::Unexpected { request: described, status, body: snippet(&body) },
            });
        }
        let json: Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Decode { request: described.clone(), cause: e.to_string() })?;
        let value = T::deserialize(&json).map_err(|e| ClientError::Decode { request: described, cause: e.to_string() })?;
        Ok(Answer { value, json })
    }

    fn unreachable(&self, error: reqwest::Error) -> ClientError {
        // reqwest's own message is generic ("error sending request"); the
        // innermost cause says what happened ("Connection refused").
        let mut cause: &dyn std::error::Error = &error;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let cause = if error.is_timeout() { "no answer in time".to_owned() } else { cause.to_string() };
        ClientError::Unreachable { server: self.server.clone(), cause }
    }

    fn request(&self, method: Method, segments: &[&str]) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(segments))
    }

    pub async fn create_project(&self, name: &str) -> Result<Answer<ProjectView>, ClientError> {
        let body = CreateProject { name: name.to_owned(), description: String::new(), params: Default::default() };
        self.call(self.request(Method::POST, &["projects"]).json(&body)).await
    }

    /// Stores a workflow document (`content_type`: `application/yaml` or
    /// `application/json`) as it was written.
    pub async fn put_workflow(
        &self,
        project: &str,
        name: &str,
        document: String,
        content_type: &str,
    ) -> Result<Answer<SavedWorkflowView>, ClientError> {
        let request = self
            .request(Method::PUT, &["projects", project, "workflows", name])
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(document);
        self.call(request).await
    }

    pub async fn run(&self, project: &str, workflow: &str, run: &RunRequest) -> Result<Answer<RunAccepted>, ClientError> {
        self.call(self.request(Method::POST, &["projects", project, "workflows", workflow, "runs"]).json(run)).await
    }

    /// A page of a task instance's log (`attempt`: its current one if unset).
    pub async fn log_page(&self, task: i64, attempt: Option<u32>, offset: u64, limit: u32) -> Result<Answer<TaskLogPage>, ClientError> {
        let mut url = self.url(&["task-instances", &task.to_string(), "log"]);
        url.query_pairs_mut().append_pair("offset", &offset.to_string()).append_pair("limit", &limit.to_string());
        if let Some(attempt) = attempt {
            url.query_pairs_mut().append_pair("attempt", &attempt.to_string());
        }
        self.call(self.http.get(url)).await
    }

    /// Follows a task instance's log; `on_line` gets each line as it is
    /// written. Returns once the attempt is over and every line was seen.
    pub async fn follow_log(&self, task: i64, attempt: Option<u32>, mut on_line: impl FnMut(&str)) -> Result<(), ClientError> {
        let mut url = self.url(&["task-instances", &task.to_string(), "log", "stream"]);
        if let Some(attempt) = attempt {
            url.query_pairs_mut().append_pair("attempt", &attempt.to_string());
        }
        // A task may run for days; the client's overall timeout is for
        // ordinary requests.
        let request = self.http.get(url).timeout(Duration::from_secs(365 * 86_400)).build().expect("requests the CLI builds are well-formed");
        let described = format!("{} {}", request.method(), request.url());
        let mut response = self.http.execute(request).await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => ClientError::Api(error.error, status),
                Err(_) => ClientError::Unexpected { request: described, status, body: snippet(&body) },
            });
        }
        let mut events = SseParser::default();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(e))? {
            for (event, data) in events.push(&chunk) {
                match event.as_str() {
                    "line" => on_line(&data),
                    "end" => return Ok(()),
                    "error" => return Err(ClientError::Stream { request: described, message: data }),
                    _ => {}
                }
            }
        }
        Err(ClientError::Stream { request: described, message: "the stream ended before the log did".into() })
    }

    pub async fn instance(&self, id: i64) -> Result<Answer<WorkflowInstanceView>, ClientError> {
        self.call(self.request(Method::GET, &["workflow-instances", &id.to_string()])).await
    }

    pub async fn instances(&self, filter: &InstanceQuery) -> Result<Answer<InstancePage>, ClientError> {
        let mut url = self.url(&["workflow-instances"]);
        {
            let mut query = url.query_pairs_mut();
            for (key, value) in [
                ("project", &filter.project),
                ("workflow", &filter.workflow),
                ("state", &filter.state),
                ("limit", &filter.limit),
                ("cursor", &filter.cursor),
            ] {
                if let Some(value) = value {
                    query.append_pair(key, value);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call(self.http.get(url)).await
    }

    pub async fn stop(&self, id: i64) -> Result<Answer<RequestAccepted>, ClientError> {
        self.call(self.request(Method::POST, &["workflow-instances", &id.to_string(), "stop"])).await
    }

    pub async fn kill(&self, task_instance: i64) -> Result<Answer<RequestAccepted>, ClientError> {
        self.call(self.request(Method::POST, &["task-instances", &task_instance.to_string(), "kill"])).await
    }

    /// `POST /workflow-instances/{id}/{action}`: `rerun`, `recover`,
    /// `pause`, `resume` (and `stop`).
    pub async fn instance_action(&self, id: i64, action: &str) -> Result<Answer<RequestAccepted>, ClientError> {
        self.call(self.request(Method::POST, &["workflow-instances", &id.to_string(), action])).await
    }

    pub async fn force_success(&self, task_instance: i64) -> Result<Answer<RequestAccepted>, ClientError> {
        self.call(self.request(Method::POST, &["task-instances", &task_instance.to_string(), "force-success"])).await
    }

    /// `POST …/backfill` without `dry_run`: the backfill is stored.
    pub async fn create_backfill(
        &self,
        project: &str,
        workflow: &str,
        request: &BackfillRequest,
    ) -> Result<Answer<BackfillAccepted>, ClientError> {
        let request = BackfillRequest { dry_run: None, ..request.clone() };
        self.call(self.request(Method::POST, &["projects", project, "workflows", workflow, "backfill"]).json(&request)).await
    }

    /// `POST …/backfill` with `dry_run`: the runs it would create.
    pub async fn preview_backfill(
        &self,
        project: &str,
        workflow: &str,
        request: &BackfillRequest,
    ) -> Result<Answer<BackfillPreview>, ClientError> {
        let request = BackfillRequest { dry_run: Some(true), ..request.clone() };
        self.call(self.request(Method::POST, &["projects", project, "workflows", workflow, "backfill"]).json(&request)).await
    }

    pub async fn backfill(&self, id: i64) -> Result<Answer<BackfillView>, ClientError> {
        self.call(self.request(Method::GET, &["backfills", &id.to_string()])).await
    }

    pub async fn stop_backfill(&self, id: i64) -> Result<Answer<BackfillStopped>, ClientError> {
        self.call(self.request(Method::POST, &["backfills", &id.to_string(), "stop"])).await
    }

    pub async fn schedule(&self, project: &str, workflow: &str) -> Result<Answer<ScheduleView>, ClientError> {
        self.call(self.request(Method::GET, &["projects", project, "workflows", workflow, "schedule"])).await
    }

    pub async fn schedule_online(&self, project: &str, workflow: &str, online: bool) -> Result<Answer<ScheduleView>, ClientError> {
        let switch = if online { "online" } else { "offline" };
        self.call(self.request(Method::POST, &["projects", project, "workflows", workflow, "schedule", switch])).await
    }

    pub async fn schedule_preview(
        &self,
        project: &str,
        workflow: &str,
        query: &PreviewQuery,
    ) -> Result<Answer<SchedulePreview>, ClientError> {
        let mut url = self.url(&["projects", project, "workflows", workflow, "schedule", "preview"]);
        {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in [("count", &query.count), ("after", &query.after)] {
                if let Some(value) = value {
                    pairs.append_pair(key, value);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call(self.http.get(url)).await
    }
}

/// The start of a body that is not the API's JSON, on one line.
/// Server-Sent Events from chunks as they arrive: `(event, data)` pairs.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let (mut event, mut data) = ("message".to_owned(), Vec::new());
            for line in String::from_utf8_lossy(&block).lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim_start().to_owned();
                } else if let Some(text) = line.strip_prefix("data:") {
                    data.push(text.strip_prefix(' ').unwrap_or(text).to_owned());
                }
            }
            // Comment-only blocks are keep-alives.
            if !data.is_empty() {
                events.push((event, data.join("\n")));
            }
        }
        events
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".into(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_become_the_api_base() {
        for (given, base) in [
            ("http://127.0.0.1:12345", "http://127.0.0.1:12345/api/v1"),
            ("http://127.0.0.1:12345/", "http://127.0.0.1:12345/api/v1"),
            ("localhost:8080", "http://localhost:8080/api/v1"),
            ("https://sluice.example.com/prefix/", "https://sluice.example.com/prefix/api/v1"),
        ] {
            assert_eq!(Client::new(given).unwrap().base.as_str(), base, "{given}");
        }
        for bad in ["ftp://x", "http://", "not a url"] {
            assert!(matches!(Client::new(bad), Err(ClientError::BadServer(_))), "{bad}");
        }
    }

    #[test]
    fn names_are_path_segments_never_paths() {
        let client = Client::new(DEFAULT_SERVER).unwrap();
        let url = client.url(&["projects", "a/b", "workflows", "x?y"]);
        assert_eq!(url.as_str(), "http://127.0.0.1:12345/api/v1/projects/a%2Fb/workflows/x%3Fy");
    }

    #[test]
    fn api_errors_name_their_field_once() {
        let detail = |message: &str, field: Option<&str>| ErrorDetail {
            code: "invalid_input".into(),
            message: message.into(),
            field: field.map(Into::into),
        };
        let text = |d| ClientError::Api(d, StatusCode::BAD_REQUEST).to_string();
        assert_eq!(text(detail("unknown field", Some("tasks[1].retires"))), "tasks[1].retires: unknown field");
        assert_eq!(text(detail("tasks[1].retires: unknown field", Some("tasks[1].retires"))), "tasks[1].retires: unknown field");
        assert_eq!(text(detail("workflow not found", None)), "workflow not found");
    }
}
