//! A typed client for the admin and invocation API, used by every client command.

use std::io::Read;

use anyhow::{Context as _, anyhow, bail};
use serde::{Serialize, de::DeserializeOwned};
use wisp_core::{
    api::{
        ArtifactInfo, DeleteFunction, ErrorBody, FunctionDeployment, FunctionStatus, ScaleRequest,
    },
    events::{CallInfo, CallList},
    kv::Page,
    telemetry::{Trace, Usage},
    tenancy::{
        CreatedToken, NamespaceInfo, NewNamespace, NewSecret, NewToken, SecretInfo, TokenInfo,
    },
};

use crate::commands::Remote;

/// A connection to one gateway.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A function's answer to `wisp invoke`.
pub struct Answer {
    pub status: u16,
    /// The status line's reason, such as `OK`.
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub call_id: Option<String>,
    pub body: Vec<u8>,
}

impl Client {
    /// A client for `remote`, with the token it resolves to.
    pub fn new(remote: &Remote) -> Self {
        Self {
            base: remote.url(),
            token: remote.token(),
            agent: ureq::Agent::new(),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the API's message.
    fn call(&self, result: Result<ureq::Response, ureq::Error>) -> anyhow::Result<ureq::Response> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message =
                    serde_json::from_str::<ErrorBody>(&text).map_or(text, |body| body.error);
                Err(anyhow!(ApiFailure { status, message }))
            }
            Err(ureq::Error::Transport(error)) => Err(anyhow!(
                "cannot reach wisp at {}: {error}; start a node with `wisp up`, or name one with --url or WISP_URL",
                self.base
            )),
        }
    }

    fn json<T: DeserializeOwned>(&self, response: ureq::Response) -> anyhow::Result<T> {
        response
            .into_json()
            .context("the gateway's answer is not the JSON expected")
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let response = self.call(self.request(method, path).send_json(body))?;
        self.json(response)
    }

    /// The node's description: its version, counters and queue.
    pub fn info(&self) -> anyhow::Result<wisp_core::api::SystemInfo> {
        self.get("/system/info", &[])
    }

    /// Every deployed function.
    pub fn functions(&self) -> anyhow::Result<Vec<FunctionStatus>> {
        let response = self.call(self.request("GET", "/system/functions").call())?;
        self.json(response)
    }

    /// Whether a node answers `/healthz` at the client's URL.
    pub fn healthy(&self) -> bool {
        self.agent
            .get(&format!("{}/healthz", self.base))
            .timeout(std::time::Duration::from_secs(2))
            .call()
            .is_ok()
    }

    /// The functions of one namespace.
    pub fn functions_in(&self, namespace: &str) -> anyhow::Result<Vec<FunctionStatus>> {
        self.get("/system/functions", &[("namespace", namespace.to_owned())])
    }

    /// One function, `None` when it is not deployed.
    pub fn function_if_any(&self, reference: &str) -> anyhow::Result<Option<FunctionStatus>> {
        match self.function(reference) {
            Ok(status) => Ok(Some(status)),
            Err(error)
                if error
                    .downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status == 404) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// The live nodes.
    pub fn nodes(&self) -> anyhow::Result<Vec<wisp_core::api::NodeInfo>> {
        self.get("/system/nodes", &[])
    }

    /// One function.
    pub fn function(&self, reference: &str) -> anyhow::Result<FunctionStatus> {
        let response = self.call(
            self.request("GET", &format!("/system/function/{reference}"))
                .call(),
        )?;
        self.json(response)
    }

    /// Deploys, or updates when the function already exists.
    pub fn deploy(&self, deployment: &FunctionDeployment) -> anyhow::Result<FunctionStatus> {
        match self.send("POST", "/system/functions", deployment) {
            Err(error)
                if error
                    .downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status == 409 && f.message.contains("already exists")) =>
            {
                self.send("PUT", "/system/functions", deployment)
            }
            result => result,
        }
    }

    /// Sets a `process-http` function's replica count; `None` hands it back to the autoscaler.
    pub fn scale(&self, reference: &str, replicas: Option<u32>) -> anyhow::Result<FunctionStatus> {
        let body = ScaleRequest {
            service_name: None,
            namespace: None,
            replicas,
        };
        self.send(
            "POST",
            &format!("/system/scale-function/{reference}"),
            &body,
        )
    }

    /// Removes a function.
    pub fn remove(&self, name: &str, namespace: Option<String>) -> anyhow::Result<()> {
        let body = DeleteFunction {
            function_name: name.to_owned(),
            namespace,
        };
        self.call(self.request("DELETE", "/system/functions").send_json(&body))?;
        Ok(())
    }

    /// Whether the gateway already has an artifact.
    pub fn has_artifact(&self, digest: &str) -> anyhow::Result<bool> {
        match self.call(
            self.request("GET", &format!("/system/artifacts/{digest}"))
                .call(),
        ) {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status == 404) =>
            {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Uploads an artifact of `size` bytes.
    pub fn upload(&self, body: impl Read, size: u64) -> anyhow::Result<ArtifactInfo> {
        let request = self
            .request("PUT", "/system/artifacts")
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &size.to_string());
        let response = self.call(request.send(body))?;
        self.json(response)
    }

    /// Calls a function, with the token so private functions answer (the
    /// gateway never hands it to the function); any status is an answer,
    /// not an error. `headers` may replace `Authorization`.
    /// Streams `body` to `path` with POST: the response, whatever its status.
    pub fn stream(&self, path: &str, body: impl std::io::Read) -> anyhow::Result<ureq::Response> {
        self.answered(self.request("POST", path).send(body))
    }

    /// The response, whatever its status, or why the node did not answer.
    fn answered(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> anyhow::Result<ureq::Response> {
        match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(response),
            Err(ureq::Error::Transport(error)) => bail!(
                "cannot reach wisp at {}: {error}; start a node with `wisp up`, or name one with --url or WISP_URL",
                self.base
            ),
        }
    }

    pub fn invoke(
        &self,
        path: &str,
        method: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> anyhow::Result<Answer> {
        let mut request = self.request(method, path);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let response = self.answered(request.send_bytes(body))?;
        let status = response.status();
        let reason = response.status_text().to_owned();
        let headers = response
            .headers_names()
            .into_iter()
            .flat_map(|name| {
                let values: Vec<String> =
                    response.all(&name).into_iter().map(str::to_owned).collect();
                values.into_iter().map(move |value| (name.clone(), value))
            })
            .collect();
        let call_id = response.header("x-call-id").map(str::to_owned);
        let mut body = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut body)
            .context("read the response")?;
        Ok(Answer {
            status,
            reason,
            headers,
            call_id,
            body,
        })
    }

    /// Async calls, newest first, filtered by the query string `query`.
    pub fn calls(&self, query: &[(&str, String)]) -> anyhow::Result<CallList> {
        self.get("/system/calls", query)
    }

    /// One async call; `function` (`name.namespace`) picks one when several share the id.
    pub fn async_call(&self, id: &str, function: Option<&str>) -> anyhow::Result<CallInfo> {
        let mut request = self.request("GET", &format!("/system/calls/{id}"));
        if let Some(function) = function {
            request = request.query("function", function);
        }
        let response = self.call(request.call())?;
        self.json(response)
    }

    /// A GET of `path` with `query`, answered as JSON.
    fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<T> {
        let mut request = self.request("GET", path);
        for (name, value) in query {
            request = request.query(name, value);
        }
        let response = self.call(request.call())?;
        self.json(response)
    }

    /// Log lines as newline-delimited JSON, streamed (for as long as the
    /// gateway sends when `follow` is in `query`).
    pub fn logs(&self, query: &[(&str, String)]) -> anyhow::Result<impl std::io::BufRead> {
        let mut request = self.request("GET", "/system/logs");
        for (name, value) in query {
            request = request.query(name, value);
        }
        let response = self.call(request.call())?;
        Ok(std::io::BufReader::new(response.into_reader()))
    }

    /// The trace a call belongs to.
    pub fn trace(&self, call_id: &str) -> anyhow::Result<Trace> {
        self.get(&format!("/system/traces/{call_id}"), &[])
    }

    /// Usage totals per function.
    pub fn usage(&self, query: &[(&str, String)]) -> anyhow::Result<Vec<Usage>> {
        self.get("/system/usage", query)
    }

    /// The namespaces the token may see.
    pub fn namespaces(&self) -> anyhow::Result<Vec<NamespaceInfo>> {
        self.get("/system/namespaces", &[("detail", "true".to_owned())])
    }

    /// Creates a namespace.
    pub fn create_namespace(&self, request: &NewNamespace) -> anyhow::Result<NamespaceInfo> {
        self.send("POST", "/system/namespaces", request)
    }

    /// Removes an empty namespace.
    pub fn remove_namespace(&self, name: &str) -> anyhow::Result<()> {
        self.call(
            self.request("DELETE", &format!("/system/namespaces/{name}"))
                .call(),
        )?;
        Ok(())
    }

    /// Tokens, filtered by the query string `query`.
    pub fn tokens(&self, query: &[(&str, String)]) -> anyhow::Result<Vec<TokenInfo>> {
        self.get("/system/tokens", query)
    }

    /// Creates a token; the answer is the only place it is ever shown.
    pub fn create_token(&self, request: &NewToken) -> anyhow::Result<CreatedToken> {
        self.send("POST", "/system/tokens", request)
    }

    /// Revokes a token.
    pub fn revoke_token(&self, id: &str) -> anyhow::Result<()> {
        self.call(
            self.request("DELETE", &format!("/system/tokens/{id}"))
                .call(),
        )?;
        Ok(())
    }

    /// Secrets (names, never values), filtered by the query string `query`.
    pub fn secrets(&self, query: &[(&str, String)]) -> anyhow::Result<Vec<SecretInfo>> {
        self.get("/system/secrets", query)
    }

    /// Creates a secret, or replaces the value of an existing one.
    pub fn put_secret(&self, request: &NewSecret, replace: bool) -> anyhow::Result<SecretInfo> {
        self.send(
            if replace { "PUT" } else { "POST" },
            "/system/secrets",
            request,
        )
    }

    /// Removes a secret.
    pub fn remove_secret(&self, name: &str, namespace: Option<&str>) -> anyhow::Result<()> {
        let mut request = self.request("DELETE", &format!("/system/secrets/{name}"));
        if let Some(namespace) = namespace {
            request = request.query("namespace", namespace);
        }
        self.call(request.call())?;
        Ok(())
    }

    /// A request to key `key` of key-value store `store` (the store itself
    /// when `None`), in `namespace` (`default` when `None`).
    fn kv_request(
        &self,
        method: &str,
        store: &str,
        key: Option<&str>,
        namespace: Option<&str>,
        cursor: Option<u64>,
    ) -> ureq::Request {
        let mut path = format!("/system/kv/{}", encode(store));
        if let Some(key) = key {
            path.push('/');
            path.push_str(&encode(key));
        }
        let mut request = self.request(method, &path);
        if let Some(namespace) = namespace {
            request = request.query("namespace", namespace);
        }
        if let Some(cursor) = cursor {
            request = request.query("cursor", &cursor.to_string());
        }
        request
    }

    /// The value of a key, as stored.
    pub fn kv_get(
        &self,
        store: &str,
        key: &str,
        namespace: Option<&str>,
    ) -> anyhow::Result<Vec<u8>> {
        let response = self.call(
            self.kv_request("GET", store, Some(key), namespace, None)
                .call(),
        )?;
        let mut value = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut value)
            .context("read the value from the gateway")?;
        Ok(value)
    }

    /// Sets a key to `value`.
    pub fn kv_set(
        &self,
        store: &str,
        key: &str,
        namespace: Option<&str>,
        value: &[u8],
    ) -> anyhow::Result<()> {
        self.call(
            self.kv_request("PUT", store, Some(key), namespace, None)
                .set("Content-Type", "application/octet-stream")
                .send_bytes(value),
        )?;
        Ok(())
    }

    /// Removes a key.
    pub fn kv_remove(&self, store: &str, key: &str, namespace: Option<&str>) -> anyhow::Result<()> {
        self.call(
            self.kv_request("DELETE", store, Some(key), namespace, None)
                .call(),
        )?;
        Ok(())
    }

    /// Every key of a store, page after page.
    pub fn kv_keys(&self, store: &str, namespace: Option<&str>) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let response = self.call(
                self.kv_request("GET", store, None, namespace, cursor)
                    .call(),
            )?;
            let page: Page = self.json(response)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// The key-value stores of a namespace that hold a key.
    pub fn kv_stores(&self, namespace: Option<&str>) -> anyhow::Result<Vec<String>> {
        let query: Vec<_> = namespace
            .map(|namespace| ("namespace", namespace.to_owned()))
            .into_iter()
            .collect();
        self.get("/system/kv", &query)
    }

    /// Queues a finished call again; `function` as for [`Self::async_call`].
    pub fn retry_call(&self, id: &str, function: Option<&str>) -> anyhow::Result<CallInfo> {
        let mut request = self.request("POST", &format!("/system/calls/{id}/retry"));
        if let Some(function) = function {
            request = request.query("function", function);
        }
        let response = self.call(request.call())?;
        self.json(response)
    }
}

/// `text` as one segment of a URL path: everything but unreserved characters
/// percent-encoded, `/` included.
fn encode(text: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// The API answered with an error status.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)?;
        if self.status == 401 {
            write!(
                f,
                "; give a token with --token or WISP_TOKEN, or save one with `wisp login URL --token TOKEN`"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}
