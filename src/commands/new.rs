//! `wisp new`: a ready project from a template embedded in the binary,
//! which `wisp deploy` builds and deploys from its own directory, wherever
//! it is.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

/// A project template: its files, with `{{name}}` standing for the project's name.
struct Template {
    name: &'static str,
    about: &'static str,
    needs: &'static str,
    files: &'static [(&'static str, &'static str)],
    /// Whether it gets [`WASI_HTTP_WIT`] under `wit/`.
    wasi_http: bool,
}

/// Embeds a template's file.
macro_rules! file {
    ($template:literal, $path:literal) => {
        (
            $path,
            include_str!(concat!("../../templates/", $template, "/", $path)),
        )
    };
}

/// The world of a wasi:http handler and the WASI interfaces it depends on,
/// which the templates whose compilers read WIT get under `wit/`.
const WASI_HTTP_WIT: &[(&str, &str)] = &[
    file!("wit", "world.wit"),
    file!("wit", "deps/cli.wit"),
    file!("wit", "deps/clocks.wit"),
    file!("wit", "deps/filesystem.wit"),
    file!("wit", "deps/http.wit"),
    file!("wit", "deps/io.wit"),
    file!("wit", "deps/random.wit"),
    file!("wit", "deps/sockets.wit"),
];

const TEMPLATES: &[Template] = &[
    Template {
        name: "rust-http",
        about: "a wasi:http component in Rust (wstd): JSON in, JSON out",
        needs: "Rust with `rustup target add wasm32-wasip2`",
        files: &[
            file!("rust-http", ".gitignore"),
            file!("rust-http", "Cargo.toml"),
            file!("rust-http", "README.md"),
            file!("rust-http", "src/main.rs"),
            file!("rust-http", "wisp.toml"),
        ],
        wasi_http: false,
    },
    Template {
        name: "rust-stdio",
        about: "a wasi:cli command in Rust: STDIN in, STDOUT out",
        needs: "Rust with `rustup target add wasm32-wasip2`",
        files: &[
            file!("rust-stdio", ".gitignore"),
            file!("rust-stdio", "Cargo.toml"),
            file!("rust-stdio", "README.md"),
            file!("rust-stdio", "src/main.rs"),
            file!("rust-stdio", "wisp.toml"),
        ],
        wasi_http: false,
    },
    Template {
        name: "python-http",
        about: "a wasi:http component in Python (componentize-py): JSON in, JSON out",
        needs: "`pip install componentize-py`",
        files: &[
            file!("python-http", ".gitignore"),
            file!("python-http", "README.md"),
            file!("python-http", "app.py"),
            file!("python-http", "wisp.toml"),
            file!("python-http", "wisp_http.py"),
        ],
        wasi_http: true,
    },
    Template {
        name: "js-http",
        about: "a wasi:http component in JavaScript (componentize-js): JSON in, JSON out",
        needs: "Node.js and npm",
        files: &[
            file!("js-http", ".gitignore"),
            file!("js-http", "README.md"),
            file!("js-http", "app.js"),
            file!("js-http", "package.json"),
            file!("js-http", "wisp.toml"),
        ],
        wasi_http: true,
    },
    Template {
        name: "c-stdio",
        about: "a wasi:cli command in C (clang, wasi-libc): STDIN in, STDOUT out",
        needs: "clang, lld and wasi-libc",
        files: &[
            file!("c-stdio", ".gitignore"),
            file!("c-stdio", "README.md"),
            file!("c-stdio", "main.c"),
            file!("c-stdio", "wisp.toml"),
        ],
        wasi_http: false,
    },
    Template {
        name: "shell",
        about: "a process per request running a shell script (the watchdog contract)",
        needs: "/bin/sh on the node",
        files: &[
            file!("shell", "README.md"),
            file!("shell", "handler.sh"),
            file!("shell", "wisp.toml"),
        ],
        wasi_http: false,
    },
    Template {
        name: "python",
        about: "a process per request running a Python script: JSON in, JSON out",
        needs: "python3 on the node",
        files: &[
            file!("python", "README.md"),
            file!("python", "handler.py"),
            file!("python", "wisp.toml"),
        ],
        wasi_http: false,
    },
    Template {
        name: "python-app",
        about: "a long-running Python HTTP app on $PORT (process-http)",
        needs: "python3 on the node",
        files: &[
            file!("python-app", "README.md"),
            file!("python-app", "app.py"),
            file!("python-app", "wisp.toml"),
        ],
        wasi_http: false,
    },
    Template {
        name: "node-app",
        about: "a long-running Node.js HTTP app on $PORT (process-http)",
        needs: "node on the node",
        files: &[
            file!("node-app", "README.md"),
            file!("node-app", "server.js"),
            file!("node-app", "wisp.toml"),
        ],
        wasi_http: false,
    },
];

/// Start a project from a template: `wisp new --list` shows them.
///
/// Example: wisp new hello --template rust-http && cd hello && wisp deploy
#[derive(Args)]
pub struct New {
    /// The project's name, also its function's: a DNS label.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// The template.
    #[arg(long, short, default_value = "rust-http")]
    template: String,
    /// Where to write it [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// List the templates.
    #[arg(long)]
    list: bool,
}

impl New {
    pub fn execute(self) -> anyhow::Result<()> {
        if self.list {
            for template in TEMPLATES {
                println!(
                    "{:<12} {} (needs {})",
                    template.name, template.about, template.needs
                );
            }
            return Ok(());
        }
        let name = self.name.expect("clap requires a name without --list");
        wisp_core::validate_name(&name).map_err(|why| anyhow::anyhow!("{name}: {why}"))?;
        let Some(template) = TEMPLATES.iter().find(|t| t.name == self.template) else {
            let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
            bail!(
                "no template {}: there are {}",
                self.template,
                names.join(", ")
            );
        };
        let dir = self.dir.unwrap_or_else(|| PathBuf::from(&name));
        if dir.exists() {
            bail!("{} exists: give a new directory with --dir", dir.display());
        }
        write(template, &name, &dir).inspect_err(|_| {
            // Nothing half-written stays behind.
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        println!(
            "created {} from template {} (needs {}): cd {} && wisp deploy",
            dir.display(),
            template.name,
            template.needs,
            dir.display()
        );
        Ok(())
    }
}

fn write(template: &Template, name: &str, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let wit = WASI_HTTP_WIT
        .iter()
        .filter(|_| template.wasi_http)
        .map(|(path, text)| (format!("wit/{path}"), text));
    let own = template
        .files
        .iter()
        .map(|(path, text)| ((*path).to_owned(), text));
    for (path, text) in own.chain(wit) {
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        std::fs::write(&target, text.replace("{{name}}", name))
            .with_context(|| format!("write {}", target.display()))?;
        if path.ends_with(".sh") {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("make {} executable", target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_under_templates_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    on_disk.push(path.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = TEMPLATES
            .iter()
            .flat_map(|t| t.files.iter().map(|(path, _)| format!("{}/{path}", t.name)))
            .chain(WASI_HTTP_WIT.iter().map(|(path, _)| format!("wit/{path}")))
            .collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }
}
