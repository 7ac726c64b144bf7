//! `wisp ns`: create, list and remove namespaces.

use clap::{Args, Subcommand};
use wisp_core::{
    ByteSize,
    tenancy::{NewNamespace, Quotas},
};

use super::Remote;
use crate::client::Client;

/// Create, list and remove namespaces (the node's admin token creates and removes them).
///
/// Example: wisp ns create team-a --max-functions 10
#[derive(Args)]
pub struct Ns {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create a namespace, with quotas.
    Create {
        /// A DNS label.
        name: String,
        /// The most functions it may hold.
        #[arg(long)]
        max_functions: Option<u32>,
        /// The most invocations of its functions that may run at once.
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// The most bytes of distinct artifacts its functions may use (`100MiB`).
        #[arg(long)]
        max_artifact_bytes: Option<ByteSize>,
        /// The most async calls it may have queued or running [default: the node's].
        #[arg(long)]
        max_queued_calls: Option<u32>,
        /// The most bytes of async calls it may have queued or running (`256MiB`) [default: the node's].
        #[arg(long)]
        max_queued_bytes: Option<ByteSize>,
        /// The most bytes its buckets' objects may take (`10GiB`).
        #[arg(long)]
        max_object_bytes: Option<ByteSize>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List namespaces with their quotas and what they hold.
    Ls {
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove an empty namespace and its tokens.
    Rm {
        /// The namespace.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

impl Ns {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.action {
            Action::Create {
                name,
                max_functions,
                max_concurrency,
                max_artifact_bytes,
                max_queued_calls,
                max_queued_bytes,
                max_object_bytes,
                remote,
            } => {
                let request = NewNamespace {
                    name,
                    quotas: Quotas {
                        max_functions,
                        max_concurrency,
                        max_artifact_bytes,
                        max_queued_calls,
                        max_queued_bytes,
                        max_object_bytes,
                    },
                };
                let created = Client::new(&remote).create_namespace(&request)?;
                if remote.json {
                    println!("{}", serde_json::to_string_pretty(&created)?);
                } else {
                    println!("created namespace {}", created.name);
                }
            }
            Action::Ls { remote } => {
                let namespaces = Client::new(&remote).namespaces()?;
                if remote.json {
                    println!("{}", serde_json::to_string_pretty(&namespaces)?);
                    return Ok(());
                }
                println!(
                    "{:<24} {:>9} {:>13} {:>15} {:>12} {:>18}",
                    "NAME",
                    "FUNCTIONS",
                    "MAX-FUNCTIONS",
                    "MAX-CONCURRENCY",
                    "ARTIFACTS",
                    "MAX-ARTIFACT-BYTES"
                );
                let or_dash = |quota: Option<String>| quota.unwrap_or_else(|| "-".into());
                for namespace in namespaces {
                    let quotas = namespace.quotas;
                    println!(
                        "{:<24} {:>9} {:>13} {:>15} {:>12} {:>18}",
                        namespace.name,
                        namespace.functions,
                        or_dash(quotas.max_functions.map(|max| max.to_string())),
                        or_dash(quotas.max_concurrency.map(|max| max.to_string())),
                        ByteSize(namespace.artifact_bytes).to_string(),
                        or_dash(quotas.max_artifact_bytes.map(|max| max.to_string())),
                    );
                }
            }
            Action::Rm { name, remote } => {
                Client::new(&remote).remove_namespace(&name)?;
                if remote.json {
                    println!("{}", serde_json::json!({ "removed": name }));
                } else {
                    println!("removed namespace {name}");
                }
            }
        }
        Ok(())
    }
}
