//! One module per subcommand; each is a struct with `execute()`.

mod build;
mod calls;
mod context;
mod deploy;
mod describe;
mod dev;
mod invoke;
mod kv;
mod logs;
mod ls;
mod new;
mod nodes;
mod ns;
mod pipe;
mod rm;
mod scale;
mod secret;
mod token;
mod trace;
mod up;
mod usage;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::contexts;

/// An open, self-hosted serverless platform.
#[derive(Parser)]
#[command(name = "wisp", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Boxed: `wisp up` has many more flags than the client commands.
    Up(Box<up::Up>),
    New(new::New),
    Build(build::Build),
    Deploy(deploy::Deploy),
    Dev(dev::Dev),
    Invoke(invoke::Invoke),
    Pipe(pipe::Pipe),
    Calls(calls::Calls),
    Ls(ls::Ls),
    Nodes(nodes::Nodes),
    Describe(describe::Describe),
    Rm(rm::Rm),
    Scale(scale::Scale),
    Logs(logs::Logs),
    Trace(trace::TraceCommand),
    Usage(usage::UsageCommand),
    Ns(ns::Ns),
    Token(token::TokenCommand),
    Secret(secret::SecretCommand),
    Kv(kv::KvCommand),
    Login(context::Login),
    Context(context::ContextCommand),
    Version(context::Version),
    Completions(context::Completions),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Up(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::New(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Build(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Deploy(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Dev(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Invoke(command) => command.execute(),
            Command::Pipe(command) => command.execute(),
            Command::Calls(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Ls(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Nodes(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Describe(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Rm(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Scale(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Logs(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Trace(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Usage(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Ns(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Token(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Secret(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Kv(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Login(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Context(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Version(command) => command.execute().map(|()| ExitCode::SUCCESS),
            Command::Completions(command) => command.execute().map(|()| ExitCode::SUCCESS),
        }
    }
}

/// Where the gateway is and how to authenticate, shared by the client commands.
#[derive(Args, Clone)]
pub struct Remote {
    /// The gateway's URL [default: the current context's (`wisp login`), else
    /// http://127.0.0.1:8080].
    #[arg(long = "url", env = "WISP_URL", value_name = "URL")]
    url_given: Option<String>,
    /// A token: the node's admin token or a namespace token (`wisp token create`);
    /// defaults to the current context's, else, for a node on this machine
    /// only, the admin token `wisp up` keeps in its data directory.
    #[arg(
        long = "token",
        env = "WISP_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token_given: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

/// The URL of a node started with `wisp up`'s defaults.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";

impl Remote {
    /// The gateway's URL: `--url` or `WISP_URL`, else the current
    /// context's, else [`DEFAULT_URL`].
    pub fn url(&self) -> String {
        let url = match &self.url_given {
            Some(url) => url.clone(),
            None => contexts::Contexts::load()
                .ok()
                .and_then(|saved| saved.current().map(|context| context.url.clone()))
                .unwrap_or_else(|| DEFAULT_URL.to_owned()),
        };
        url.trim_end_matches('/').to_owned()
    }

    /// The token: `--token` or `WISP_TOKEN`; else the token of a context
    /// saved for this URL (the current one first); else, for a node on this
    /// machine only, the local node's admin token. Never the local token to
    /// another machine.
    pub fn token(&self) -> Option<String> {
        if let Some(token) = &self.token_given {
            return Some(token.clone());
        }
        let url = self.url();
        let saved = contexts::Contexts::load().unwrap_or_default();
        let saved_token = saved
            .current()
            .into_iter()
            .chain(saved.contexts.values())
            .find(|context| context.url.trim_end_matches('/') == url)
            .and_then(|context| context.token.clone());
        saved_token.or_else(|| {
            contexts::is_local(&url)
                .then(|| std::fs::read_to_string(default_data_dir().join("admin-token")).ok())
                .flatten()
                .map(|token| token.trim().to_owned())
        })
    }
}

/// The data directory: `$WISP_DATA_DIR`, else `$XDG_DATA_HOME/wisp`, else `~/.local/share/wisp`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WISP_DATA_DIR") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("wisp");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/wisp"),
        None => PathBuf::from(".wisp"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn every_command_shows_an_example_in_its_help() {
        for command in Cli::command().get_subcommands() {
            let help = command
                .get_long_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                help.contains("Example: wisp ") || help.contains("| wisp "),
                "wisp {} --help has no example: {help}",
                command.get_name()
            );
        }
    }
}
