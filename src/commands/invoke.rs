//! `wisp invoke`: call a function with STDIN as the body.

use std::{
    io::{IsTerminal as _, Read as _, Write as _},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::Args;

use super::Remote;
use crate::client::Client;

/// Call a function: STDIN is the body, the response goes to STDOUT (with
/// --async, the call is queued and its id printed; see `wisp calls`).
///
/// Example: echo '{"name": "ada"}' | wisp invoke hello -H Content-Type=application/json -i
#[derive(Args)]
pub struct Invoke {
    /// The function, as `name` or `name.namespace`.
    name: String,
    /// The HTTP method.
    #[arg(long, short = 'X', default_value = "POST")]
    method: String,
    /// A request header, as `Name=Value`; repeatable.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// A path after the function's name, such as `/items/1?full=true`.
    #[arg(long, default_value = "")]
    path: String,
    /// Queue the call and print its id instead of waiting for the response.
    #[arg(long = "async")]
    asynchronous: bool,
    /// With --async: where to POST the result once the call is over.
    #[arg(long, requires = "asynchronous")]
    callback: Option<String>,
    /// Print the response's status line and headers before its body.
    #[arg(long, short = 'i')]
    include: bool,
    #[command(flatten)]
    remote: Remote,
}

impl Invoke {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut headers = self
            .headers
            .iter()
            .map(|header| match header.split_once('=') {
                Some((name, value)) => Ok((name.trim().to_owned(), value.to_owned())),
                None => bail!("header `{header}` is not `Name=Value`"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut body = Vec::new();
        // A terminal is not a body: do not wait for one.
        if !std::io::stdin().is_terminal() {
            std::io::stdin()
                .read_to_end(&mut body)
                .context("read STDIN")?;
        }
        if !self.path.is_empty() && !self.path.starts_with(['/', '?']) {
            bail!("--path must start with `/` or `?`");
        }
        if let Some(url) = &self.callback {
            headers.push(("X-Callback-Url".to_owned(), url.clone()));
        }
        let route = if self.asynchronous {
            "async-function"
        } else {
            "function"
        };
        let path = format!("/{route}/{}{}", self.name, self.path);
        let answer = Client::new(&self.remote).invoke(&path, &self.method, &headers, &body)?;
        if self.include {
            let mut head = format!("HTTP/1.1 {} {}\n", answer.status, answer.reason);
            for (name, value) in &answer.headers {
                head.push_str(&format!("{name}: {value}\n"));
            }
            head.push('\n');
            std::io::stdout()
                .write_all(head.as_bytes())
                .context("write STDOUT")?;
        }
        if answer.status >= 400 {
            let message = serde_json::from_slice::<wisp_core::api::ErrorBody>(&answer.body)
                .map_or_else(
                    |_| String::from_utf8_lossy(&answer.body).into_owned(),
                    |body| body.error,
                );
            // The call id leads to the call's lines: `wisp logs NAME --call ID`.
            let call = answer
                .call_id
                .map(|id| format!(", call {id}"))
                .unwrap_or_default();
            eprintln!("error: {} ({}{call})", message.trim(), answer.status);
            return Ok(ExitCode::FAILURE);
        }
        if self.asynchronous {
            let id = answer.call_id.unwrap_or_default();
            if self.remote.json {
                println!("{}", serde_json::json!({ "callId": id }));
            } else {
                println!("{id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::io::stdout()
            .write_all(&answer.body)
            .context("write STDOUT")?;
        Ok(ExitCode::SUCCESS)
    }
}
