//! Pipelines: functions run as one, each step's output streaming into the
//! next step's input as it is produced (STDOUT into STDIN, a response body
//! into a request body), with back-pressure and nothing held whole between
//! steps. Each step is a call of its own function, under its own limits,
//! slots and deadline, traced as a child of the pipeline's call.
//!
//! The decision a reader must know: a pipeline's outcome is known only once
//! it has ended, yet its output may be larger than anything worth holding.
//! So the first [`HEAD_BUFFER`] bytes of the last step's output are held
//! back. A pipeline that ends within them answers with its true outcome: the
//! first failing step's status, with an error that names the step. One whose
//! output goes on past them commits to the last step's status and streams;
//! a step that fails after that ends the body with an error, so the client
//! sees a cut-off response, never a clean one.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use axum::{
    http::{StatusCode, header},
    response::IntoResponse as _,
};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use wisp_core::{
    FunctionKind,
    spec::{DEFAULT_PARALLELISM, Join, MapStep, Split, Step, TeeStep},
    telemetry::CallSource,
};
use wisp_runtime::{BoxError, Input, Invocation, InvokeError, ResponseBody};

use crate::{
    ApiError,
    dispatch::{self, Admission},
    node::{Deployed, Node, split_reference},
};

/// How much of the last step's output is held back before the head is sent.
const HEAD_BUFFER: usize = 256 << 10;
/// How much of a failed step's own answer is quoted in the error.
const QUOTED: usize = 512;

/// Runs a pipeline's steps: the head once the outcome is known or the output
/// is past [`HEAD_BUFFER`]. A step's failure is an answer (its status, an
/// error naming it), not an `Err`: that is for the pipeline itself.
pub(crate) async fn run(
    node: &Arc<Node>,
    pipeline: &Deployed,
    invocation: Invocation,
    source: CallSource,
) -> Result<wisp_runtime::Response, InvokeError> {
    let body_read = Arc::new(AtomicBool::new(false));
    let mut response = run_steps(node, pipeline, invocation, source, &body_read).await?;
    // A failure answered before the client's body was read to its end (the
    // steps that would have read it are stopped) leaves the rest of it on
    // the connection: it cannot take another request, and says so.
    if !response.status().is_success() && !body_read.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

async fn run_steps(
    node: &Arc<Node>,
    pipeline: &Deployed,
    invocation: Invocation,
    source: CallSource,
    body_read: &Arc<AtomicBool>,
) -> Result<wisp_runtime::Response, InvokeError> {
    let outcome = Arc::new(Outcome::default());
    let Invocation {
        call_id,
        method,
        path,
        query,
        mut headers,
        body,
        deadline,
        depth,
        ..
    } = invocation;
    // Each step gets a body of another length than the caller sent.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let mut call = Template {
        node: node.clone(),
        namespace: pipeline.spec.namespace.clone(),
        method,
        path,
        query,
        headers,
        deadline,
        depth,
        source,
    };
    // Every step's functions, checked before any runs.
    let mut resolved = Vec::new();
    for (index, step) in pipeline.spec.steps.iter().enumerate() {
        let at = At::step(index, step);
        let functions: Result<Vec<_>, _> = step
            .functions()
            .iter()
            .map(|reference| call.resolve(&at, reference))
            .collect();
        match functions {
            Ok(functions) => resolved.push(functions),
            Err(failure) => return Ok(failure.answer(pipeline)),
        }
    }
    let mut input = match body {
        Input::Streamed(body) => {
            let incoming = Incoming {
                body,
                ended: body_read.clone(),
                read: 0,
                limit: dispatch::body_limit(node, pipeline),
                timeout: node.config.body_read_timeout,
                deadline: Box::pin(tokio::time::sleep(node.config.body_read_timeout)),
            };
            let watched = Watched {
                body: incoming.boxed_unsync(),
                at: At {
                    index: None,
                    name: "the request body".to_owned(),
                },
                outcome: outcome.clone(),
            };
            Input::Streamed(watched.boxed_unsync())
        }
        whole => {
            body_read.store(true, Ordering::Relaxed);
            whole
        }
    };
    // The first failure in time is the answer: a step may fail at its head
    // because one before it failed while streaming.
    let answer = |failure: Failure| outcome.first().unwrap_or(failure).answer(pipeline);
    let mut last = None;
    for ((index, step), functions) in pipeline.spec.steps.iter().enumerate().zip(resolved) {
        let at = At::step(index, step);
        let step_call_id = format!("{call_id}-{}", index + 1);
        let (parts, body) = match step {
            Step::Function(_) => {
                match call.streamed(&at, &functions[0], step_call_id, input).await {
                    Ok(streamed) => streamed,
                    Err(failure) => return Ok(answer(failure)),
                }
            }
            Step::Map(map) => {
                let function = functions[0].clone();
                let content_type = match map.split {
                    Split::Lines => "text/plain; charset=utf-8",
                    Split::Json => "application/json",
                };
                let body = mapped(Arc::new(call.clone()), function, map, step_call_id, input);
                (answer_parts(content_type), body)
            }
            Step::Tee(tee) => {
                let input = match collect(input, node.config.max_body_size).await {
                    Ok(input) => input,
                    Err(error) => return Ok(answer(at.failed(error))),
                };
                match call.tee(&at, tee, &functions, &step_call_id, input).await {
                    Ok(teed) => teed,
                    Err(failure) => return Ok(answer(failure)),
                }
            }
        };
        if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
            call.headers
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        let watched = Watched {
            body,
            at: at.clone(),
            outcome: outcome.clone(),
        };
        input = Input::Streamed(watched.boxed_unsync());
        last = Some((parts, at));
    }
    if let Some(failure) = outcome.first() {
        return Ok(failure.answer(pipeline));
    }
    let (Some((parts, last)), Input::Streamed(mut output)) = (last, input) else {
        unreachable!("a pipeline has at least one step, and each streams its output");
    };

    // Hold the head back until the outcome is known or the output is large.
    let mut held = BytesMut::new();
    let ended = loop {
        match output.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    held.extend_from_slice(&data);
                }
                if held.len() > HEAD_BUFFER {
                    break false;
                }
            }
            // Recorded by the step's watch already, unless something else broke.
            Some(Err(error)) => return Ok(answer(Failure::of_body(&last, &error))),
            None => break true,
        }
    };
    if let Some(failure) = outcome.first() {
        return Ok(failure.answer(pipeline));
    }
    let mut response = axum::http::Response::from_parts(parts, ResponseBody::default());
    let body = Tail {
        held: Some(held.freeze()).filter(|held| !held.is_empty()),
        rest: (!ended).then_some(output),
        outcome,
    };
    *response.body_mut() = body.boxed_unsync();
    Ok(response)
}

/// The head of an answer a `map` or `tee` step makes of its calls' outputs.
fn answer_parts(content_type: &'static str) -> axum::http::response::Parts {
    let mut response = axum::http::Response::new(());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(content_type),
    );
    response.into_parts().0
}

/// What every call of a pipeline's steps shares: the caller's request but
/// its body, and the pipeline's deadline.
#[derive(Clone)]
struct Template {
    node: Arc<Node>,
    namespace: String,
    method: axum::http::Method,
    path: String,
    query: Option<String>,
    headers: axum::http::HeaderMap,
    deadline: tokio::time::Instant,
    depth: u32,
    source: CallSource,
}

impl Template {
    /// The function a step names, if the pipeline may call it: a private
    /// function of another namespace may not be a step.
    fn resolve(&self, at: &At, reference: &str) -> Result<Arc<Deployed>, Failure> {
        let (name, namespace) = match reference.split_once('.') {
            Some(_) => split_reference(reference),
            None => (reference, self.namespace.as_str()),
        };
        let Some(function) = self.node.function(namespace, name) else {
            return Err(at.failed(StepError::new(
                StatusCode::BAD_GATEWAY,
                format!("function {name} is not deployed in namespace {namespace}"),
            )));
        };
        if function.spec.private && function.spec.namespace != self.namespace {
            return Err(at.failed(StepError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "function {name} is private to namespace {namespace}, and the pipeline is in {}",
                    self.namespace
                ),
            )));
        }
        if function.spec.kind == FunctionKind::Pipeline {
            return Err(at.failed(StepError::new(
                StatusCode::BAD_GATEWAY,
                format!("function {name} is a pipeline itself: list its steps instead"),
            )));
        }
        Ok(function)
    }

    /// One call of `function`, admitted, until its response head.
    async fn invoke(
        &self,
        function: &Arc<Deployed>,
        call_id: String,
        body: Input,
        streamed: bool,
    ) -> Result<(wisp_runtime::Response, Admission), StepError> {
        let admission = dispatch::admit(&self.node, function)
            .await
            .map_err(|rejected| StepError::new(StatusCode::TOO_MANY_REQUESTS, rejected.message))?;
        let invocation = Invocation {
            call_id,
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            body,
            streamed,
            depth: self.depth,
            deadline: self
                .deadline
                .min(tokio::time::Instant::now() + function.spec.timeout.0),
            meter: Arc::default(),
        };
        let response = dispatch::invoke(&self.node, function, invocation, self.source)
            .await
            .map_err(|error| StepError::new(dispatch::status_of(&error), error.to_string()))?;
        if !response.status().is_success() {
            let status = response.status();
            let quoted = quote(response.into_body()).await;
            return Err(StepError::new(
                status,
                format!("answered {status}: {quoted}"),
            ));
        }
        Ok((response, admission))
    }

    /// A function step: its output streams on, and it holds its slots until
    /// that output ends.
    async fn streamed(
        &self,
        at: &At,
        function: &Arc<Deployed>,
        call_id: String,
        input: Input,
    ) -> Result<(axum::http::response::Parts, ResponseBody), Failure> {
        let (response, admission) = self
            .invoke(function, call_id, input, true)
            .await
            .map_err(|error| at.failed(error))?;
        // Its slots are held until its output ends and its guest, if one
        // may still run, is done.
        let (parts, body) = dispatch::hold(response, admission).into_parts();
        Ok((parts, body.map_err(Into::into).boxed_unsync()))
    }

    /// One call of `function` with a whole body, its whole output back: a
    /// `map` item or a `tee` branch.
    async fn whole(
        &self,
        function: &Arc<Deployed>,
        call_id: String,
        body: Bytes,
    ) -> Result<Bytes, StepError> {
        let (response, _admission) = self
            .invoke(function, call_id, Input::Whole(body), false)
            .await?;
        collect(
            Input::Streamed(response.into_body()),
            self.node.config.max_body_size,
        )
        .await
    }

    /// A `tee` step: the whole input to each function at once, the outputs joined.
    async fn tee(
        &self,
        at: &At,
        tee: &TeeStep,
        functions: &[Arc<Deployed>],
        call_id: &str,
        input: Bytes,
    ) -> Result<(axum::http::response::Parts, ResponseBody), Failure> {
        let mut branches = Vec::new();
        for (branch, function) in functions.iter().enumerate() {
            let call_id = format!("{call_id}.{}", branch + 1);
            let input = input.clone();
            branches.push(async move { self.whole(function, call_id, input).await });
        }
        // At once; the first that fails, in the order listed, is the answer.
        let mut outputs = Vec::new();
        for (output, reference) in futures_util::future::join_all(branches)
            .await
            .into_iter()
            .zip(&tee.tee)
        {
            outputs.push(output.map_err(|error| at.failed(error.of(reference)))?);
        }
        let (content_type, joined) = match tee.join {
            Join::Concat => ("text/plain; charset=utf-8", outputs.concat()),
            Join::Json => {
                let object: serde_json::Map<String, serde_json::Value> = tee
                    .tee
                    .iter()
                    .zip(&outputs)
                    .map(|(name, output)| (name.clone(), as_json(output)))
                    .collect();
                let text = serde_json::to_vec(&object).expect("JSON values serialize");
                ("application/json", text)
            }
        };
        Ok((
            answer_parts(content_type),
            Input::Whole(joined.into()).into_body(),
        ))
    }
}

/// A `map` step's output: the input split into items as it streams in, the
/// function called on each, `parallelism` at a time, outputs in input order.
fn mapped(
    call: Arc<Template>,
    function: Arc<Deployed>,
    map: &MapStep,
    call_id: String,
    input: Input,
) -> ResponseBody {
    let (mut sender, channel) = http_body_util::Channel::new(1);
    let map = map.clone();
    tokio::spawn(async move {
        if let Err(error) = run_map(&call, &function, &map, &call_id, input, &mut sender).await {
            sender.abort(Box::new(error));
        }
    });
    channel.boxed_unsync()
}

async fn run_map(
    call: &Arc<Template>,
    function: &Arc<Deployed>,
    map: &MapStep,
    call_id: &str,
    input: Input,
    sender: &mut http_body_util::channel::Sender<Bytes, BoxError>,
) -> Result<(), StepError> {
    let limit = call.node.config.max_body_size;
    let parallelism = map.parallelism.unwrap_or(DEFAULT_PARALLELISM) as usize;
    let mut items = Items::new(map.split, limit);
    let mut body = input.into_body();
    let mut ended = false;
    if map.split == Split::Json {
        items.json(collect(Input::Streamed(body), limit).await?)?;
        body = ResponseBody::default();
        ended = true;
    }
    let mut pending: VecDeque<Aborting<Result<Bytes, StepError>>> = VecDeque::new();
    let mut started = 0usize;
    let mut done = 0usize;
    let mut joined = Joined::new(map.split);
    loop {
        while pending.len() < parallelism
            && let Some(item) = items.next(ended)
        {
            started += 1;
            let (call, function) = (call.clone(), function.clone());
            let call_id = format!("{call_id}.{started}");
            pending.push_back(Aborting(tokio::spawn(async move {
                call.whole(&function, call_id, item).await
            })));
        }
        if pending.is_empty() && ended {
            break;
        }
        let front = async {
            match pending.front_mut() {
                Some(task) => (&mut task.0).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            output = front => {
                pending.pop_front();
                done += 1;
                let output = output
                    .unwrap_or_else(|error| Err(StepError::internal(error)))
                    .map_err(|error| error.of(&format!("item {done}")))?;
                if sender.send_data(joined.piece(&output)).await.is_err() {
                    // Nobody reads on: the pipeline is over.
                    return Ok(());
                }
            }
            frame = body.frame(), if !ended => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        items.push(&data)?;
                    }
                }
                Some(Err(error)) => {
                    return Err(StepError::new(StatusCode::BAD_GATEWAY, error.to_string()));
                }
                None => ended = true,
            },
        }
    }
    let _ = sender.send_data(joined.end()).await;
    Ok(())
}

/// A `map` step's input, split into items as it comes.
struct Items {
    split: Split,
    limit: u64,
    buffer: BytesMut,
    queued: VecDeque<Bytes>,
}

impl Items {
    fn new(split: Split, limit: u64) -> Self {
        Self {
            split,
            limit,
            buffer: BytesMut::new(),
            queued: VecDeque::new(),
        }
    }

    /// More input; a line longer than the body limit is refused.
    fn push(&mut self, data: &[u8]) -> Result<(), StepError> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() as u64 > self.limit && !self.buffer.contains(&b'\n') {
            return Err(StepError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a line is longer than the limit of {}",
                    wisp_core::ByteSize(self.limit)
                ),
            ));
        }
        Ok(())
    }

    /// The elements of a JSON array, each an item.
    fn json(&mut self, input: Bytes) -> Result<(), StepError> {
        let array: Vec<Box<serde_json::value::RawValue>> =
            serde_json::from_slice(&input).map_err(|error| {
                StepError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the input is not a JSON array: {error}"),
                )
            })?;
        self.queued = array
            .into_iter()
            .map(|item| Bytes::copy_from_slice(item.get().as_bytes()))
            .collect();
        Ok(())
    }

    /// The next whole item: a line without its line break (the last one
    /// once the input has ended), or the next element of the JSON array.
    fn next(&mut self, ended: bool) -> Option<Bytes> {
        if self.split == Split::Json {
            return self.queued.pop_front();
        }
        if let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line = self.buffer.split_to(newline + 1);
            line.truncate(newline);
            if line.ends_with(b"\r") {
                line.truncate(newline - 1);
            }
            return Some(line.freeze());
        }
        (ended && !self.buffer.is_empty()).then(|| self.buffer.split().freeze())
    }
}

/// A `map` step's outputs joined: lines, or a JSON array.
struct Joined {
    split: Split,
    first: bool,
}

impl Joined {
    fn new(split: Split) -> Self {
        Self { split, first: true }
    }

    fn piece(&mut self, output: &[u8]) -> Bytes {
        let first = std::mem::replace(&mut self.first, false);
        match self.split {
            Split::Lines => {
                let mut line = output.to_vec();
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                line.into()
            }
            Split::Json => {
                let mut piece = if first { b"[".to_vec() } else { b",".to_vec() };
                piece.extend(serde_json::to_vec(&as_json(output)).expect("JSON values serialize"));
                piece.into()
            }
        }
    }

    fn end(&mut self) -> Bytes {
        match (self.split, self.first) {
            (Split::Lines, _) => Bytes::new(),
            (Split::Json, true) => Bytes::from_static(b"[]"),
            (Split::Json, false) => Bytes::from_static(b"]"),
        }
    }
}

/// An output as JSON: itself when it is JSON, else a string.
fn as_json(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(output).into_owned()))
}

/// A body read whole, up to `limit` bytes.
async fn collect(input: Input, limit: u64) -> Result<Bytes, StepError> {
    let mut body = input.into_body();
    let mut whole = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|error| StepError::new(StatusCode::BAD_GATEWAY, error.to_string()))?;
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
        if whole.len() as u64 > limit {
            return Err(StepError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the input is larger than {}", wisp_core::ByteSize(limit)),
            ));
        }
    }
    Ok(whole.freeze())
}

/// A task stopped when its handle is dropped: a failed step stops the rest.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where in a pipeline a failure happened: a step, or the request body.
#[derive(Debug, Clone)]
struct At {
    index: Option<usize>,
    name: String,
}

impl At {
    fn step(index: usize, step: &Step) -> Self {
        Self {
            index: Some(index),
            name: step.to_string(),
        }
    }

    fn failed(&self, error: StepError) -> Failure {
        Failure {
            at: self.clone(),
            status: error.status,
            message: error.message,
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(index) => write!(f, "step {} ({})", index + 1, self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The client's body on its way into a pipeline, under the bounds a
/// function's body has: the body limit, and `--body-read-timeout` for the whole of it.
struct Incoming {
    body: ResponseBody,
    /// Set once the body is read to its end.
    ended: Arc<AtomicBool>,
    read: u64,
    limit: u64,
    timeout: std::time::Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.read += frame.data_ref().map_or(0, |data| data.len() as u64);
                if self.read > self.limit {
                    let limit = wisp_core::ByteSize(self.limit);
                    return Poll::Ready(Some(Err(StepError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("it is larger than the limit of {limit}"),
                    )
                    .into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(StepError::new(
                StatusCode::BAD_REQUEST,
                format!("it could not be read: {error}"),
            )
            .into()))),
            Poll::Ready(None) => {
                self.ended.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let timeout = wisp_core::HumanDuration(self.timeout);
                    Poll::Ready(Some(Err(StepError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("it was not received within {timeout}"),
                    )
                    .into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Why a step's call failed: the status it answers with, and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct StepError {
    status: StatusCode,
    message: String,
}

impl StepError {
    fn new(status: StatusCode, message: String) -> Self {
        Self { status, message }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }

    /// The error, saying which of the step's calls it was.
    fn of(self, which: &str) -> Self {
        Self::new(self.status, format!("{which}: {}", self.message))
    }
}

/// How a step failed.
#[derive(Debug, Clone)]
struct Failure {
    at: At,
    status: StatusCode,
    message: String,
}

impl Failure {
    /// A failure carried in a step's body: a `map` step's error or the
    /// runtime's, however wrapped on the way, else the body's own (502).
    fn of_body(at: &At, error: &BoxError) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        let (status, message) = loop {
            match cause {
                Some(error) if let Some(error) = error.downcast_ref::<StepError>() => {
                    break (error.status, error.to_string());
                }
                Some(error) => cause = error.source(),
                None => break dispatch::status_of_body_error(error.as_ref()),
            }
        };
        Self {
            at: at.clone(),
            status,
            message,
        }
    }

    /// The pipeline's answer: the step's status, and an error naming it.
    fn answer(&self, pipeline: &Deployed) -> wisp_runtime::Response {
        let message = format!("pipeline {}: {self}", pipeline.spec.name);
        ApiError::new(self.status, message)
            .into_response()
            .map(|body| body.map_err(BoxError::from).boxed_unsync())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.at, self.message)
    }
}

/// The first failure of a pipeline's steps, in time: what the caller is told.
#[derive(Default)]
struct Outcome(Mutex<Option<Failure>>);

impl Outcome {
    fn fail(&self, failure: Failure) {
        self.0.lock().expect("outcome").get_or_insert(failure);
    }

    fn first(&self) -> Option<Failure> {
        self.0.lock().expect("outcome").clone()
    }
}

/// The start of a failed step's answer, for its error.
async fn quote(body: ResponseBody) -> String {
    let mut quoted = Vec::new();
    let mut body = std::pin::pin!(body);
    while quoted.len() < QUOTED {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    quoted.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    quoted.truncate(QUOTED);
    String::from_utf8_lossy(&quoted).trim().to_owned()
}

/// A step's output on its way to the next step: a failure in it is recorded
/// as the pipeline's outcome.
struct Watched {
    body: ResponseBody,
    at: At,
    outcome: Arc<Outcome>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(error))) = &polled {
            self.outcome.fail(Failure::of_body(&self.at, error));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The pipeline's output once its head is out: what was held back, then the
/// rest, ending in an error if any step failed.
struct Tail {
    held: Option<Bytes>,
    rest: Option<ResponseBody>,
    outcome: Arc<Outcome>,
}

impl HttpBody for Tail {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(held) = self.held.take() {
            return Poll::Ready(Some(Ok(Frame::data(held))));
        }
        let Some(rest) = &mut self.rest else {
            return Poll::Ready(None);
        };
        match std::task::ready!(Pin::new(rest).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            ended => {
                self.rest = None;
                match (ended, self.outcome.first()) {
                    (_, Some(failure)) => Poll::Ready(Some(Err(failure.to_string().into()))),
                    (Some(Err(error)), None) => Poll::Ready(Some(Err(error))),
                    _ => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.rest.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_items_as_they_come_and_the_last_one_at_the_end() {
        let mut items = Items::new(Split::Lines, 1 << 20);
        items.push(b"one\r\ntw").unwrap();
        assert_eq!(items.next(false).as_deref(), Some(&b"one"[..]));
        assert_eq!(items.next(false), None, "`tw` is not a whole line yet");
        items.push(b"o\nthree").unwrap();
        assert_eq!(items.next(false).as_deref(), Some(&b"two"[..]));
        assert_eq!(items.next(true).as_deref(), Some(&b"three"[..]));
        assert_eq!(items.next(true), None);
    }

    #[test]
    fn a_line_past_the_limit_is_refused() {
        let mut items = Items::new(Split::Lines, 8);
        let error = items.push(b"no line break in sight").unwrap_err();
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn json_items_are_the_elements_and_the_outputs_an_array() {
        let mut items = Items::new(Split::Json, 1 << 20);
        items
            .json(Bytes::from_static(br#"[1, {"a": [2]}, "x"]"#))
            .unwrap();
        let all: Vec<Bytes> = std::iter::from_fn(|| items.next(true)).collect();
        assert_eq!(all, [&b"1"[..], br#"{"a": [2]}"#, br#""x""#]);
        assert!(items.json(Bytes::from_static(b"{}")).is_err());

        let mut joined = Joined::new(Split::Json);
        let text: Vec<u8> = [
            joined.piece(b"1\n"),
            joined.piece(b"not json"),
            joined.end(),
        ]
        .concat();
        assert_eq!(text, br#"[1,"not json"]"#);
        assert_eq!(Joined::new(Split::Json).end(), &b"[]"[..]);
        assert_eq!(
            Joined::new(Split::Lines).piece(b"no newline"),
            &b"no newline\n"[..]
        );
    }
}
