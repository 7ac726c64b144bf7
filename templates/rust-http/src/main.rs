//! A wasi:http component: JSON in, JSON out. The same `.wasm` runs on wisp,
//! Spin and `wasmtime serve`.

use serde::{Deserialize, Serialize};
use wstd::http::{Body, Error, Request, Response};

#[derive(Deserialize)]
struct Greeting {
    name: Option<String>,
}

#[derive(Serialize)]
struct Answer {
    message: String,
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let body = request.body_mut().contents().await?;
    let name = serde_json::from_slice::<Greeting>(body)
        .ok()
        .and_then(|greeting| greeting.name)
        .unwrap_or_else(|| "world".to_owned());
    let answer = serde_json::to_vec(&Answer {
        message: format!("hello, {name}"),
    })?;
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(answer.into())?)
}
