//! `wisp token`: create, list and revoke namespace tokens.

use clap::{Args, Subcommand};
use wisp_core::tenancy::{NewToken, Role};

use super::Remote;
use crate::client::Client;

/// Create, list and revoke tokens that act in one namespace with one role.
///
/// Example: wisp token create --namespace team-a --role deploy --name ci
#[derive(Args)]
pub struct TokenCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Create a token and print it; it is shown this once and never again.
    Create {
        /// The namespace it acts in.
        #[arg(long, short)]
        namespace: String,
        /// What it may do there: admin, deploy or invoke.
        #[arg(long)]
        role: Role,
        /// A label, to recognise it in `wisp token ls`.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List tokens (never the tokens themselves).
    Ls {
        /// Only this namespace's tokens.
        #[arg(long, short)]
        namespace: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// The token's id, from `wisp token ls`.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

impl TokenCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.action {
            Action::Create {
                namespace,
                role,
                name,
                remote,
            } => {
                let request = NewToken {
                    namespace,
                    role,
                    name,
                };
                let created = Client::new(&remote).create_token(&request)?;
                if remote.json {
                    println!("{}", serde_json::to_string_pretty(&created)?);
                } else {
                    // The token alone on STDOUT, so `$(wisp token create ...)` captures it.
                    println!("{}", created.token);
                    eprintln!(
                        "token {} ({} in namespace {}): keep it now, it is not shown again",
                        created.info.id, created.info.role, created.info.namespace
                    );
                }
            }
            Action::Ls { namespace, remote } => {
                let query: Vec<_> = namespace.map(|ns| ("namespace", ns)).into_iter().collect();
                let tokens = Client::new(&remote).tokens(&query)?;
                if remote.json {
                    println!("{}", serde_json::to_string_pretty(&tokens)?);
                    return Ok(());
                }
                println!(
                    "{:<16} {:<24} {:<7} {:<20} NAME",
                    "ID", "NAMESPACE", "ROLE", "CREATED"
                );
                for token in tokens {
                    println!(
                        "{:<16} {:<24} {:<7} {:<20} {}",
                        token.id,
                        token.namespace,
                        token.role,
                        token.created_at,
                        token.name.as_deref().unwrap_or("-")
                    );
                }
            }
            Action::Revoke { id, remote } => {
                Client::new(&remote).revoke_token(&id)?;
                if remote.json {
                    println!("{}", serde_json::json!({ "revoked": id }));
                } else {
                    println!("revoked token {id}");
                }
            }
        }
        Ok(())
    }
}
