//! `wisp describe`: show one function.

use clap::Args;

use super::Remote;
use crate::client::Client;

/// Show a deployed function's settings and state.
///
/// Example: wisp describe hello.team-a
#[derive(Args)]
pub struct Describe {
    /// The function, as `name` or `name.namespace`.
    name: String,
    #[command(flatten)]
    remote: Remote,
}

impl Describe {
    pub fn execute(self) -> anyhow::Result<()> {
        let function = Client::new(&self.remote).function(&self.name)?;
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&function)?);
            return Ok(());
        }
        let d = &function.deployment;
        let show = |label: &str, value: Option<String>| {
            if let Some(value) = value.filter(|value| !value.is_empty()) {
                println!("{label:<22} {value}");
            }
        };
        show("name:", Some(d.service.clone()));
        show("namespace:", d.namespace.clone());
        show("kind:", d.kind.map(|kind| kind.to_string()));
        show("artifact:", d.image.clone());
        show("command:", d.env_process.clone());
        show(
            "url:",
            Some(format!("{}/function/{}", self.remote.url(), d.service)),
        );
        show("route:", d.route.clone());
        show("timeout:", d.timeout.map(|t| t.to_string()));
        show("memory:", d.memory.map(|m| m.to_string()));
        show("max concurrency:", d.max_concurrency.map(|m| m.to_string()));
        show(
            "queue timeout:",
            d.queue_timeout
                .filter(|timeout| !timeout.0.is_zero())
                .map(|timeout| timeout.to_string()),
        );
        if let (Some(min), Some(max)) = (d.min_scale, d.max_scale) {
            show("scale:", Some(format!("{min} to {max} replicas")));
            show(
                "target concurrency:",
                d.target_concurrency.map(|t| t.to_string()),
            );
            show(
                "scale down delay:",
                d.scale_down_delay.map(|t| t.to_string()),
            );
            show("readiness:", d.readiness.clone());
            show(
                "replicas:",
                Some(format!(
                    "{} ({} ready, {} cold starts)",
                    function.replicas, function.available_replicas, function.cold_starts
                )),
            );
        }
        show("max body size:", d.max_body_size.map(|m| m.to_string()));
        show(
            "async:",
            Some(format!(
                "{} retries from {}, timeout {}, {}",
                d.retries.unwrap_or_default(),
                d.retry_backoff.unwrap_or_default(),
                d.async_timeout.unwrap_or_default(),
                d.async_concurrency.map_or_else(
                    || "concurrency bounded by the node's workers".to_owned(),
                    |n| format!("at most {n} at once")
                )
            )),
        );
        for trigger in &function.trigger_status {
            let mut line = trigger.state.clone();
            if let Some(error) = &trigger.error {
                line += &format!(" ({error})");
            }
            if let Some(next) = &trigger.next_firing_at {
                line += &format!(", next {next}");
            }
            if let Some(last) = &trigger.last_fired_at {
                line += &format!(", last {last}");
            }
            show("trigger:", Some(format!("{}: {line}", trigger.trigger)));
        }
        show(
            "env:",
            Some(
                d.env_vars
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        );
        show("outbound hosts:", Some(d.allowed_outbound_hosts.join(" ")));
        show("invocations:", Some(function.invocation_count.to_string()));
        show(
            "available:",
            Some(
                if function.available_replicas > 0 || d.min_scale == Some(0) {
                    "yes"
                } else {
                    "no (see the node's log)"
                }
                .into(),
            ),
        );
        Ok(())
    }
}
