//! `wisp token`: create, list and revoke namespace tokens.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use sha2::{Digest as _, Sha256};
use wisp_core::tenancy::{NewToken, Role, s3_keys};

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
    /// Print a token's S3 keys, for `aws`, boto3 or rclone against the
    /// node's buckets: `eval "$(wisp token s3-keys)"`.
    S3Keys {
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
            Action::S3Keys { remote } => {
                let token = remote
                    .token()
                    .context("no token: pass --token or set WISP_TOKEN")?;
                let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let (id, secret) = s3_keys(&hash);
                let endpoint = format!("{}/s3", remote.url().trim_end_matches('/'));
                if remote.json {
                    let keys = serde_json::json!({
                        "accessKeyId": id,
                        "secretAccessKey": secret,
                        "endpointUrl": endpoint,
                    });
                    println!("{}", serde_json::to_string_pretty(&keys)?);
                } else {
                    println!("export AWS_ACCESS_KEY_ID={id}");
                    println!("export AWS_SECRET_ACCESS_KEY={secret}");
                    println!("export AWS_ENDPOINT_URL={endpoint}");
                    println!("export AWS_REGION=us-east-1");
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
