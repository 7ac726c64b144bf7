//! wisp's shared vocabulary: the `wisp.toml` manifest, the JSON shapes of the
//! HTTP API, function names, human-readable durations and sizes, and the
//! validation that turns what a user wrote into a [`FunctionSpec`]; and
//! [`tenancy`], the rule deciding what a token may do in which namespace; and
//! [`egress`], the addresses functions and callbacks may not connect to.
//!
//! Nothing here does I/O, so the server, the store and the CLI agree on one
//! set of rules and every rule is unit-tested in isolation.

pub mod api;
pub mod egress;
pub mod events;
pub mod kv;
pub mod manifest;
pub mod name;
pub mod objects;
pub mod spec;
pub mod telemetry;
pub mod tenancy;
pub mod units;

pub use events::{CallState, Schedule, Trigger};
pub use name::{NameError, validate_name};
pub use spec::{
    AsyncPolicy, FunctionKind, FunctionSpec, Observed, Readiness, Route, Scale, SpecError,
};
pub use units::{ByteSize, HumanDuration};
