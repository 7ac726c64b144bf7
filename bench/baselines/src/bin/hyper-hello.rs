//! The ceiling: a bare hyper server answering a fixed hello.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    wisp_bench_baselines::serve(|_request| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"Hello from wisp!\npath: /\nquery: \n",
        ))))
    })
    .await
}
