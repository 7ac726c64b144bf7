//! Keep-alive honesty: a request refused before its body was read (a 400 on
//! a bad header, a 403, a 404) leaves the rest of that body on the wire.
//! The node first reads and discards a bounded rest of it ([`DRAIN_LIMIT`]
//! within [`DRAIN_TIME`]), so a client still sending an upload gets the
//! answer rather than a broken pipe. Past those bounds hyper closes the
//! connection after answering, and the answer says `Connection: close`, or a
//! client would pool the connection and lose its next request to a closed
//! socket.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, header},
    middleware::Next,
    response::Response,
};
use http_body_util::BodyExt as _;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// The most of an unread request body the node reads and discards before
/// answering.
pub const DRAIN_LIMIT: usize = 1 << 20;
/// How long the node spends reading and discarding an unread request body.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Drains, within bounds, what the handler left of the request's body, and
/// answers `Connection: close` when some is still left. Requests without a
/// body pass untouched.
pub async fn close_if_body_unread(request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let left = Arc::new(Mutex::new(None));
    let request = request.map(|body| {
        Body::new(Watched {
            body: Some(body),
            finished: false,
            left: left.clone(),
        })
    });
    let mut response = next.run(request).await;
    let unread = left.lock().expect("the unread body").take();
    if let Some(body) = unread
        && !drain(body).await
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads and discards `body` within [`DRAIN_LIMIT`] and [`DRAIN_TIME`];
/// whether it was read to its end.
async fn drain(body: Body) -> bool {
    let limited = http_body_util::Limited::new(body, DRAIN_LIMIT);
    matches!(
        tokio::time::timeout(DRAIN_TIME, limited.collect()).await,
        Ok(Ok(_))
    )
}

/// A request body that hands what is left of it back when it is dropped
/// before its end.
struct Watched {
    body: Option<Body>,
    finished: bool,
    left: Arc<Mutex<Option<Body>>>,
}

impl HttpBody for Watched {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let body = self.body.as_mut().expect("a body until it is dropped");
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || body.is_end_stream() {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.finished
            && let Ok(mut left) = self.left.lock()
        {
            *left = self.body.take();
        }
    }
}
