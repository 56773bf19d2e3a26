//! The contract between `env-svc`, `agent-svc` and `archiver`: message types, topic names,
//! JSON Schemas generated from the types, and the Confluent wire format.
//!
//! Invariant: this crate does no I/O (no sockets, no files, no clocks), so every service and
//! every test agrees on the bytes on the wire by construction.

pub mod codec;
pub mod messages;
pub mod schema;
pub mod topics;
pub mod wire;

pub use codec::{Codec, Decoded, Message};
pub use messages::{ActionMsg, Envelope, OrganicView, ProductObs, RecoStateMsg, StateMsg, StepState, SCHEMA_VERSION};
pub use wire::WireError;

/// Everything that can go wrong turning a message into bytes or bytes into a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes are not in the Confluent wire format.
    #[error("bad wire format: {0}")]
    Wire(#[from] WireError),
    /// The payload is not JSON, or not JSON of the expected shape.
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    /// The message is well-formed JSON but breaks the subject's JSON Schema.
    #[error("schema violation: {}", .0.join("; "))]
    SchemaViolation(Vec<String>),
    /// The generated JSON Schema itself could not be compiled (a bug in this crate).
    #[error("cannot compile json schema: {0}")]
    InvalidSchema(String),
}
