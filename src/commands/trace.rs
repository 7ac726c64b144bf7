//! `wisp trace`: the tree of calls a call belongs to, with each call's status,
//! duration and first clue to a failure.

use std::collections::{HashMap, HashSet};

use clap::Args;
use wisp_core::telemetry::{Trace, TracedCall};

use super::Remote;
use crate::client::Client;

/// Print the tree of calls a call belongs to (its W3C trace).
///
/// Example: wisp trace 3f2a...
#[derive(Args)]
pub struct TraceCommand {
    /// Any call of the trace (`X-Call-Id`).
    call_id: String,
    #[command(flatten)]
    remote: Remote,
}

impl TraceCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        let trace = Client::new(&self.remote).trace(&self.call_id)?;
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&trace)?);
        } else {
            print!("{}", render(&trace));
        }
        Ok(())
    }
}

/// The trace as an indented tree: each call under the call that made it.
fn render(trace: &Trace) -> String {
    let spans: HashSet<&str> = trace
        .calls
        .iter()
        .map(|call| call.record.span_id.as_str())
        .collect();
    let mut children: HashMap<&str, Vec<&TracedCall>> = HashMap::new();
    let mut roots = Vec::new();
    for call in &trace.calls {
        match call.record.parent_span_id.as_deref() {
            Some(parent) if spans.contains(parent) => {
                children.entry(parent).or_default().push(call)
            }
            _ => roots.push(call),
        }
    }
    let mut text = format!("trace {}\n", trace.trace_id);
    let mut stack: Vec<(&TracedCall, usize)> = roots.into_iter().rev().map(|c| (c, 0)).collect();
    while let Some((call, depth)) = stack.pop() {
        let record = &call.record;
        text.push_str(&format!(
            "{}{}.{} {} {:.1}ms call {}",
            "  ".repeat(depth),
            record.function,
            record.namespace,
            record.status,
            record.duration_ms,
            record.call_id
        ));
        if let Some(error) = &record.error {
            text.push_str(&format!(": {error}"));
        }
        if let Some(stderr) = &call.last_stderr {
            text.push_str(&format!(" (stderr: {stderr})"));
        }
        text.push('\n');
        if let Some(under) = children.get(record.span_id.as_str()) {
            stack.extend(under.iter().rev().map(|child| (*child, depth + 1)));
        }
    }
    text
}
