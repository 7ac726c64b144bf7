//! wisp's executors: how one invocation of a function runs. WebAssembly
//! components run on wasmtime ([`wasm`], the only user of wasmtime in wisp)
//! with a fresh instance per request; executables run as a fresh process per
//! request ([`process`]); HTTP apps run as scaled replicas that requests are
//! proxied to ([`app`]); processes of both start inside the [`sandbox`]; what
//! functions send out goes through [`outbound`], under the node's egress
//! policy, and guests reach their key-value stores through [`keyvalue`]. Each takes an [`Invocation`] with its deadline and answers a
//! response or an [`InvokeError`], which the server turns into a status in
//! one place. What a function writes goes to its [`Output`], line
//! by line with the call's id, and what a call uses is read into its [`Meter`].

pub mod app;
mod component;
pub mod endpoint;
pub mod keyvalue;
pub mod netns;
pub mod outbound;
pub mod process;
pub mod sandbox;
pub mod warm;
pub mod wasm;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
pub use wisp_core::telemetry::LogStream;

/// The error type of a response body stream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A function's response body, streamed.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
/// A function's response.
pub type Response = http::Response<ResponseBody>;

/// One request to a function, as the function will see it.
#[derive(Debug)]
pub struct Invocation {
    /// The call id, echoed in `X-Call-Id`.
    pub call_id: String,
    /// The HTTP method.
    pub method: http::Method,
    /// The path the function sees, starting with `/`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The request body.
    pub body: Input,
    /// Whether the caller takes a `process` or `wasm-stdio` function's
    /// STDOUT as it is written, as a pipeline's next step does: the head
    /// comes at once, and a failure after it ends the body with the
    /// [`InvokeError`] as its error instead of being a status.
    pub streamed: bool,
    /// How many in-process calls between functions led to this one
    /// (`*.wisp.internal`); 0 for a call from outside.
    pub depth: u32,
    /// When the invocation must be over, response body included.
    pub deadline: tokio::time::Instant,
    /// What the invocation used, as far as its executor can measure.
    pub meter: Arc<Meter>,
}

/// A request body: whole, or streamed as another function writes it (a
/// pipeline's previous step).
pub enum Input {
    /// A body read whole.
    Whole(Bytes),
    /// A body that streams.
    Streamed(ResponseBody),
}

impl Input {
    /// The body as a stream.
    pub fn into_body(self) -> ResponseBody {
        match self {
            Self::Whole(bytes) => full_body(bytes),
            Self::Streamed(body) => body,
        }
    }

    /// Writes the body into `writer` and closes it. A writer closed first (a
    /// function that exits without reading its input) or a body that fails
    /// (whoever streams it reports that) just ends the writing.
    pub async fn write_into(self, mut writer: impl tokio::io::AsyncWrite + Unpin) {
        use tokio::io::AsyncWriteExt as _;
        match self {
            Self::Whole(bytes) => {
                let _ = writer.write_all(&bytes).await;
            }
            Self::Streamed(mut body) => {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && writer.write_all(&data).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = writer.shutdown().await;
    }
}

impl From<Bytes> for Input {
    fn from(bytes: Bytes) -> Self {
        Self::Whole(bytes)
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole(bytes) => write!(f, "Whole({} bytes)", bytes.len()),
            Self::Streamed(_) => f.write_str("Streamed"),
        }
    }
}

/// What one invocation used. Executors fill in what they can measure: a
/// WebAssembly guest's linear memory, a process's peak RSS and CPU time.
#[derive(Debug, Default)]
pub struct Meter {
    memory_peak: AtomicU64,
    cpu_us: OnceLock<u64>,
}

impl Meter {
    /// Records that the invocation holds `bytes` of memory now.
    pub fn memory(&self, bytes: u64) {
        self.memory_peak.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Records the invocation's CPU time.
    pub fn cpu(&self, time: Duration) {
        let _ = self.cpu_us.set(time.as_micros() as u64);
    }

    /// The most memory seen, if measured.
    pub fn memory_peak(&self) -> Option<u64> {
        Some(self.memory_peak.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0)
    }

    /// The CPU time, if measured.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cpu_us.get().map(|&us| Duration::from_micros(us))
    }
}

/// Found in a response's extensions when the guest that answered may still
/// be running: a `wasm-http` guest streams its body after the head, and may
/// go on working after that. It is finished once the guest has returned,
/// trapped or been stopped at its deadline, so whoever counts live instances
/// (the server's concurrency slots) can hold the count until then.
#[derive(Debug, Clone)]
pub struct GuestRunning(tokio::sync::watch::Receiver<()>);

impl GuestRunning {
    /// A handle, and the token the guest's run holds until it is done.
    pub(crate) fn new() -> (tokio::sync::watch::Sender<()>, Self) {
        let (running, watched) = tokio::sync::watch::channel(());
        (running, Self(watched))
    }

    /// Whether the guest is done.
    pub fn is_finished(&self) -> bool {
        self.0.has_changed().is_err()
    }

    /// Completes once the guest is done.
    pub async fn finished(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

/// Takes a function's output, one line at a time.
pub trait OutputSink: Send + Sync {
    /// One line, without its newline; `call_id` is `None` for an HTTP app's own output.
    fn line(&self, call_id: Option<&str>, stream: LogStream, line: &str);
}

/// Where a function's output goes: one per function, shared by its invocations.
#[derive(Clone)]
pub struct Output(pub Arc<dyn OutputSink>);

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Output")
    }
}

impl Output {
    /// Hands over each non-empty line of `bytes`.
    pub fn lines(&self, call_id: Option<&str>, stream: LogStream, bytes: &[u8]) {
        for line in String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim_end)
            .filter(|line| !line.is_empty())
        {
            self.0.line(call_id, stream, line);
        }
    }
}

/// How an invocation failed. Each variant maps to one HTTP status in the server.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The guest trapped or the process crashed (502).
    #[error("the function failed: {0}")]
    Failed(String),
    /// The guest tried to use more memory than its limit (502).
    #[error("the function exceeded its memory limit of {0} bytes")]
    OutOfMemory(u64),
    /// A `wasm-stdio` or `process` function exited with a non-zero status (502).
    #[error("the function exited with status {0}")]
    Exit(i32),
    /// The function ran past its deadline and was stopped (504).
    #[error("the function timed out after {}ms", .0.as_millis())]
    Timeout(Duration),
    /// No instance slot is free right now (429).
    #[error("too many concurrent invocations: {0}")]
    Busy(String),
    /// The host could not start the function (500).
    #[error("could not start the function: {0}")]
    Internal(String),
}

/// Why an artifact cannot be prepared for running.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The artifact is not what the function kind needs (400).
    #[error("{0}")]
    InvalidArtifact(String),
    /// The host failed (500).
    #[error("{0}")]
    Internal(String),
}

/// A prepared function, ready to be invoked many times.
pub enum Executor {
    /// A `wasi:http` component.
    WasmHttp(wasm::HttpFunction),
    /// A `wasi:cli` command component.
    WasmStdio(wasm::StdioFunction),
    /// An executable.
    Process(process::ProcessFunction),
    /// An HTTP app's replicas.
    App(app::AppFunction),
}

impl Executor {
    /// Runs one invocation to completion or to its deadline.
    pub async fn invoke(&self, invocation: Invocation) -> Result<Response, InvokeError> {
        match self {
            Self::WasmHttp(function) => function.invoke(invocation).await,
            Self::WasmStdio(function) => function.invoke(invocation).await,
            Self::Process(function) => function.invoke(invocation).await,
            Self::App(function) => function.invoke(invocation).await,
        }
    }
}

/// A complete body.
fn full_body(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response with a complete body, as `wasm-stdio` and `process` functions give.
fn full_response(content_type: &str, body: Bytes) -> Response {
    let mut response = http::Response::new(full_body(body));
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// The environment the OpenFaaS watchdog gives a function: `Http_Method`,
/// `Http_Path`, `Http_Query`, `Http_X_Call_Id` and one `Http_<Header>` per
/// header, the header's name in canonical case with `-` as `_`.
pub fn watchdog_env(invocation: &Invocation) -> Vec<(String, String)> {
    let mut env = vec![
        ("Http_Method".to_owned(), invocation.method.to_string()),
        ("Http_Path".to_owned(), invocation.path.clone()),
        (
            "Http_Query".to_owned(),
            invocation.query.clone().unwrap_or_default(),
        ),
        ("Http_X_Call_Id".to_owned(), invocation.call_id.clone()),
    ];
    for (name, value) in &invocation.headers {
        let Ok(value) = value.to_str() else { continue };
        let canonical: Vec<String> = name
            .as_str()
            .split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect();
        let key = format!("Http_{}", canonical.join("_"));
        if !env.iter().any(|(existing, _)| *existing == key) {
            env.push((key, value.to_owned()));
        }
    }
    env
}

/// The content type of a `wasm-stdio` or `process` response: the function's
/// `content_type` variable (as the watchdog reads it) or plain text.
fn stdio_content_type(env: &[(String, String)]) -> String {
    env.iter()
        .find(|(key, _)| key == "content_type")
        .map_or_else(
            || "text/plain; charset=utf-8".to_owned(),
            |(_, value)| value.clone(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_names_headers_like_openfaas() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let invocation = Invocation {
            call_id: "abc".into(),
            method: http::Method::POST,
            path: "/a/b".into(),
            query: Some("x=1".into()),
            headers,
            body: Bytes::new().into(),
            streamed: false,
            depth: 0,
            deadline: tokio::time::Instant::now(),
            meter: Arc::default(),
        };
        let env = watchdog_env(&invocation);
        for expected in [
            ("Http_Method", "POST"),
            ("Http_Path", "/a/b"),
            ("Http_Query", "x=1"),
            ("Http_X_Call_Id", "abc"),
            ("Http_Content_Type", "text/plain"),
            ("Http_X_Forwarded_For", "10.0.0.1"),
        ] {
            assert!(
                env.contains(&(expected.0.into(), expected.1.into())),
                "{expected:?} in {env:?}"
            );
        }
    }
}
