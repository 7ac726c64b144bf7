//! `wisp secret`: create, list and remove a namespace's secrets. A value is
//! read from STDIN, sent once, and never shown again.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use wisp_core::tenancy::NewSecret;

use super::Remote;
use crate::client::Client;

/// Create, list and remove secrets, handed to the functions that declare them.
///
/// Example: echo -n s3cret | wisp secret create api-key
#[derive(Args)]
pub struct SecretCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create a secret from STDIN (one trailing newline is dropped), e.g.
    /// `printf %s "$PASSWORD" | wisp secret create db-password`.
    Create {
        /// Its name, a DNS label; functions see it as `DB_PASSWORD` and `/run/secrets/db-password`.
        name: String,
        /// Its namespace (`default` when absent).
        #[arg(long, short)]
        namespace: Option<String>,
        /// Replace the value of an existing secret; the functions using it are reloaded.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List secrets: names and creation times, never values.
    Ls {
        /// Only this namespace's secrets.
        #[arg(long, short)]
        namespace: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a secret no function declares.
    Rm {
        /// Its name.
        name: String,
        /// Its namespace (`default` when absent).
        #[arg(long, short)]
        namespace: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// The value on STDIN, without one trailing newline; refused when empty.
fn read_value() -> anyhow::Result<String> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .context("read the secret's value from STDIN (it must be UTF-8 text)")?;
    let trimmed = value
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&value);
    if trimmed.is_empty() {
        bail!("the secret's value is empty: pipe it on STDIN");
    }
    Ok(trimmed.to_owned())
}

impl SecretCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.action {
            Action::Create {
                name,
                namespace,
                replace,
                remote,
            } => {
                let request = NewSecret {
                    name,
                    namespace,
                    value: read_value()?,
                    raw_value: None,
                };
                let info = Client::new(&remote).put_secret(&request, replace)?;
                if remote.json {
                    println!("{}", serde_json::to_string_pretty(&info)?);
                } else {
                    let done = if replace { "replaced" } else { "created" };
                    println!(
                        "{done} secret {} in namespace {}",
                        info.name, info.namespace
                    );
                }
            }
            Action::Ls { namespace, remote } => {
                let query: Vec<_> = namespace.map(|ns| ("namespace", ns)).into_iter().collect();
                let secrets = Client::new(&remote).secrets(&query)?;
                if remote.json {
                    println!("{}", serde_json::to_string_pretty(&secrets)?);
                    return Ok(());
                }
                println!("{:<24} {:<24} CREATED", "NAME", "NAMESPACE");
                for secret in secrets {
                    println!(
                        "{:<24} {:<24} {}",
                        secret.name, secret.namespace, secret.created_at
                    );
                }
            }
            Action::Rm {
                name,
                namespace,
                remote,
            } => {
                Client::new(&remote).remove_secret(&name, namespace.as_deref())?;
                if remote.json {
                    println!("{}", serde_json::json!({ "removed": name }));
                } else {
                    println!("removed secret {name}");
                }
            }
        }
        Ok(())
    }
}
