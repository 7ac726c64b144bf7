//! The floor of any reverse proxy: a bare hyper server that forwards each
//! request to `127.0.0.1:$UPSTREAM_PORT` with hyper's pooled keep-alive
//! client, buffering the body as wisp does, and nothing else.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let upstream = std::env::var("UPSTREAM_PORT").expect("UPSTREAM_PORT names the app's port");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    wisp_bench_baselines::serve(move |request: Request<hyper::body::Incoming>| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut forwarded = Request::new(Full::new(body));
            *forwarded.method_mut() = parts.method;
            *forwarded.uri_mut() = format!("http://127.0.0.1:{upstream}{path}")
                .parse()
                .expect("a valid URI");
            *forwarded.headers_mut() = parts.headers;
            let response = match client.request(forwarded).await {
                Ok(response) => response,
                Err(_) => {
                    let mut failed = Response::new(Full::new(Bytes::new()));
                    *failed.status_mut() = StatusCode::BAD_GATEWAY;
                    return Ok(failed);
                }
            };
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, Full::new(body)))
        }
    })
    .await
}
