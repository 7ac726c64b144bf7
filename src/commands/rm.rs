//! `wisp rm`: remove a function.

use clap::Args;

use super::Remote;
use crate::client::Client;

/// Remove a deployed function.
///
/// Example: wisp rm hello
#[derive(Args)]
pub struct Rm {
    /// The function, as `name` or `name.namespace`.
    name: String,
    #[command(flatten)]
    remote: Remote,
}

impl Rm {
    pub fn execute(self) -> anyhow::Result<()> {
        let (name, namespace) = match self.name.split_once('.') {
            Some((name, namespace)) => (name, Some(namespace.to_owned())),
            None => (self.name.as_str(), None),
        };
        Client::new(&self.remote).remove(name, namespace)?;
        if self.remote.json {
            println!("{}", serde_json::json!({ "removed": self.name }));
        } else {
            println!("removed {}", self.name);
        }
        Ok(())
    }
}
