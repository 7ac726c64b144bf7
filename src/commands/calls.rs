//! `wisp calls`: list async calls and dead letters, show one, retry one.

use clap::{Args, Subcommand};
use wisp_core::{CallState, events::CallInfo};

use super::Remote;
use crate::client::Client;

/// List async calls (newest first), show one, or retry a dead one.
///
/// Example: wisp calls hello --dead; wisp calls retry 3f2a...
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Calls {
    #[command(subcommand)]
    action: Option<Action>,
    /// Only this function's calls (`name` or `name.namespace`).
    function: Option<String>,
    /// Only the dead letters: calls whose every attempt failed.
    #[arg(long, conflicts_with = "status")]
    dead: bool,
    /// Only calls in this state: queued, running, succeeded, failed or dead.
    #[arg(long)]
    status: Option<CallState>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand)]
enum Action {
    /// Show one call: its state, attempts, error and result.
    Show {
        /// The call id (`X-Call-Id`).
        id: String,
        /// The call's function (`name.namespace`), when several namespaces use the id.
        #[arg(long)]
        function: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Queue a finished call (a dead letter, say) again, with fresh attempts.
    Retry {
        /// The call id (`X-Call-Id`).
        id: String,
        /// The call's function (`name.namespace`), when several namespaces use the id.
        #[arg(long)]
        function: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

impl Calls {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.action {
            Some(Action::Show {
                id,
                function,
                remote,
            }) => {
                let call = Client::new(&remote).async_call(&id, function.as_deref())?;
                print_call(&call, remote.json)
            }
            Some(Action::Retry {
                id,
                function,
                remote,
            }) => {
                let call = Client::new(&remote).retry_call(&id, function.as_deref())?;
                if remote.json {
                    println!("{}", serde_json::to_string_pretty(&call)?);
                } else {
                    println!("call {} is queued again", call.id);
                }
                Ok(())
            }
            None => self.list(),
        }
    }

    fn list(self) -> anyhow::Result<()> {
        let mut query = vec![("limit", self.limit.to_string())];
        if let Some(function) = self.function {
            query.push(("function", function));
        }
        let status = if self.dead {
            Some(CallState::Dead)
        } else {
            self.status
        };
        if let Some(status) = status {
            query.push(("status", status.to_string()));
        }
        let calls = Client::new(&self.remote).calls(&query)?.calls;
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&calls)?);
            return Ok(());
        }
        println!(
            "{:<36}  {:<20} {:<9} {:>8} {:>6}  {:<24}  ERROR",
            "ID", "FUNCTION", "STATUS", "ATTEMPTS", "CODE", "CREATED"
        );
        for call in calls {
            println!(
                "{:<36}  {:<20} {:<9} {:>8} {:>6}  {:<24}  {}",
                call.id,
                format!("{}.{}", call.function, call.namespace),
                call.status,
                call.attempts,
                call.result
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |result| result.status.to_string()),
                call.created_at,
                call.error.as_deref().unwrap_or_default(),
            );
        }
        Ok(())
    }
}

fn print_call(call: &CallInfo, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(call)?);
        return Ok(());
    }
    let show = |label: &str, value: Option<&str>| {
        if let Some(value) = value {
            println!("{label:<16} {value}");
        }
    };
    show("id:", Some(&call.id));
    show(
        "function:",
        Some(&format!("{}.{}", call.function, call.namespace)),
    );
    show("status:", Some(call.status.as_str()));
    show("attempts:", Some(&call.attempts.to_string()));
    show("source:", Some(&call.source));
    show("created:", Some(&call.created_at));
    show("started:", call.started_at.as_deref());
    show("finished:", call.finished_at.as_deref());
    show("next attempt:", call.next_attempt_at.as_deref());
    show("error:", call.error.as_deref());
    show("callback:", call.callback_url.as_deref());
    show("callback status:", call.callback_status.as_deref());
    if let Some(result) = &call.result {
        show("result status:", Some(&result.status.to_string()));
        let more = if result.truncated { " (cut)" } else { "" };
        show("result body:", Some(&format!("{}{more}", result.body)));
    }
    Ok(())
}
