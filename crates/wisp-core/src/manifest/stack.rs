//! OpenFaaS's stack file, `stack.yml`, read as wisp functions: each
//! function's `handler` directory is the artifact and its `fprocess` the
//! command, run as the classic watchdog runs it (a `process` function:
//! request on STDIN, response on STDOUT), or, with `mode: http` in its
//! environment (of-watchdog's HTTP mode), as a `process-http` app that
//! listens on `$PORT`. Environment, secrets, labels, annotations, memory
//! limits, `com.openfaas.scale.min/max` labels and the `topic` and
//! `schedule` annotations (NATS and cron triggers) map; what does not is an
//! error that names its key. wisp builds no container images: `image` and
//! `lang` are read, said to be unused, and left out.

use std::collections::BTreeMap;

use serde::{Deserialize, de::IgnoredAny};

use super::{FunctionManifest, Imported, Manifest, ManifestError, inside};
use crate::{FunctionKind, HumanDuration, api::Limits, events::TriggerDeclaration, validate_name};

/// The environment variables that configure OpenFaaS's watchdogs, not the function.
const WATCHDOG_VARIABLES: [&str; 6] = [
    "mode",
    "upstream_url",
    "exec_timeout",
    "read_timeout",
    "write_timeout",
    "max_inflight",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stack {
    #[serde(rename = "version")]
    _version: Option<IgnoredAny>,
    provider: Option<Provider>,
    functions: BTreeMap<String, Function>,
    configuration: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    name: String,
    gateway: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Function {
    lang: Option<String>,
    handler: Option<String>,
    image: Option<String>,
    fprocess: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    environment: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    limits: Option<Limits>,
}

/// Reads a `stack.yml`.
pub fn parse(text: &str) -> Result<Imported, ManifestError> {
    let stack: Stack = serde_yaml_ng::from_str(text).map_err(|error| ManifestError {
        line: error.location().map(|location| location.line()),
        message: error.to_string().replace("field", "key"),
    })?;
    let mut notes = Vec::new();
    if stack.configuration.is_some() {
        notes
            .push("configuration (faas-cli's templates and build settings) is not used".to_owned());
    }
    if let Some(provider) = stack.provider {
        if provider.name != "openfaas" {
            return Err(ManifestError::key(
                "provider.name",
                format!("`{}`: wisp reads OpenFaaS stack files", provider.name),
            ));
        }
        if let Some(gateway) = provider.gateway {
            notes.push(format!(
                "provider.gateway ({gateway}) is not used: wisp deploys to --url or WISP_URL"
            ));
        }
    }
    let mut functions = Vec::new();
    for (name, function) in stack.functions {
        let key = format!("functions.{name}");
        validate_name(&name).map_err(|why| ManifestError::key(&key, why))?;
        let Some(handler) = function.handler.as_deref() else {
            return Err(ManifestError::key(
                format!("{key}.handler"),
                "missing: wisp runs no container images, only a handler directory and its fprocess",
            ));
        };
        let Some(fprocess) = function.fprocess else {
            return Err(ManifestError::key(
                format!("{key}.fprocess"),
                format!(
                    "missing: wisp has no template for lang `{}`: give the command that runs the handler",
                    function.lang.as_deref().unwrap_or("dockerfile")
                ),
            ));
        };
        for (unused, value) in [("lang", &function.lang), ("image", &function.image)] {
            if let Some(value) = value {
                notes.push(format!(
                    "{key}.{unused} ({value}) is not used: wisp builds no image, it runs {handler} with `{fprocess}`"
                ));
            }
        }
        let mut environment: BTreeMap<String, String> = BTreeMap::new();
        for (variable, value) in function.environment {
            let value = match value {
                serde_yaml_ng::Value::String(text) => text,
                serde_yaml_ng::Value::Number(number) => number.to_string(),
                serde_yaml_ng::Value::Bool(flag) => flag.to_string(),
                _ => {
                    return Err(ManifestError::key(
                        format!("{key}.environment.{variable}"),
                        "must be a string, number or boolean",
                    ));
                }
            };
            environment.insert(variable, value);
        }
        // Classic watchdog (no mode) and of-watchdog's streaming and
        // serializing modes hand the request to the process on STDIN.
        let http = match environment.get("mode").map(String::as_str) {
            None | Some("streaming" | "serializing") => false,
            Some("http") => true,
            Some(mode) => {
                return Err(ManifestError::key(
                    format!("{key}.environment.mode"),
                    format!("`{mode}` has no wisp equivalent: http, streaming or serializing"),
                ));
            }
        };
        let kind = if http {
            FunctionKind::ProcessHttp
        } else {
            FunctionKind::Process
        };
        let mut mapped = FunctionManifest::new(name, kind);
        mapped.namespace = function
            .namespace
            .map(|namespace| {
                validate_name(&namespace)
                    .map_err(|why| ManifestError::key(format!("{key}.namespace"), why))?;
                Ok(namespace)
            })
            .transpose()?;
        mapped.artifact = Some(inside(&format!("{key}.handler"), handler)?);
        mapped.command = Some(fprocess);
        if let Some(timeout) = environment.get("exec_timeout") {
            mapped.timeout = Some(timeout.parse::<HumanDuration>().map_err(|why| {
                ManifestError::key(format!("{key}.environment.exec_timeout"), why)
            })?);
        }
        if http {
            notes.push(format!(
                "{key} runs in HTTP mode: it must listen on $PORT, which wisp sets"
            ));
        }
        let watchdog: Vec<&str> = environment
            .keys()
            .map(String::as_str)
            .filter(|variable| WATCHDOG_VARIABLES.contains(variable) && *variable != "mode")
            .collect();
        if !watchdog.is_empty() {
            notes.push(format!(
                "{key}.environment: {} configure OpenFaaS's watchdog, not the function: \
                 not passed on (exec_timeout is its timeout)",
                watchdog.join(", ")
            ));
        }
        environment.retain(|variable, _| !WATCHDOG_VARIABLES.contains(&variable.as_str()));
        mapped.env = environment;
        mapped.secrets = function.secrets;
        mapped.memory = function.limits.and_then(|limits| limits.memory);
        for (label, value) in function.labels {
            let scale = match label.as_str() {
                "com.openfaas.scale.min" => &mut mapped.min_scale,
                "com.openfaas.scale.max" => &mut mapped.max_scale,
                _ => {
                    if label.starts_with("com.openfaas.") {
                        notes.push(format!(
                            "{key}.labels.{label} is kept as a label and has no effect here"
                        ));
                    }
                    mapped.labels.insert(label, value);
                    continue;
                }
            };
            if !http {
                return Err(ManifestError::key(
                    format!("{key}.labels.{label}"),
                    "scales replicas, which only a function in HTTP mode (environment mode: http) has: \
                     a classic one is a process per request",
                ));
            }
            *scale = Some(value.parse().map_err(|_| {
                ManifestError::key(format!("{key}.labels.{label}"), "must be a whole number")
            })?);
        }
        let mut annotations = function.annotations;
        let schedule = annotations.remove("schedule");
        let topic = annotations.remove("topic");
        match (schedule, topic) {
            (Some(schedule), topic) => {
                if let Some(topic) = topic.filter(|topic| topic != "cron-function") {
                    return Err(ManifestError::key(
                        format!("{key}.annotations.topic"),
                        format!(
                            "`{topic}` with a schedule: the cron connector's topic is cron-function"
                        ),
                    ));
                }
                mapped.triggers.push(TriggerDeclaration {
                    cron: Some(schedule),
                    ..TriggerDeclaration::default()
                });
            }
            (None, Some(topics)) => {
                for subject in topics.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    mapped.triggers.push(TriggerDeclaration {
                        nats: Some(subject.to_owned()),
                        ..TriggerDeclaration::default()
                    });
                }
            }
            (None, None) => {}
        }
        mapped.annotations = annotations;
        functions.push(mapped);
    }
    Ok(Imported {
        manifest: Manifest {
            function: functions,
        },
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
version: 1.0
provider:
  name: openfaas
  gateway: http://127.0.0.1:8080
functions:
  hello:
    lang: python3
    handler: ./hello
    image: example/hello:latest
    fprocess: python3 index.py
    environment:
      GREETING: hi
      RETRIES: 3
      exec_timeout: 10s
      write_timeout: 10s
    secrets: [api-key]
    labels:
      team: web
    annotations:
      topic: orders.created
      owner: someone
    limits:
      memory: 128Mi
  ticker:
    handler: ./ticker
    fprocess: ./tick.sh
    annotations:
      topic: cron-function
      schedule: "*/5 * * * *"
  app:
    handler: ./app
    fprocess: node server.js
    environment:
      mode: http
      upstream_url: http://127.0.0.1:3000
    labels:
      com.openfaas.scale.min: "1"
      com.openfaas.scale.max: "4"
"#;

    #[test]
    fn functions_with_a_handler_and_fprocess_are_processes() {
        let imported = parse(STACK).unwrap();
        let [app, hello, ticker] = &imported.manifest.function[..] else {
            panic!("{imported:?}")
        };
        assert_eq!(
            (hello.kind, hello.artifact.as_deref()),
            (FunctionKind::Process, Some("./hello"))
        );
        assert_eq!(hello.command.as_deref(), Some("python3 index.py"));
        assert_eq!(hello.env.len(), 2);
        assert_eq!(
            (
                hello.env["GREETING"].as_str(),
                hello.env["RETRIES"].as_str()
            ),
            ("hi", "3")
        );
        assert_eq!(hello.timeout, Some("10s".parse().unwrap()));
        assert_eq!(hello.secrets, ["api-key"]);
        assert_eq!(hello.labels["team"], "web");
        assert_eq!(hello.annotations.keys().collect::<Vec<_>>(), ["owner"]);
        assert_eq!(hello.memory, Some("128MiB".parse().unwrap()));
        assert_eq!(hello.triggers[0].nats.as_deref(), Some("orders.created"));
        assert_eq!(ticker.triggers[0].cron.as_deref(), Some("*/5 * * * *"));
        assert_eq!(app.kind, FunctionKind::ProcessHttp);
        assert!(app.env.is_empty(), "{:?}", app.env);
        assert_eq!((app.min_scale, app.max_scale), (Some(1), Some(4)));
        let notes = imported.notes.join("\n");
        for said in [
            "provider.gateway",
            "functions.hello.lang",
            "functions.hello.image",
            "$PORT",
            "exec_timeout, write_timeout configure",
            "upstream_url configure",
        ] {
            assert!(notes.contains(said), "{said}: {notes}");
        }
    }

    #[test]
    fn what_has_no_wisp_equivalent_is_an_error_naming_its_key() {
        let cases = [
            (
                "      memory: 128Mi",
                "      memory: 128Mi\n      cpu: 100m",
                "unknown key `cpu`",
            ),
            ("    handler: ./ticker\n", "", "functions.ticker.handler"),
            ("    fprocess: ./tick.sh\n", "", "functions.ticker.fprocess"),
            (
                "      team: web",
                "      com.openfaas.scale.max: \"2\"",
                "functions.hello.labels.com.openfaas.scale.max",
            ),
            (
                "    secrets: [api-key]",
                "    readonly_root_filesystem: true",
                "unknown key `readonly_root_filesystem`",
            ),
            ("  name: openfaas", "  name: faasd-other", "provider.name"),
            (
                "    handler: ./hello",
                "    handler: ../../home",
                "functions.hello.handler",
            ),
            (
                "      GREETING: hi",
                "      mode: static",
                "functions.hello.environment.mode",
            ),
        ];
        for (from, to, named) in cases {
            assert!(STACK.contains(from), "{from}");
            let message = parse(&STACK.replace(from, to)).unwrap_err().to_string();
            assert!(message.contains(named), "{named}: {message}");
        }
    }
}
