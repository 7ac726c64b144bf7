//! `wisp logs`: a function's stored log lines, optionally followed live.

use std::io::BufRead as _;

use anyhow::Context as _;
use clap::Args;
use wisp_core::telemetry::LogEntry;

use super::Remote;
use crate::client::Client;

/// Print a function's log: its output and wisp's line for each call.
///
/// Example: wisp logs hello -f --since 10m
#[derive(Args)]
pub struct Logs {
    /// The function (`name` or `name.namespace`).
    name: String,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// Only lines from this long ago (`10m`, `2h`) or since this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only one call's lines.
    #[arg(long = "call")]
    call_id: Option<String>,
    /// At most this many of the latest lines, before following.
    #[arg(long, default_value_t = 100)]
    tail: u32,
    #[command(flatten)]
    remote: Remote,
}

impl Logs {
    pub fn execute(self) -> anyhow::Result<()> {
        let mut query = vec![("name", self.name), ("tail", self.tail.to_string())];
        if let Some(since) = self.since {
            query.push(("since", since));
        }
        if let Some(call_id) = self.call_id {
            query.push(("call", call_id));
        }
        if self.follow {
            query.push(("follow", "true".into()));
        }
        let client = Client::new(&self.remote);
        let reader = client.logs(&query)?;
        for line in reader.lines() {
            let line = line.context("reading the log stream")?;
            if self.remote.json {
                println!("{line}");
                continue;
            }
            let entry: LogEntry = serde_json::from_str(&line)
                .context("the gateway sent a log line that is not JSON")?;
            print_line(&entry.time, &entry);
        }
        Ok(())
    }
}

/// Prints a log line after `first` (its time, or its function's name).
pub(crate) fn print_line(first: &str, entry: &LogEntry) {
    println!(
        "{first} {} [{}] {}",
        entry.call_id.as_deref().unwrap_or("-"),
        entry.stream.as_str(),
        entry.message
    );
}
