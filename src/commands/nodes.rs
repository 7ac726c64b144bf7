//! `wisp nodes`: list the live nodes of a cluster (or the one node).

use clap::Args;
use wisp_core::api::NodeInfo;

use super::Remote;
use crate::client::Client;

/// List the live nodes: in a cluster, every node that heartbeated in the last seconds.
///
/// Example: wisp nodes
#[derive(Args)]
pub struct Nodes {
    #[command(flatten)]
    remote: Remote,
}

impl Nodes {
    pub fn execute(self) -> anyhow::Result<()> {
        let nodes: Vec<NodeInfo> = Client::new(&self.remote).nodes()?;
        if self.remote.json {
            println!("{}", serde_json::to_string_pretty(&nodes)?);
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        println!(
            "{:<14} {:<10} {:<28} {:>6} {:>9}  LAST SEEN",
            "ID", "VERSION", "ADDRESS", "ACTIVE", "FUNCTIONS"
        );
        for node in nodes {
            println!(
                "{:<14} {:<10} {:<28} {:>6} {:>9}  {:.1}s ago",
                node.id,
                node.version,
                node.address,
                node.active,
                node.functions,
                now.saturating_sub(node.last_seen) as f64 / 1000.0
            );
        }
        Ok(())
    }
}
