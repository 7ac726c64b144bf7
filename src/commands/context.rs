//! `wisp login`, `wisp context` and `wisp version`: the nodes the client
//! commands talk to, and which versions both sides run.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::Remote;
use crate::{
    client::Client,
    contexts::{Context, Contexts},
};

/// Save a node and its token as a context, and use it from now on.
///
/// Example: wisp login https://wisp.example.com --token wisp_... --name prod
#[derive(Args)]
pub struct Login {
    /// The node's URL.
    url: String,
    /// The token to send it: its admin token or a namespace token.
    #[arg(long, env = "WISP_TOKEN", hide_env_values = true)]
    token: String,
    /// The context's name [default: the URL's host and port].
    #[arg(long)]
    name: Option<String>,
}

impl Login {
    pub fn execute(self) -> anyhow::Result<()> {
        let url = self.url.trim_end_matches('/').to_owned();
        let name = match self.name {
            Some(name) => name,
            None => url
                .split_once("://")
                .map_or(url.as_str(), |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        if name.is_empty() {
            bail!("{url} has no host to name the context after: give --name");
        }
        // The token must work there before it is saved.
        let remote = Remote {
            url_given: Some(url.clone()),
            token_given: Some(self.token.clone()),
            json: false,
        };
        Client::new(&remote)
            .functions()
            .with_context(|| format!("log in to {url}"))?;
        let mut saved = Contexts::load()?;
        saved.contexts.insert(
            name.clone(),
            Context {
                url: url.clone(),
                token: Some(self.token),
            },
        );
        saved.current = Some(name.clone());
        saved.save()?;
        println!("logged in to {url} as context {name}, now in use");
        Ok(())
    }
}

/// List, choose or forget the saved contexts.
///
/// Example: wisp context use prod
#[derive(Args)]
pub struct ContextCommand {
    #[command(subcommand)]
    action: ContextAction,
}

#[derive(Subcommand)]
enum ContextAction {
    /// List the contexts; `*` marks the one in use.
    Ls,
    /// Use a context from now on.
    Use {
        /// Its name.
        name: String,
    },
    /// Forget a context.
    Rm {
        /// Its name.
        name: String,
    },
}

impl ContextCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        let mut saved = Contexts::load()?;
        match self.action {
            ContextAction::Ls => {
                if saved.contexts.is_empty() {
                    println!("no contexts: save one with `wisp login URL --token TOKEN`");
                }
                for (name, context) in &saved.contexts {
                    let mark = if saved.current.as_ref() == Some(name) {
                        "*"
                    } else {
                        " "
                    };
                    println!("{mark} {name}\t{}", context.url);
                }
                return Ok(());
            }
            ContextAction::Use { name } => {
                if !saved.contexts.contains_key(&name) {
                    bail!("no context {name}: `wisp context ls` lists them");
                }
                saved.current = Some(name);
            }
            ContextAction::Rm { name } => {
                if saved.contexts.remove(&name).is_none() {
                    bail!("no context {name}: `wisp context ls` lists them");
                }
                if saved.current.as_ref() == Some(&name) {
                    saved.current = None;
                }
            }
        }
        saved.save()
    }
}

/// Show this client's version and the node's.
///
/// Example: wisp version --url http://127.0.0.1:8080
#[derive(Args)]
pub struct Version {
    #[command(flatten)]
    remote: Remote,
}

impl Version {
    pub fn execute(self) -> anyhow::Result<()> {
        println!("client: wisp {}", env!("CARGO_PKG_VERSION"));
        let url = self.remote.url();
        match Client::new(&self.remote).info() {
            Ok(info) => println!("node:   wisp {} at {url}", info.version.release),
            Err(error) => println!("node:   unknown ({error:#})"),
        }
        Ok(())
    }
}

/// Print a completion script for a shell.
///
/// Example: wisp completions bash > /etc/bash_completion.d/wisp
#[derive(Args)]
pub struct Completions {
    /// The shell.
    shell: clap_complete::Shell,
}

impl Completions {
    pub fn execute(self) -> anyhow::Result<()> {
        let mut command = <super::Cli as clap::CommandFactory>::command();
        clap_complete::generate(self.shell, &mut command, "wisp", &mut std::io::stdout());
        Ok(())
    }
}
