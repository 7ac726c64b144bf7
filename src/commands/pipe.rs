//! `wisp pipe`: deployed functions run as an ad-hoc pipeline, STDIN through
//! every step to STDOUT, streamed both ways.

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Args;

use super::Remote;
use crate::client::Client;

/// Run deployed functions as a pipeline: STDIN streams into the first, each
/// one's output into the next, and the last one's to STDOUT. The first step
/// that fails ends it, and is named.
///
/// Example: wisp pipe fetch resize store < urls.txt > stored.txt
#[derive(Args)]
pub struct Pipe {
    /// The functions, in order, each as `name` or `name.namespace`.
    #[arg(required = true, num_args = 1..)]
    steps: Vec<String>,
    /// A path every step sees after its name, such as `/items?full=true`.
    #[arg(long, default_value = "")]
    path: String,
    #[command(flatten)]
    remote: Remote,
}

impl Pipe {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(step) = self
            .steps
            .iter()
            .find(|step| step.is_empty() || step.contains([',', '/']))
        {
            bail!("`{step}` is not a function's `name` or `name.namespace`");
        }
        if !self.path.is_empty() && !self.path.starts_with(['/', '?']) {
            bail!("--path must start with `/` or `?`");
        }
        let path = format!("/pipe/{}{}", self.steps.join(","), self.path);
        let response = Client::new(&self.remote).stream(&path, std::io::stdin())?;
        let status = response.status();
        let call_id = response.header("x-call-id").map(str::to_owned);
        if status >= 400 {
            let text = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<wisp_core::api::ErrorBody>(&text)
                .map_or(text, |body| body.error);
            let call = call_id.map(|id| format!(", call {id}")).unwrap_or_default();
            eprintln!("error: {} ({status}{call})", message.trim());
            return Ok(ExitCode::FAILURE);
        }
        let mut stdout = std::io::stdout().lock();
        // A step failing after the output began cuts the response off.
        std::io::copy(&mut response.into_reader(), &mut stdout).with_context(|| {
            format!(
                "the pipeline broke off{}",
                call_id
                    .map(|id| format!(" (call {id})"))
                    .unwrap_or_default()
            )
        })?;
        stdout.flush().context("write STDOUT")?;
        Ok(ExitCode::SUCCESS)
    }
}
