//! Tenants: namespaces with their quotas, tokens that hold one role in one
//! namespace, and the one rule that decides what a caller may do
//! ([`Principal::allow`]); with the JSON shapes of `/system/namespaces`,
//! `/system/tokens` and `/system/secrets`.
//!
//! The decision is pure, so the server checks every route the same way: it
//! resolves the bearer token to a [`Principal`], then asks it about the
//! namespace and the [`Action`] the route touches.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::ByteSize;

/// What a namespace token may do inside its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything inside the namespace, its tokens included.
    Admin,
    /// Deploy, update, scale and remove functions, upload artifacts, manage
    /// secrets, read and write key-value stores, read functions, logs,
    /// traces, usage and calls; invoke.
    Deploy,
    /// Invoke private functions, list and describe functions.
    Invoke,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Self; 3] = [Self::Admin, Self::Deploy, Self::Invoke];

    /// The role's name as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Deploy => "deploy",
            Self::Invoke => "invoke",
        }
    }

    /// Whether the role allows `action` inside its namespace.
    pub fn permits(self, action: Action) -> bool {
        match self {
            Self::Admin => true,
            Self::Deploy => action != Action::ManageTokens,
            Self::Invoke => matches!(action, Action::Read | Action::Invoke),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("unknown role `{text}`: use admin, deploy or invoke"))
    }
}

/// What a request does inside one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// List and describe functions, see the namespace.
    Read,
    /// Invoke functions, private ones included.
    Invoke,
    /// Deploy, update, scale and remove functions; upload artifacts; retry calls.
    Deploy,
    /// Read logs, traces, call records, usage and async calls.
    Observe,
    /// Create, list and revoke the namespace's tokens.
    ManageTokens,
    /// Create, list, replace and remove the namespace's secrets.
    ManageSecrets,
    /// Read and write the namespace's key-value stores.
    ManageData,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read functions",
            Self::Invoke => "invoke functions",
            Self::Deploy => "deploy functions",
            Self::Observe => "read logs, traces, usage and calls",
            Self::ManageTokens => "manage tokens",
            Self::ManageSecrets => "manage secrets",
            Self::ManageData => "read and write key-value stores",
        })
    }
}

/// Who a request comes from, once its bearer token is resolved. It
/// serializes so a node can ask the others of a cluster on its behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// The node's admin token: everything, everywhere.
    Node,
    /// A token of one namespace with one role.
    Tenant {
        /// The token's id.
        id: String,
        /// The namespace it acts in.
        namespace: String,
        /// What it may do there.
        role: Role,
    },
}

/// A request its principal may not make: a 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// A namespace token used outside its namespace.
    #[error("this token acts only in namespace {own}, not in {asked}")]
    OtherNamespace {
        /// The token's namespace.
        own: String,
        /// The namespace the request touches.
        asked: String,
    },
    /// The token's role does not allow the action.
    #[error("a token with role {role} in namespace {namespace} cannot {action}")]
    Role {
        /// The token's role.
        role: Role,
        /// Its namespace.
        namespace: String,
        /// What the request does.
        action: Action,
    },
    /// Something only the node's admin token may do.
    #[error("only the node's admin token can {0}")]
    NodeOnly(&'static str),
}

impl Principal {
    /// Allows `action` in `namespace`, or says why not.
    pub fn allow(&self, namespace: &str, action: Action) -> Result<(), Forbidden> {
        let Self::Tenant {
            namespace: own,
            role,
            ..
        } = self
        else {
            return Ok(());
        };
        if own != namespace {
            return Err(Forbidden::OtherNamespace {
                own: own.clone(),
                asked: namespace.to_owned(),
            });
        }
        if !role.permits(action) {
            return Err(Forbidden::Role {
                role: *role,
                namespace: own.clone(),
                action,
            });
        }
        Ok(())
    }

    /// Allows only the node's admin token; `what` names the request ("create namespaces").
    pub fn allow_node(&self, what: &'static str) -> Result<(), Forbidden> {
        match self {
            Self::Node => Ok(()),
            Self::Tenant { .. } => Err(Forbidden::NodeOnly(what)),
        }
    }

    /// What a listing covers: the namespace `asked` for if the principal
    /// may do `action` there; when none is asked, every namespace for the
    /// node's token and its own namespace for a namespace token.
    pub fn scope(&self, asked: Option<&str>, action: Action) -> Result<Scope, Forbidden> {
        let namespace = match (self, asked) {
            (_, Some(asked)) => asked,
            (Self::Node, None) => return Ok(Scope(None)),
            (Self::Tenant { namespace, .. }, None) => namespace,
        };
        self.allow(namespace, action)?;
        Ok(Scope(Some(namespace.to_owned())))
    }

    /// Allows `action` in some namespace: for requests not tied to one
    /// (uploading an artifact, which is shared by content).
    pub fn allow_somewhere(&self, action: Action) -> Result<(), Forbidden> {
        match self {
            Self::Node => Ok(()),
            Self::Tenant { namespace, .. } => self.allow(namespace, action),
        }
    }
}

/// The namespaces a listing covers: one, or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(Option<String>);

impl Scope {
    /// Whether `namespace` is covered.
    pub fn includes(&self, namespace: &str) -> bool {
        self.0.as_deref().is_none_or(|only| only == namespace)
    }

    /// The one namespace covered, or `None` for all.
    pub fn namespace(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The one namespace covered, or `None` for all, as a filter takes it.
    pub fn into_namespace(self) -> Option<String> {
        self.0
    }
}

/// A namespace's quotas; an absent one is unbounded (the node's own limits
/// still apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quotas {
    /// Functions the namespace may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_functions: Option<u32>,
    /// Invocations of its functions that may run at once; it overrides the
    /// node's per-namespace limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// The total size of the distinct artifacts its functions use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_artifact_bytes: Option<ByteSize>,
    /// Async calls it may have queued or running; it overrides the node's
    /// per-namespace limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_calls: Option<u32>,
    /// Bytes of async calls (requests as stored) it may have queued or
    /// running; it overrides the node's per-namespace limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<ByteSize>,
    /// Bytes its buckets' objects may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object_bytes: Option<ByteSize>,
}

/// What a namespace holds, as its quotas count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceUsage {
    /// Its functions.
    pub functions: u32,
    /// The total size of the distinct artifacts they use.
    pub artifact_bytes: u64,
}

/// A change that would take a namespace over a quota: a 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// One function too many.
    #[error("namespace {namespace} is at its quota of {max} functions (max_functions)")]
    Functions {
        /// The namespace.
        namespace: String,
        /// Its quota.
        max: u32,
    },
    /// Artifacts too large.
    #[error(
        "namespace {namespace}'s functions would use {} of artifacts, over its quota of {} (max_artifact_bytes)",
        ByteSize(*used), ByteSize(*max)
    )]
    ArtifactBytes {
        /// The namespace.
        namespace: String,
        /// What its functions would use.
        used: u64,
        /// Its quota.
        max: u64,
    },
    /// An upload that would take the artifacts the namespace uploaded and
    /// none of its functions uses yet over its artifact quota (or, when it
    /// sets none, over the node's limit on unused uploads).
    #[error(
        "namespace {namespace}'s uploads that none of its functions uses would take {}, \
         over its quota of {} ({quota}): deploy or wait for them to be collected",
        ByteSize(*unused), ByteSize(*max)
    )]
    UnusedUploads {
        /// The namespace.
        namespace: String,
        /// What its unused uploads would take with this one (at least).
        unused: u64,
        /// Its quota.
        max: u64,
        /// Which quota: `max_artifact_bytes`, or the node's
        /// `--namespace-max-unused-upload-bytes`.
        quota: &'static str,
    },
}

impl Quotas {
    /// Checks the quotas are usable: a quota of zero would refuse everything.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("maxFunctions", self.max_functions == Some(0)),
            ("maxConcurrency", self.max_concurrency == Some(0)),
            (
                "maxArtifactBytes",
                self.max_artifact_bytes == Some(ByteSize(0)),
            ),
            ("maxQueuedCalls", self.max_queued_calls == Some(0)),
            ("maxQueuedBytes", self.max_queued_bytes == Some(ByteSize(0))),
            ("maxObjectBytes", self.max_object_bytes == Some(ByteSize(0))),
        ];
        match zero.into_iter().find(|(_, zero)| *zero) {
            Some((quota, _)) => Err(format!("{quota} must be at least 1")),
            None => Ok(()),
        }
    }

    /// Checks what `namespace` would hold after a change against its quotas.
    pub fn check(&self, namespace: &str, after: NamespaceUsage) -> Result<(), QuotaExceeded> {
        if let Some(max) = self.max_functions
            && after.functions > max
        {
            return Err(QuotaExceeded::Functions {
                namespace: namespace.to_owned(),
                max,
            });
        }
        if let Some(ByteSize(max)) = self.max_artifact_bytes
            && after.artifact_bytes > max
        {
            return Err(QuotaExceeded::ArtifactBytes {
                namespace: namespace.to_owned(),
                used: after.artifact_bytes,
                max,
            });
        }
        Ok(())
    }
}

/// `POST /system/namespaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewNamespace {
    /// A DNS label.
    pub name: String,
    /// Its quotas; none when absent.
    #[serde(default)]
    pub quotas: Quotas,
}

/// A namespace: `GET /system/namespaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceInfo {
    /// Its name.
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// Functions deployed in it.
    pub functions: u32,
    /// The total size of the distinct artifacts they use.
    pub artifact_bytes: u64,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// `POST /system/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    /// The namespace the token acts in.
    pub namespace: String,
    /// What it may do there.
    pub role: Role,
    /// A label for people ("ci", "alice").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A token as listed: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Its id, used to revoke it.
    pub id: String,
    /// The namespace it acts in.
    pub namespace: String,
    /// What it may do there.
    pub role: Role,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// The answer to `POST /system/tokens`: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// The token, for `Authorization: Bearer`.
    pub token: String,
    /// What it is.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `POST` and `PUT /system/secrets`. Its `Debug` leaves the value out, so
/// it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSecret {
    /// The secret's name, a DNS label.
    pub name: String,
    /// Its namespace; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The value; never shown again.
    #[serde(default)]
    pub value: String,
    /// The value as base64, as OpenFaaS's clients send a secret read from a
    /// file; used when `value` is empty. It must decode to UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSecret")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A secret as listed: its name, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// The largest secret value: it has to fit in an environment variable.
pub const MAX_SECRET_SIZE: usize = 64 << 10;

/// Checks a secret's value: not empty, at most [`MAX_SECRET_SIZE`], no NUL
/// (an environment variable cannot hold one). The message never quotes it.
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_SECRET_SIZE || value.contains('\0') {
        return Err(format!(
            "a secret's value must be 1 byte to {} KiB, without NUL bytes",
            MAX_SECRET_SIZE >> 10
        ));
    }
    Ok(())
}

/// The environment variable a secret is handed over as: `db-password` is `DB_PASSWORD`.
pub fn secret_env_name(secret: &str) -> String {
    secret.to_ascii_uppercase().replace('-', "_")
}

/// The longest token label.
pub const MAX_TOKEN_LABEL: usize = 100;

/// A token's S3 keys, from its SHA-256 `hash` (what the node keeps of it):
/// the access key id, the hex of the first 10 bytes of the hash's own
/// SHA-256, which says nothing of the secret; and the secret access key,
/// the hash in hex, from which the token cannot be found.
pub fn s3_keys(hash: &[u8; 32]) -> (String, String) {
    use sha2::Digest as _;
    let id = sha2::Sha256::digest(hash);
    (hex::encode(&id[..10]), hex::encode(hash))
}

/// Checks a token's label: printable and short, since lists show it.
pub fn validate_token_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > MAX_TOKEN_LABEL || label.chars().any(char::is_control) {
        return Err(format!(
            "a token's name must be 1 to {MAX_TOKEN_LABEL} printable characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(namespace: &str, role: Role) -> Principal {
        Principal::Tenant {
            id: "t1".into(),
            namespace: namespace.into(),
            role,
        }
    }

    #[test]
    fn secrets_are_named_as_variables_and_never_printed() {
        assert_eq!(secret_env_name("db-password"), "DB_PASSWORD");
        let secret = NewSecret {
            name: "db-password".into(),
            namespace: None,
            value: "hunter2".into(),
            raw_value: Some("aHVudGVyMg==".into()),
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{secret:?}").contains("aHVudGVyMg"));
        assert!(validate_secret_value("").is_err());
        assert!(validate_secret_value("a\0b").is_err());
        assert!(validate_secret_value("hunter2").is_ok());
    }

    #[test]
    fn roles_permit_what_the_table_says() {
        use Action::*;
        let table = [
            (Role::Admin, [true, true, true, true, true, true, true]),
            (Role::Deploy, [true, true, true, true, false, true, true]),
            (
                Role::Invoke,
                [true, true, false, false, false, false, false],
            ),
        ];
        for (role, expected) in table {
            for (action, allowed) in [
                Read,
                Invoke,
                Deploy,
                Observe,
                ManageTokens,
                ManageSecrets,
                ManageData,
            ]
            .into_iter()
            .zip(expected)
            {
                assert_eq!(role.permits(action), allowed, "{role} {action}");
            }
        }
    }

    #[test]
    fn a_namespace_token_acts_only_in_its_namespace() {
        let admin = tenant("team-a", Role::Admin);
        assert_eq!(admin.allow("team-a", Action::ManageTokens), Ok(()));
        let error = admin.allow("team-b", Action::Read).unwrap_err();
        assert_eq!(
            error.to_string(),
            "this token acts only in namespace team-a, not in team-b"
        );
        let error = tenant("team-a", Role::Invoke)
            .allow("team-a", Action::Deploy)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "a token with role invoke in namespace team-a cannot deploy functions"
        );
        assert_eq!(
            Principal::Node.allow("anything", Action::ManageTokens),
            Ok(())
        );
        assert!(admin.allow_node("create namespaces").is_err());
        assert_eq!(Principal::Node.allow_node("create namespaces"), Ok(()));
    }

    #[test]
    fn listings_are_scoped_to_the_token_namespace() {
        let deploy = tenant("team-a", Role::Deploy);
        let own = deploy.scope(None, Action::Observe).unwrap();
        assert_eq!(own.namespace(), Some("team-a"));
        assert!(own.includes("team-a") && !own.includes("team-b"));
        assert_eq!(deploy.scope(Some("team-a"), Action::Observe), Ok(own));
        assert!(deploy.scope(Some("team-b"), Action::Observe).is_err());
        assert!(
            tenant("team-a", Role::Invoke)
                .scope(None, Action::Observe)
                .is_err()
        );
        let all = Principal::Node.scope(None, Action::Observe).unwrap();
        assert!(all.includes("anything") && all.namespace().is_none());
        let one = Principal::Node.scope(Some("x"), Action::Observe).unwrap();
        assert_eq!(one.into_namespace(), Some("x".into()));
    }

    #[test]
    fn quotas_name_the_quota_that_is_exceeded() {
        let quotas = Quotas {
            max_functions: Some(2),
            max_concurrency: Some(1),
            max_artifact_bytes: Some(ByteSize(1 << 20)),
            ..Quotas::default()
        };
        let within = NamespaceUsage {
            functions: 2,
            artifact_bytes: 1 << 20,
        };
        assert_eq!(quotas.check("team-a", within), Ok(()));
        let error = quotas
            .check(
                "team-a",
                NamespaceUsage {
                    functions: 3,
                    ..within
                },
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "namespace team-a is at its quota of 2 functions (max_functions)"
        );
        let error = quotas
            .check(
                "team-a",
                NamespaceUsage {
                    artifact_bytes: (1 << 20) + 1,
                    ..within
                },
            )
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("over its quota of 1MiB (max_artifact_bytes)")
        );
        assert_eq!(
            Quotas::default().check(
                "x",
                NamespaceUsage {
                    functions: u32::MAX,
                    artifact_bytes: u64::MAX
                }
            ),
            Ok(())
        );
    }

    #[test]
    fn zero_quotas_are_refused() {
        assert!(Quotas::default().validate().is_ok());
        let zero = Quotas {
            max_concurrency: Some(0),
            ..Quotas::default()
        };
        assert_eq!(
            zero.validate(),
            Err("maxConcurrency must be at least 1".into())
        );
    }

    #[test]
    fn roles_and_shapes_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("owner".parse::<Role>().is_err());
        let body: NewNamespace = serde_json::from_str(
            r#"{"name": "team-a", "quotas": {"maxFunctions": 2, "maxArtifactBytes": "100MiB"}}"#,
        )
        .unwrap();
        assert_eq!(body.quotas.max_artifact_bytes, Some(ByteSize(100 << 20)));
        assert!(
            serde_json::from_str::<NewNamespace>(r#"{"name": "a", "quotas": {"maxFunction": 2}}"#)
                .is_err()
        );
        assert!(validate_token_label("ci").is_ok());
        assert!(validate_token_label("a\nb").is_err());
    }
}
