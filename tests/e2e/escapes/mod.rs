//! Attacks on the real node, one module per boundary, each numbered after
//! the catalogue in docs/security.md: every test makes the attack, asserts
//! that it fails with a clear refusal, and that the node keeps serving.

mod artifacts;
mod egress;
mod host;
mod limits;
mod names;
mod network;
