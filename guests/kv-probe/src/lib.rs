//! A `wasi:http` test guest that uses `wasi:keyvalue`: the path names the
//! operation and the query its store and key (`/none` to answer without
//! touching a store, `/get`, `/set` with the body
//! as the value, `/delete`, `/exists`, `/increment?by=`, `/keys?cursor=`,
//! `/set-many` with `key=value` lines as the body, `/get-many?keys=a,b`,
//! `/open-many?count=` to hold the store open that many times at once).
//! A store error is answered 403 (`access-denied`), 404 (`no-such-store`)
//! or 500 (`other`), with the error in the body, so tests see what the guest
//! was told.

use probe_support::{Target, read_body, respond};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    path: "../../crates/wisp-runtime/wit/keyvalue",
    world: "wisp:keyvalue/guest",
    generate_all,
});

use wasi::keyvalue::{atomics, batch, store};

wasip2::http::proxy::export!(Probe);

struct Probe;

impl wasip2::exports::http::incoming_handler::Guest for Probe {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let target = Target::of(&request);
        let body = read_body(request);
        let (status, answer) = match run(&target, body) {
            Ok(answer) => (200, answer),
            Err(store::Error::AccessDenied) => (403, b"access-denied\n".to_vec()),
            Err(store::Error::NoSuchStore) => (404, b"no-such-store\n".to_vec()),
            Err(store::Error::Other(message)) => (500, format!("other: {message}\n").into_bytes()),
        };
        respond(response_out, status, &answer);
    }
}

/// Runs the operation the target's path names; its answer is the body of a 200.
fn run(target: &Target, body: Vec<u8>) -> Result<Vec<u8>, store::Error> {
    let param = |name: &str| target.param(name);
    if target.path == "/none" {
        return Ok(b"none\n".to_vec());
    }
    let bucket = store::open(param("store"))?;
    let key = param("key");
    Ok(match target.path.as_str() {
        "/get" => match bucket.get(&key)? {
            Some(value) => value,
            None => b"(none)\n".to_vec(),
        },
        "/set" => {
            bucket.set(&key, &body)?;
            b"set\n".to_vec()
        }
        "/delete" => {
            bucket.delete(&key)?;
            b"deleted\n".to_vec()
        }
        "/exists" => format!("{}\n", bucket.exists(&key)?).into_bytes(),
        "/increment" => {
            let by = param("by").parse().unwrap_or(1);
            format!("{}\n", atomics::increment(&bucket, &key, by)?).into_bytes()
        }
        "/keys" => {
            let cursor = param("cursor").parse().ok();
            let page = bucket.list_keys(cursor)?;
            let mut lines: String = page.keys.iter().map(|key| format!("{key}\n")).collect();
            if let Some(cursor) = page.cursor {
                lines.push_str(&format!("cursor={cursor}\n"));
            }
            lines.into_bytes()
        }
        "/set-many" => {
            let text = String::from_utf8_lossy(&body);
            let entries: Vec<(String, Vec<u8>)> = text
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.as_bytes().to_vec()))
                .collect();
            batch::set_many(&bucket, &entries)?;
            format!("set {}\n", entries.len()).into_bytes()
        }
        "/get-many" => {
            let keys: Vec<String> = param("keys").split(',').map(str::to_owned).collect();
            let mut lines = String::new();
            for entry in batch::get_many(&bucket, &keys)? {
                match entry {
                    Some((key, value)) => {
                        lines.push_str(&format!("{key}={}\n", String::from_utf8_lossy(&value)))
                    }
                    None => lines.push_str("(none)\n"),
                }
            }
            lines.into_bytes()
        }
        "/open-many" => {
            let count: usize = param("count").parse().unwrap_or(1);
            let mut held = vec![bucket];
            while held.len() < count {
                held.push(store::open(param("store"))?);
            }
            format!("opened {}\n", held.len()).into_bytes()
        }
        _ => b"unknown operation\n".to_vec(),
    })
}
