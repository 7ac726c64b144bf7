//! `wisp scale`: set a `process-http` function's replica count.

use clap::Args;

use super::Remote;
use crate::client::Client;

/// Set how many replicas a process-http function runs, or hand it back to the autoscaler.
///
/// Example: wisp scale shop 3; wisp scale shop auto
#[derive(Args)]
pub struct Scale {
    /// The function, as `name` or `name.namespace`.
    name: String,
    /// The replica count, or `auto` for the autoscaler.
    replicas: Replicas,
    #[command(flatten)]
    remote: Remote,
}

/// A fixed count or `auto`.
#[derive(Clone, Copy)]
struct Replicas(Option<u32>);

impl std::str::FromStr for Replicas {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self(None)),
            count => count
                .parse()
                .map(|count| Self(Some(count)))
                .map_err(|_| format!("`{count}` is not a replica count or `auto`")),
        }
    }
}

impl Scale {
    pub fn execute(self) -> anyhow::Result<()> {
        let function = Client::new(&self.remote).scale(&self.name, self.replicas.0)?;
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&function)?);
            return Ok(());
        }
        match self.replicas.0 {
            Some(count) => println!(
                "scaling {} to {count} replicas (now {} running, {} ready)",
                self.name, function.replicas, function.available_replicas
            ),
            None => println!("{} is autoscaled again", self.name),
        }
        Ok(())
    }
}
