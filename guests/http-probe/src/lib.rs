//! A `wasi:http` test guest whose behaviour is chosen by the request path:
//! `/` echoes the request, and the other paths misbehave on purpose so the
//! host's limits can be tested (`/trap`, `/loop`, `/sleep?ms=`, `/grow?mib=`,
//! `/status?code=`, `/big?bytes=`, `/env`, `/read?path=` to read a file,
//! `/write?path=` to create one,
//! `/spew?mib=` to flood STDOUT, `/stream?chunks=&ms=` to answer at once
//! and then send its body a line every `ms` milliseconds, `/linger?ms=` to
//! answer at once with the time it started, then go on running for `ms`
//! milliseconds and log the time it stopped to STDERR, `/copy` to stream the
//! request body back as it arrives, `/remember?secret=` to answer what an
//! earlier instance left in this one's memory, then leave the secret in
//! it). With `PROBE_UPSTREAM` set to an
//! `http://` URL, `/` instead calls that URL and answers with its answer, so
//! chains of functions can be built.

use std::io::{Read as _, Write as _};

use probe_support::{Target, read_body, respond};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Probe);

/// Where `/remember` leaves its secret: 2 MiB that start zeroed, and a page
/// that starts as dots (from the component's data, not zeroed memory).
static mut ZEROED: [u8; 2 << 20] = [0; 2 << 20];
static mut DOTTED: [u8; 4096] = [b'.'; 4096];

struct Probe;

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let target = Target::of(&request);
        let (path, query) = (target.path.as_str(), target.query());
        let text = |name: &str| target.param(name);
        let param = |name: &str| -> u64 { text(name).parse().unwrap_or(0) };
        match path {
            "/trap" => panic!("the probe was asked to trap"),
            "/loop" => loop {
                std::hint::black_box(0);
            },
            "/sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(param("ms")));
                respond(response_out, 200, b"slept\n");
            }
            "/grow" => {
                let mut block = vec![0u8; param("mib") as usize * 1024 * 1024];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                let touched = block.iter().filter(|b| **b == 1).count();
                respond(
                    response_out,
                    200,
                    format!("grew {touched} pages\n").as_bytes(),
                );
            }
            "/linger" => {
                let started = now_millis();
                respond(
                    response_out,
                    200,
                    format!("started at {started}\n").as_bytes(),
                );
                std::thread::sleep(std::time::Duration::from_millis(param("ms")));
                eprintln!("lingered until {}", now_millis());
            }
            "/remember" => {
                // SAFETY: an instance serves one request, on one thread, and
                // nothing else refers to these two statics.
                let (zeroed, dotted) = unsafe {
                    (
                        std::slice::from_raw_parts_mut((&raw mut ZEROED).cast::<u8>(), 2 << 20),
                        std::slice::from_raw_parts_mut((&raw mut DOTTED).cast::<u8>(), 4096),
                    )
                };
                let seen: Vec<u8> = (zeroed.iter().filter(|byte| **byte != 0))
                    .chain(dotted.iter().filter(|byte| **byte != b'.'))
                    .take(64)
                    .copied()
                    .collect();
                let secret = text("secret");
                let secret = &secret.as_bytes()[..secret.len().min(64)];
                for page in zeroed.chunks_mut(4096).chain([&mut dotted[..]]) {
                    page[..secret.len()].copy_from_slice(secret);
                }
                let seen = String::from_utf8_lossy(&seen);
                respond(response_out, 200, format!("seen={seen}\n").as_bytes());
            }
            "/status" => respond(response_out, param("code") as u16, b"as asked\n"),
            "/big" => respond(response_out, 200, &vec![b'x'; param("bytes") as usize]),
            "/stream" => stream_slowly(response_out, param("chunks"), param("ms")),
            "/copy" => copy(request, response_out),
            "/read" => match std::fs::read(text("path")) {
                Ok(bytes) => respond(response_out, 200, &bytes),
                Err(error) => respond(response_out, 403, format!("{error}\n").as_bytes()),
            },
            "/write" => match std::fs::write(text("path"), b"written by the guest\n") {
                Ok(()) => respond(response_out, 200, b"written\n"),
                Err(error) => respond(response_out, 403, format!("{error}\n").as_bytes()),
            },
            "/spew" => {
                let chunk = vec![b'x'; 1 << 20];
                let mut stdout = std::io::stdout();
                let written = (0..param("mib"))
                    .take_while(|_| stdout.write_all(&chunk).is_ok())
                    .count();
                respond(
                    response_out,
                    200,
                    format!("wrote {written} MiB\n").as_bytes(),
                );
            }
            "/env" => {
                let mut vars: Vec<String> = std::env::vars()
                    .map(|(k, v)| format!("{k}={v}\n"))
                    .collect();
                vars.sort();
                respond(response_out, 200, vars.concat().as_bytes());
            }
            _ if std::env::var("PROBE_UPSTREAM").is_ok() => {
                let url = std::env::var("PROBE_UPSTREAM").unwrap_or_default();
                eprintln!("calling {url}");
                let (status, body) = call(&url);
                eprintln!("{url} answered {status}");
                respond(response_out, status, &body);
            }
            _ => {
                let mut echo = format!(
                    "method={}\npath={path}\nquery={query}\n",
                    method_name(&request.method())
                );
                for (name, value) in request.headers().entries() {
                    echo.push_str(&format!(
                        "header {name}={}\n",
                        String::from_utf8_lossy(&value)
                    ));
                }
                let bytes = read_body(request);
                echo.push_str(&format!("body={}\n", String::from_utf8_lossy(&bytes)));
                respond(response_out, 200, echo.as_bytes());
            }
        }
    }
}

/// GETs an `http://host:port/path` URL; a failure to connect is a 502.
fn call(url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&Scheme::Http)).expect("a scheme");
    request
        .set_authority(Some(authority))
        .expect("an authority");
    request
        .set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .expect("a path");
    let body = request.body().expect("request body is taken once");
    OutgoingBody::finish(body, None).expect("request body finishes");
    let response = match wasip2::http::outgoing_handler::handle(request, None) {
        Ok(future) => {
            future.subscribe().block();
            future.get().expect("ready").expect("taken once")
        }
        Err(code) => Err(code),
    };
    match response {
        Ok(response) => {
            let status = response.status();
            let body = response.consume().expect("response body is consumed once");
            let mut bytes = Vec::new();
            body.stream()
                .expect("body stream is taken once")
                .read_to_end(&mut bytes)
                .expect("response body reads");
            (status, bytes)
        }
        Err(code) => (502, format!("upstream failed: {code:?}\n").into_bytes()),
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Patch => "PATCH".into(),
        Method::Options => "OPTIONS".into(),
        Method::Connect => "CONNECT".into(),
        Method::Trace => "TRACE".into(),
        Method::Other(other) => other.clone(),
    }
}

/// Sends the head at once, then `chunks` lines, one every `ms` milliseconds.
fn stream_slowly(response_out: ResponseOutparam, chunks: u64, ms: u64) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("response body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut stream = outgoing.write().expect("body stream is taken once");
    for chunk in 0..chunks {
        stream
            .write_all(format!("chunk {chunk}\n").as_bytes())
            .expect("response body writes");
        stream.flush().expect("response body flushes");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("response body finishes");
}

/// Streams the request body into the response body, a chunk at a time.
fn copy(request: IncomingRequest, response_out: ResponseOutparam) {
    let response = OutgoingResponse::new(Fields::new());
    let outgoing = response.body().expect("response body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let incoming = request.consume().expect("request body is consumed once");
    let input = incoming.stream().expect("body stream is taken once");
    let mut output = outgoing.write().expect("body stream is taken once");
    // Each read waits for what is there, up to 64 KiB; the end is an error.
    while let Ok(chunk) = input.blocking_read(64 << 10) {
        output.write_all(&chunk).expect("response body writes");
    }
    output.flush().expect("response body flushes");
    drop(output);
    OutgoingBody::finish(outgoing, None).expect("response body finishes");
}

/// The wall clock, in milliseconds since 1970.
fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}
