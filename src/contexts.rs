//! Named contexts: the nodes `wisp login` saved, with their tokens, and the
//! one the client commands use when neither `--url` nor `WISP_URL` names
//! another. Kept in `$XDG_CONFIG_HOME/wisp/contexts.toml` (else
//! `~/.config/wisp/contexts.toml`), readable by its owner only.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The saved contexts.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The context in use.
    pub current: Option<String>,
    /// By name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One saved node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The node's URL.
    pub url: String,
    /// The token sent to it.
    pub token: Option<String>,
}

impl Contexts {
    /// Where they are kept.
    pub fn file() -> PathBuf {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
            .unwrap_or_else(|| PathBuf::from(".config"));
        config.join("wisp/contexts.toml")
    }

    /// The saved contexts; none when the file does not exist.
    pub fn load() -> anyhow::Result<Self> {
        let file = Self::file();
        match std::fs::read_to_string(&file) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", file.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(error).with_context(|| format!("read {}", file.display())),
        }
    }

    /// Writes them, readable by their owner only.
    pub fn save(&self) -> anyhow::Result<()> {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let file = Self::file();
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let text = toml::to_string(self).expect("contexts serialize");
        let temporary = file.with_extension("tmp");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut out| out.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&temporary, &file))
            .with_context(|| format!("write {}", file.display()))
    }

    /// The context in use, if any.
    pub fn current(&self) -> Option<&Context> {
        self.contexts.get(self.current.as_deref()?)
    }
}

/// Whether `url` names this machine (a loopback address or `localhost`):
/// the only nodes the local node's admin token is sent to.
pub fn is_local(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_local() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.0.0.2:9/x",
            "http://localhost:8080/",
            "http://[::1]:8080",
            "https://LOCALHOST",
        ] {
            assert!(is_local(url), "{url}");
        }
        for url in [
            "http://10.0.0.5:8080",
            "http://example.com",
            "http://127.0.0.1.example.com:8080",
            "http://127.0.0.1@example.com",
            "http://[::2]:8080",
            "ftp://127.0.0.1",
            "127.0.0.1:8080",
        ] {
            assert!(!is_local(url), "{url}");
        }
    }
}
