//! The contract between `env-svc`, `agent-svc` and `archiver`: message types, topic names,
//! JSON Schemas generated from the types, and the Confluent wire format.
//!
//! Also the record format of network weights (`weights`), published in chunks.
//!
//! Invariant: this crate does no I/O (no sockets, no files, no clocks), so every service and
//! every test agrees on the bytes on the wire by construction.

pub mod codec;
pub mod messages;
pub mod schema;
pub mod topics;
pub mod weights;
pub mod wire;
pub mod writer;

pub use codec::{Codec, Decoded, Message};
pub use messages::{
    ActionMsg, Envelope, OrganicView, ProductObs, RecoStateMsg, StateMsg, StepState, FASHION_INTERACTIVE_ENV,
    FASHION_REPLAY_ENV, SCHEMA_VERSION,
};
pub use wire::WireError;
pub use writer::{WriterSchema, WriterSchemas};

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
    /// The frame names a schema id the registry does not know.
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    /// The frame names a schema registered for other subjects than the topic's.
    #[error("schema id {id} belongs to subject {}, not {expected}", some_of(.subjects))]
    ForeignSchemaId {
        /// The id in the frame.
        id: u32,
        /// The subjects it is registered under.
        subjects: Vec<String>,
        /// The topic's subject.
        expected: String,
    },
    /// The schema the frame names is not a JSON Schema this crate can use.
    #[error("schema id {id} is not a usable json schema: {reason}")]
    InvalidWriterSchema {
        /// The id in the frame.
        id: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// A record was decoded with another writer schema than its frame names (a caller's bug).
    #[error("record framed with schema id {framed}, decoded with the schema of id {writer}")]
    WriterMismatch {
        /// The id in the frame.
        framed: u32,
        /// The id of the schema given.
        writer: u32,
    },
}

/// The first few of `subjects`, and how many more: a schema shared by many subjects (every test
/// topic registers the same schemas) must not make a reason of kilobytes.
fn some_of(subjects: &[String]) -> String {
    const SHOWN: usize = 3;
    let shown = subjects.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    match subjects.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown} (and {more} more)"),
    }
}
