//! `wisp kv`: read and write a namespace's key-value stores, the ones its
//! functions reach through `wasi:keyvalue`.

use std::io::{Read as _, Write as _};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::Remote;
use crate::client::Client;

/// Read and write key-value stores, as the functions that declare them do.
///
/// Example: wisp kv set default greeting hello && wisp kv get default greeting
#[derive(Args)]
pub struct KvCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Print a key's value, as stored.
    Get {
        /// The store, e.g. `default`.
        store: String,
        /// The key.
        key: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// Set a key: to VALUE, or to what STDIN holds when VALUE is absent
    /// (`wisp kv set default photo < photo.jpg`).
    Set {
        /// The store, e.g. `default`.
        store: String,
        /// The key.
        key: String,
        /// The value; read from STDIN when absent.
        value: Option<String>,
        #[command(flatten)]
        scope: Scope,
    },
    /// Remove a key; removing one that is absent is no error.
    Rm {
        /// The store.
        store: String,
        /// The key.
        key: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// List a store's keys, or, without STORE, the stores that hold any.
    Ls {
        /// The store.
        store: Option<String>,
        #[command(flatten)]
        scope: Scope,
    },
}

/// The namespace and the node.
#[derive(Args)]
struct Scope {
    /// The namespace whose stores these are (`default` when absent).
    #[arg(long, short)]
    namespace: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

impl Scope {
    fn client(&self) -> Client {
        Client::new(&self.remote)
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl KvCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.action {
            Action::Get { store, key, scope } => {
                let value = scope.client().kv_get(&store, &key, scope.namespace())?;
                if scope.remote.json {
                    let text = String::from_utf8(value)
                        .context("the value is not UTF-8 text: read it without --json")?;
                    println!("{}", serde_json::json!({ "key": key, "value": text }));
                } else {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&value)?;
                    stdout.flush()?;
                }
            }
            Action::Set {
                store,
                key,
                value,
                scope,
            } => {
                let value = match value {
                    Some(value) => value.into_bytes(),
                    None => {
                        let mut value = Vec::new();
                        std::io::stdin()
                            .read_to_end(&mut value)
                            .context("read the value from STDIN")?;
                        value
                    }
                };
                scope
                    .client()
                    .kv_set(&store, &key, scope.namespace(), &value)?;
                if scope.remote.json {
                    println!(
                        "{}",
                        serde_json::json!({ "set": key, "bytes": value.len() })
                    );
                } else {
                    println!("set {key} in {store} ({} bytes)", value.len());
                }
            }
            Action::Rm { store, key, scope } => {
                scope.client().kv_remove(&store, &key, scope.namespace())?;
                if scope.remote.json {
                    println!("{}", serde_json::json!({ "removed": key }));
                } else {
                    println!("removed {key} from {store}");
                }
            }
            Action::Ls { store, scope } => {
                let client = scope.client();
                let names = match &store {
                    Some(store) => client.kv_keys(store, scope.namespace())?,
                    None => client.kv_stores(scope.namespace())?,
                };
                if scope.remote.json {
                    println!("{}", serde_json::to_string_pretty(&names)?);
                } else {
                    for name in names {
                        println!("{name}");
                    }
                }
            }
        }
        Ok(())
    }
}
