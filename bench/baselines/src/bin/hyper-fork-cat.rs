//! The floor of the watchdog design: a bare hyper server that forks `cat`
//! per request, writes the body to its STDIN and answers with its STDOUT.

use std::{convert::Infallible, process::Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Response, StatusCode};
use tokio::io::AsyncWriteExt as _;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    wisp_bench_baselines::serve(|request| async move {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let run = async {
            let mut child = tokio::process::Command::new("cat")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let mut stdin = child.stdin.take().expect("piped");
            let feed = async move {
                let _ = stdin.write_all(&body).await;
            };
            let (_, output) = tokio::join!(feed, child.wait_with_output());
            output
        };
        Ok::<_, Infallible>(match run.await {
            Ok(output) => Response::new(Full::new(Bytes::from(output.stdout))),
            Err(_) => {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response
            }
        })
    })
    .await
}
