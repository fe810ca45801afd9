//! Wire types of the Mesos v1 HTTP API as Agora speaks it (stout-style JSON: snake_case
//! proto field names, enum names as strings, unknown keys ignored), RecordIO framing,
//! resource arithmetic, and the internal agent <-> master protocol.
//!
//! This crate performs no I/O and depends on nothing asynchronous: it is the one place
//! where types are serialised, shared by the master, the agent, the executor and the CLI.
#![forbid(unsafe_code)]

pub mod agent_proto;
pub mod encode;
pub mod executor;
pub mod ids;
pub mod json;
pub mod maintenance;
pub mod mesos;
pub mod operations;
pub mod operator;
pub mod quota;
pub mod recordio;
pub mod resources;
pub mod scheduler;

pub use ids::*;
pub use mesos::*;
pub use resources::{Resource, Resources};

/// The Mesos version Agora reports: clients int-parse it, so it stays dotted integers.
pub const MESOS_VERSION: &str = "1.11.0";
/// Agora's own version.
pub const AGORA_VERSION: &str = env!("CARGO_PKG_VERSION");
