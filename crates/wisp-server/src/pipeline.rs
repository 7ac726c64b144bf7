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
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::{
    http::{StatusCode, header},
    response::IntoResponse as _,
};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use wisp_core::{FunctionKind, telemetry::CallSource};
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
    let mut input = body;
    let mut last = None;
    for (index, reference) in pipeline.spec.steps.iter().enumerate() {
        let step = Step { index, reference };
        let function = match step.resolve(node, pipeline) {
            Ok(function) => function,
            Err(failure) => return Ok(failure.answer(pipeline)),
        };
        let admission = match dispatch::admit(node, &function).await {
            Ok(admission) => admission,
            Err(rejected) => {
                let failure = step.failed(StatusCode::TOO_MANY_REQUESTS, rejected.message);
                return Ok(failure.answer(pipeline));
            }
        };
        let invocation = Invocation {
            call_id: format!("{call_id}-{}", index + 1),
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: headers.clone(),
            body: input,
            streamed: true,
            depth,
            deadline: deadline.min(tokio::time::Instant::now() + function.spec.timeout.0),
            meter: Arc::default(),
        };
        let response = match dispatch::invoke(node, &function, invocation, source).await {
            Ok(response) => response,
            Err(error) => {
                let failure = step.failed(dispatch::status_of(&error), error.to_string());
                return Ok(failure.answer(pipeline));
            }
        };
        if !response.status().is_success() {
            let status = response.status();
            let quoted = quote(response.into_body()).await;
            let failure = step.failed(status, format!("answered {status}: {quoted}"));
            return Ok(failure.answer(pipeline));
        }
        let (parts, body) = response.into_parts();
        if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, content_type.clone());
        }
        let watched = Watched {
            body,
            step: index,
            name: reference.clone(),
            outcome: outcome.clone(),
            _admission: admission,
        };
        input = Input::Streamed(watched.boxed_unsync());
        last = Some(parts);
    }
    let (Some(parts), Input::Streamed(mut output)) = (last, input) else {
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
            Some(Err(_)) | None => break true,
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

/// One step of a pipeline, for its errors.
struct Step<'a> {
    index: usize,
    reference: &'a str,
}

impl Step<'_> {
    /// The step's function, if the pipeline may call it: a private function
    /// of another namespace may not be a step.
    fn resolve(&self, node: &Node, pipeline: &Deployed) -> Result<Arc<Deployed>, Failure> {
        let (name, namespace) = match self.reference.split_once('.') {
            Some(_) => split_reference(self.reference),
            None => (self.reference, pipeline.spec.namespace.as_str()),
        };
        let Some(function) = node.function(namespace, name) else {
            return Err(self.failed(
                StatusCode::BAD_GATEWAY,
                format!("function {name} is not deployed in namespace {namespace}"),
            ));
        };
        if function.spec.private && function.spec.namespace != pipeline.spec.namespace {
            return Err(self.failed(
                StatusCode::FORBIDDEN,
                format!(
                    "function {name} is private to namespace {namespace}, and the pipeline is in {}",
                    pipeline.spec.namespace
                ),
            ));
        }
        if function.spec.kind == FunctionKind::Pipeline {
            return Err(self.failed(
                StatusCode::BAD_GATEWAY,
                format!("function {name} is a pipeline itself: list its steps instead"),
            ));
        }
        Ok(function)
    }

    fn failed(&self, status: StatusCode, message: String) -> Failure {
        Failure {
            step: self.index,
            name: self.reference.to_owned(),
            status,
            message,
        }
    }
}

/// How a step failed.
#[derive(Debug, Clone)]
struct Failure {
    step: usize,
    name: String,
    status: StatusCode,
    message: String,
}

impl Failure {
    /// A failure carried in a step's body: the runtime's error, or the body's own.
    fn of_body(step: usize, name: &str, error: &BoxError) -> Self {
        let status = error
            .downcast_ref::<InvokeError>()
            .map_or(StatusCode::BAD_GATEWAY, dispatch::status_of);
        Self {
            step,
            name: name.to_owned(),
            status,
            message: error.to_string(),
        }
    }

    /// The pipeline's answer: the step's status, and an error naming it.
    fn answer(&self, pipeline: &Deployed) -> wisp_runtime::Response {
        let message = format!(
            "pipeline {}: step {} ({}) failed: {}",
            pipeline.spec.name,
            self.step + 1,
            self.name,
            self.message
        );
        ApiError::new(self.status, message)
            .into_response()
            .map(|body| body.map_err(BoxError::from).boxed_unsync())
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
/// as the pipeline's outcome, and the step holds its slots until it ends.
struct Watched {
    body: ResponseBody,
    step: usize,
    name: String,
    outcome: Arc<Outcome>,
    _admission: Admission,
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
            self.outcome
                .fail(Failure::of_body(self.step, &self.name, error));
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
                    (_, Some(failure)) => Poll::Ready(Some(Err(format!(
                        "step {} ({}) failed: {}",
                        failure.step + 1,
                        failure.name,
                        failure.message
                    )
                    .into()))),
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
