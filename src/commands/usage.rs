//! `wisp usage`: calls and GB-seconds per function, the figures a bill is made of.

use clap::Args;

use super::Remote;
use crate::client::Client;

/// Print calls, errors, seconds and GB-seconds per function.
///
/// Example: wisp usage --namespace team-a --since 24h
#[derive(Args)]
pub struct UsageCommand {
    /// Only this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Only from this long ago (`24h`, `30d`) or since this RFC 3339 time (by the hour).
    #[arg(long)]
    since: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

impl UsageCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        let mut query = Vec::new();
        if let Some(namespace) = self.namespace {
            query.push(("namespace", namespace));
        }
        if let Some(since) = self.since {
            query.push(("since", since));
        }
        let usage = Client::new(&self.remote).usage(&query)?;
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&usage)?);
            return Ok(());
        }
        println!(
            "{:<32} {:>12} {:>8} {:>12} {:>12} {:>12}",
            "FUNCTION", "INVOCATIONS", "ERRORS", "SECONDS", "GB-SECONDS", "CPU-SECONDS"
        );
        for row in usage {
            println!(
                "{:<32} {:>12} {:>8} {:>12.3} {:>12.6} {:>12.3}",
                format!("{}.{}", row.function, row.namespace),
                row.invocations,
                row.errors,
                row.seconds,
                row.gb_seconds,
                row.cpu_seconds
            );
        }
        Ok(())
    }
}
