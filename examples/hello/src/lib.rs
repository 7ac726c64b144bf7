//! hello: a `wasi:http` component that greets and echoes the path and query
//! it was called with. The same `.wasm` runs on wisp, `wasmtime serve` and Spin.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let body = format!("Hello from wisp!\npath: {path}\nquery: {query}\n");

        let headers = Fields::new();
        headers
            .set("content-type", &[b"text/plain; charset=utf-8".to_vec()])
            .expect("content-type is an allowed header");
        let response = OutgoingResponse::new(headers);
        let outgoing = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut stream = outgoing.write().expect("the stream is taken once");
        stream.write_all(body.as_bytes()).expect("the body is written");
        stream.flush().expect("the body is flushed");
        drop(stream);
        OutgoingBody::finish(outgoing, None).expect("the body is finished");
    }
}
