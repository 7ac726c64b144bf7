//! Spin's application manifest, `spin.toml` (version 2), read as wisp
//! functions: each component an HTTP trigger names becomes a `wasm-http`
//! function with the trigger's route, its `source` as the artifact, its
//! build command, outbound hosts, files, environment and variables (as
//! environment variables). What has no wisp equivalent is an error that
//! names its key.

use std::collections::BTreeMap;

use serde::{Deserialize, de::IgnoredAny};

use super::{FunctionManifest, Imported, Manifest, ManifestError, inside};
use crate::{FunctionKind, validate_name};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpinManifest {
    spin_manifest_version: u32,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, Variable>,
    #[serde(default)]
    trigger: Triggers,
    #[serde(default)]
    component: BTreeMap<String, Component>,
}

/// Keys known and not needed: the application's name, version, authors
/// and description, and descriptions.
type Unused = Option<IgnoredAny>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Application {
    #[serde(rename = "name")]
    _name: Unused,
    #[serde(rename = "version")]
    _version: Unused,
    #[serde(rename = "description")]
    _description: Unused,
    #[serde(rename = "authors")]
    _authors: Unused,
    #[serde(default)]
    trigger: ApplicationTriggers,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationTriggers {
    http: Option<HttpSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSettings {
    base: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Variable {
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[serde(rename = "description")]
    _description: Unused,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Triggers {
    #[serde(default)]
    http: Vec<HttpTrigger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTrigger {
    route: Route,
    /// A component's name, or an inline component (not deployable).
    component: toml::Value,
    executor: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Route {
    Path(String),
    Private { private: bool },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Component {
    /// A path, or a remote component (not deployable).
    source: toml::Value,
    #[serde(rename = "description")]
    _description: Unused,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    build: Option<Build>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    command: String,
    workdir: Option<String>,
    #[serde(default)]
    watch: Vec<String>,
}

/// Reads a `spin.toml`; `variable` answers the values of required
/// application variables (`SPIN_VARIABLE_NAME`, as Spin reads them).
pub fn parse(
    text: &str,
    variable: &dyn Fn(&str) -> Option<String>,
) -> Result<Imported, ManifestError> {
    let spin: SpinManifest =
        toml::from_str(text).map_err(|error| ManifestError::toml(text, &error))?;
    if spin.spin_manifest_version != 2 {
        return Err(ManifestError::key(
            "spin_manifest_version",
            format!(
                "{} is not read: wisp reads version 2 (`spin doctor` upgrades older ones)",
                spin.spin_manifest_version
            ),
        ));
    }
    let base = spin
        .application
        .trigger
        .http
        .and_then(|http| http.base)
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    let mut routes: BTreeMap<String, (Option<String>, bool)> = BTreeMap::new();
    for (index, trigger) in spin.trigger.http.iter().enumerate() {
        let key = format!("trigger.http[{index}]");
        if trigger.executor.is_some() {
            return Err(ManifestError::key(
                format!("{key}.executor"),
                "wisp runs wasi:http components only (no WAGI)",
            ));
        }
        let toml::Value::String(id) = &trigger.component else {
            return Err(ManifestError::key(
                format!("{key}.component"),
                "an inline component has no name to deploy it under: declare it as [component.NAME]",
            ));
        };
        if !spin.component.contains_key(id) {
            return Err(ManifestError::key(
                format!("{key}.component"),
                format!("no [component.{id}]"),
            ));
        }
        let route = match &trigger.route {
            Route::Path(path) if path.split('/').any(|part| part.starts_with(':')) => {
                return Err(ManifestError::key(
                    format!("{key}.route"),
                    format!(
                        "`{path}` has a parameter: wisp routes are exact paths or `/prefix/...`"
                    ),
                ));
            }
            Route::Path(path) if format!("{base}{path}") == "/..." => {
                return Err(ManifestError::key(
                    format!("{key}.route"),
                    "`/...` would take the gateway's own paths: give the component a prefix \
                     such as `/app/...` (it is served at /function/NAME too)",
                ));
            }
            Route::Path(path) => (Some(format!("{base}{path}")), false),
            Route::Private { private: true } => (None, true),
            Route::Private { private: false } => {
                return Err(ManifestError::key(
                    format!("{key}.route"),
                    "give a path, or { private = true }",
                ));
            }
        };
        if routes.insert(id.clone(), route).is_some() {
            return Err(ManifestError::key(
                format!("{key}.component"),
                format!("component {id} has a route already: a wisp function has one"),
            ));
        }
    }
    let mut functions = Vec::new();
    let mut notes = Vec::new();
    for (id, component) in spin.component {
        let key = format!("component.{id}");
        let Some((route, private)) = routes.remove(&id) else {
            return Err(ManifestError::key(
                key,
                "no [[trigger.http]] names it: wisp deploys components HTTP triggers name",
            ));
        };
        validate_name(&id).map_err(|why| ManifestError::key(&key, why))?;
        let mut function = FunctionManifest::new(id, FunctionKind::WasmHttp);
        function.route = route;
        function.private = private.then_some(true);
        function.artifact = Some(match component.source {
            toml::Value::String(path) => inside(&format!("{key}.source"), &path)?,
            _ => {
                return Err(ManifestError::key(
                    format!("{key}.source"),
                    "wisp deploys local files: download the component and give its path",
                ));
            }
        });
        if let Some(build) = component.build {
            // Spin runs the command, and reads the globs, in `workdir`.
            match build.workdir {
                Some(dir) => {
                    let dir = inside(&format!("{key}.build.workdir"), &dir)?;
                    let dir = dir.trim_end_matches('/');
                    function.build = Some(format!(
                        "cd -- '{}' && {}",
                        dir.replace('\'', r"'\''"),
                        build.command
                    ));
                    function.watch = build
                        .watch
                        .iter()
                        .map(|glob| format!("{dir}/{glob}"))
                        .collect();
                }
                None => {
                    function.build = Some(build.command);
                    function.watch = build.watch;
                }
            }
        }
        function.allowed_outbound_hosts = component.allowed_outbound_hosts;
        function.files = files(&key, &component.files)?
            .map(|dir| inside(&format!("{key}.files"), &dir))
            .transpose()?;
        function.key_value_stores = component.key_value_stores;
        function.env = component.environment;
        if !component.variables.is_empty() {
            notes.push(format!(
                "{key}.variables are environment variables here (NAME in upper case): \
                 wisp does not provide Spin's variables interface"
            ));
        }
        for (name, template) in component.variables {
            let value = expand(&template, &spin.variables, variable)
                .map_err(|why| ManifestError::key(format!("{key}.variables.{name}"), why))?;
            let env_name = name.to_ascii_uppercase();
            if function.env.insert(env_name.clone(), value).is_some() {
                return Err(ManifestError::key(
                    format!("{key}.variables.{name}"),
                    format!("is the environment variable {env_name}, which `environment` sets too"),
                ));
            }
        }
        functions.push(function);
    }
    if spin.variables.values().any(|variable| variable.secret) {
        notes.push(
            "variables marked secret are plain environment variables here: \
             keep secrets in `wisp secret create` and a function's `secrets`"
                .to_owned(),
        );
    }
    Ok(Imported {
        manifest: Manifest {
            function: functions,
        },
        notes,
    })
}

/// A component's `files`: wisp gives a function one directory, seen at `/`.
fn files(key: &str, files: &[toml::Value]) -> Result<Option<String>, ManifestError> {
    let unmapped = || {
        ManifestError::key(
            format!("{key}.files"),
            "wisp maps one directory to the guest's `/`: write it as \
             [{ source = \"DIR\", destination = \"/\" }]",
        )
    };
    match files {
        [] => Ok(None),
        [toml::Value::Table(mount)] if mount.len() == 2 => {
            match (mount.get("source"), mount.get("destination")) {
                (Some(toml::Value::String(source)), Some(toml::Value::String(destination)))
                    if destination == "/" =>
                {
                    Ok(Some(source.clone()))
                }
                _ => Err(unmapped()),
            }
        }
        _ => Err(unmapped()),
    }
}

/// A component variable's value: its template with each `{{ name }}` an
/// application variable's value (its default, else `variable(name)`).
fn expand(
    template: &str,
    variables: &BTreeMap<String, Variable>,
    variable: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..]
            .find("}}")
            .map(|end| start + end)
            .ok_or_else(|| format!("`{template}` has an unclosed {{{{"))?;
        out.push_str(&rest[..start]);
        let name = rest[start + 2..end].trim();
        let declared = variables
            .get(name)
            .ok_or_else(|| format!("[variables] declares no `{name}`"))?;
        let value = variable(&format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase()))
            .or_else(|| declared.default.clone().filter(|_| !declared.required));
        match value {
            Some(value) => out.push_str(&value),
            None if declared.secret || declared.required => {
                return Err(format!(
                    "variable `{name}` is required: set SPIN_VARIABLE_{}",
                    name.to_ascii_uppercase()
                ));
            }
            None => return Err(format!("variable `{name}` has no default")),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    const APP: &str = r#"
spin_manifest_version = 2

[application]
name = "greetings"
version = "0.1.0"
authors = ["Someone <someone@example.com>"]

[application.trigger.http]
base = "/app"

[variables]
greeting = { default = "hello" }
api_key = { required = true, secret = true }

[[trigger.http]]
route = "/hello/..."
component = "hello"

[[trigger.http]]
route = { private = true }
component = "inner"

[component.hello]
source = "target/wasm32-wasip2/release/hello.wasm"
allowed_outbound_hosts = ["https://example.com"]
files = [{ source = "static", destination = "/" }]
environment = { MODE = "spin" }
key_value_stores = ["default"]
[component.hello.variables]
greeting = "{{ greeting }}, world"
[component.hello.build]
command = "cargo build --target wasm32-wasip2 --release"
workdir = "hello"
watch = ["src/**/*.rs"]

[component.inner]
source = "inner.wasm"
[component.inner.variables]
key = "{{ api_key }}"
"#;

    #[test]
    fn components_of_http_triggers_are_functions() {
        let set = |name: &str| (name == "SPIN_VARIABLE_API_KEY").then(|| "s3cret".to_owned());
        let imported = parse(APP, &set).unwrap();
        let [hello, inner] = &imported.manifest.function[..] else {
            panic!("{imported:?}")
        };
        assert_eq!(hello.name, "hello");
        assert_eq!(hello.kind, FunctionKind::WasmHttp);
        assert_eq!(hello.route.as_deref(), Some("/app/hello/..."));
        assert_eq!(
            hello.artifact.as_deref(),
            Some("target/wasm32-wasip2/release/hello.wasm")
        );
        assert_eq!(
            hello.build.as_deref(),
            Some("cd -- 'hello' && cargo build --target wasm32-wasip2 --release")
        );
        assert_eq!(hello.watch, ["hello/src/**/*.rs"]);
        assert_eq!(hello.allowed_outbound_hosts, ["https://example.com"]);
        assert_eq!(hello.files.as_deref(), Some("static"));
        assert_eq!(hello.env["MODE"], "spin");
        assert_eq!(hello.key_value_stores, ["default"]);
        assert_eq!(hello.env["GREETING"], "hello, world");
        assert_eq!((inner.route.as_deref(), inner.private), (None, Some(true)));
        assert_eq!(inner.env["KEY"], "s3cret");
        let notes = imported.notes.join("\n");
        assert!(
            notes.contains("component.hello.variables are environment variables"),
            "{notes}"
        );
        assert!(notes.contains("variables marked secret"), "{notes}");
    }

    #[test]
    fn what_has_no_wisp_equivalent_is_an_error_naming_its_key() {
        let error = |text: &str| parse(text, &none).unwrap_err().to_string();
        assert!(
            error(APP).contains("component.inner.variables.key"),
            "{}",
            error(APP)
        );
        let cases = [
            (
                "files = [{ source = \"static\", destination = \"/\" }]",
                "files = [\"static/**\"]",
                "component.hello.files",
            ),
            (
                "source = \"inner.wasm\"",
                "source = { url = \"https://example.com/x.wasm\", digest = \"sha256:00\" }",
                "component.inner.source",
            ),
            (
                "[[trigger.http]]\nroute = \"/hello/...\"",
                "[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"hello\"\n[[trigger.http]]\nroute = \"/hello/...\"",
                "unknown key `redis`",
            ),
            (
                "spin_manifest_version = 2",
                "spin_manifest_version = 2\n[[sqlite]]",
                "unknown key `sqlite`",
            ),
            (
                "route = \"/hello/...\"",
                "route = \"/users/:id\"",
                "trigger.http[0].route",
            ),
            (
                "source = \"inner.wasm\"",
                "source = \"../../etc/x.wasm\"",
                "component.inner.source",
            ),
            (
                "workdir = \"hello\"",
                "workdir = \"/home\"",
                "component.hello.build.workdir",
            ),
        ];
        let everything = APP
            .replace("base = \"/app\"", "")
            .replace("route = \"/hello/...\"", "route = \"/...\"");
        assert!(
            error(&everything).contains("trigger.http[0].route"),
            "{}",
            error(&everything)
        );
        for (from, to, named) in cases {
            let text = APP
                .replace(from, to)
                .replace("{{ api_key }}", "{{ greeting }}");
            let message = error(&text);
            assert!(message.contains(named), "{named}: {message}");
        }
    }
}
