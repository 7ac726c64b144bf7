//! A component as Spin's Rust SDK builds it (a `wasm32-wasip1` module with
//! its component type embedded), for the tests of Spin artifacts:
//! `GET /` says hello; `GET|PUT|DELETE /kv/{store}/{key}` reads, writes and
//! removes a key through Spin's key-value interface; `GET /keys/{store}`
//! lists a store's keys. A failed store call answers 500 with the error.

use spin_sdk::{
    http::{IntoResponse, Method, Request, Response},
    http_component,
    key_value::Store,
};

#[http_component]
fn handle(request: Request) -> anyhow::Result<impl IntoResponse> {
    let path = request.path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
    let answer = match (request.method(), parts.as_slice()) {
        (Method::Get, [""]) => Ok((200, b"hello from a Spin component\n".to_vec())),
        (method, ["kv", store, key]) => Store::open(store).and_then(|store| match method {
            Method::Get => Ok(store
                .get(key)?
                .map_or((404, b"no such key".to_vec()), |value| (200, value))),
            Method::Put => store.set(key, request.body()).map(|()| (200, Vec::new())),
            Method::Delete => store.delete(key).map(|()| (200, Vec::new())),
            _ => Ok((405, Vec::new())),
        }),
        (Method::Get, ["keys", store]) => Store::open(store)
            .and_then(|store| store.get_keys())
            .map(|mut keys| {
                keys.sort();
                (200, keys.join("\n").into_bytes())
            }),
        _ => Ok((404, Vec::new())),
    };
    let (status, body) = answer.unwrap_or_else(|error| (500, format!("{error:?}").into_bytes()));
    Ok(Response::builder().status(status).body(body).build())
}
