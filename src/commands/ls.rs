//! `wisp ls`: list deployed functions.

use clap::Args;

use super::Remote;
use crate::client::Client;

/// List deployed functions.
///
/// Example: wisp ls --namespace team-a --json
#[derive(Args)]
pub struct Ls {
    /// Only the functions of this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

impl Ls {
    pub fn execute(self) -> anyhow::Result<()> {
        let client = Client::new(&self.remote);
        let functions = match &self.namespace {
            Some(namespace) => client.functions_in(namespace)?,
            None => client.functions()?,
        };
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&functions)?);
            return Ok(());
        }
        println!(
            "{:<24} {:<12} {:<12} {:>11} {:>8}  ROUTE",
            "NAME", "NAMESPACE", "KIND", "INVOCATIONS", "REPLICAS"
        );
        for function in functions {
            let deployment = &function.deployment;
            println!(
                "{:<24} {:<12} {:<12} {:>11} {:>8}  {}",
                deployment.service,
                deployment.namespace.as_deref().unwrap_or_default(),
                deployment
                    .kind
                    .map(|kind| kind.as_str())
                    .unwrap_or_default(),
                function.invocation_count,
                function.replicas,
                deployment.route.as_deref().unwrap_or("-"),
            );
        }
        Ok(())
    }
}
