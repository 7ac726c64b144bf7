//! What the `wasi:http` test guests share: a request's path and query
//! parameters, reading its body whole, and answering with a status and a
//! body.

use std::io::{Read as _, Write as _};

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// A request's target: its path, and its query's parameters by name.
pub struct Target {
    /// The path, without the query.
    pub path: String,
    query: String,
}

impl Target {
    /// The target of `request`.
    pub fn of(request: &IncomingRequest) -> Self {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        Self {
            path: path.to_owned(),
            query: query.to_owned(),
        }
    }

    /// The query as sent.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The parameter `name` of the query, as sent; empty when absent.
    pub fn param(&self, name: &str) -> &str {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map_or("", |(_, value)| value)
    }
}

/// The request's body, read to its end.
pub fn read_body(request: IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("request body is consumed once");
    let mut bytes = Vec::new();
    body.stream()
        .expect("body stream is taken once")
        .read_to_end(&mut bytes)
        .expect("request body reads");
    bytes
}

/// Answers `status` with `body`.
pub fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("response body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut stream = outgoing.write().expect("body stream is taken once");
    for chunk in body.chunks(4096) {
        stream.write_all(chunk).expect("response body writes");
    }
    stream.flush().expect("response body flushes");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("response body finishes");
}
