//! Encoding and decoding of one subject's messages: serde JSON, checked against the subject's
//! JSON Schema, framed in the Confluent wire format.
//!
//! Invariant: `encode` never returns bytes that break the schema, so a message that violates it
//! is refused before it reaches a producer. On the way in, `decode_written` (and
//! `decode_from`) validate a record against the schema it was written with, the one its frame
//! names; `decode` checks against the reader's own schema only.

use std::marker::PhantomData;

use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::{
    schema::schema_of,
    wire,
    writer::{WriterSchema, WriterSchemas},
    ProtocolError,
};

/// What a [`Codec`] can carry: a type that serialises to JSON and back and has a JSON Schema.
/// Implemented for every such type; lets other crates be generic over message types without
/// naming serde or schemars.
pub trait Message: Serialize + DeserializeOwned + JsonSchema {}

impl<T: Serialize + DeserializeOwned + JsonSchema> Message for T {}

/// A decoded message with the schema id it was written with.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    /// Registry id of the writer's schema.
    pub schema_id: u32,
    /// The message.
    pub msg: T,
}

/// Encoder and decoder for one message type, bound to the registry id of its schema.
pub struct Codec<T> {
    schema_id: u32,
    validator: jsonschema::Validator,
    _msg: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Codec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("schema_id", &self.schema_id).finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned + JsonSchema> Codec<T> {
    /// A codec that frames with `schema_id`, the id the registry gave `T`'s schema.
    pub fn new(schema_id: u32) -> Result<Self, ProtocolError> {
        let validator =
            jsonschema::options().build(&schema_of::<T>()).map_err(|e| ProtocolError::InvalidSchema(e.to_string()))?;
        Ok(Self { schema_id, validator, _msg: PhantomData })
    }

    /// The registry id this codec writes into every frame.
    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    /// Checks a JSON value against the schema, listing every violation.
    pub fn validate(&self, value: &Value) -> Result<(), ProtocolError> {
        violations(&self.validator, value)
    }

    /// Serialises, validates and frames a message.
    pub fn encode(&self, msg: &T) -> Result<Vec<u8>, ProtocolError> {
        let value = serde_json::to_value(msg)?;
        self.validate(&value)?;
        Ok(wire::frame(self.schema_id, &serde_json::to_vec(&value)?))
    }

    /// Unframes, parses and validates a message against the reader's schema only (`T`'s own),
    /// whatever schema id the frame names: a record written under a newer schema with a field
    /// `T` does not know is refused. Consumers of a topic use [`Self::decode_written`] (through
    /// `common::registry`); this stays for callers not switched yet and for checks of what a
    /// producer of this build writes.
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded<T>, ProtocolError> {
        let (schema_id, payload) = wire::unframe(bytes)?;
        let value: Value = serde_json::from_slice(payload)?;
        self.validate(&value)?;
        Ok(Decoded { schema_id, msg: serde_json::from_value(value)? })
    }

    /// Decodes a consumed record against the schema it was written with: unframes, checks that
    /// `writer` is the schema the frame names, validates the payload against it and
    /// deserialises into `T`, ignoring fields `T` does not know (the writer's schema allowed
    /// them). The subject is not checked here: see [`WriterSchemas::for_subject`].
    pub fn decode_written(&self, bytes: &[u8], writer: &WriterSchema) -> Result<Decoded<T>, ProtocolError> {
        let (schema_id, payload) = wire::unframe(bytes)?;
        if schema_id != writer.id() {
            return Err(ProtocolError::WriterMismatch { framed: schema_id, writer: writer.id() });
        }
        let value: Value = serde_json::from_slice(payload)?;
        writer.validate(&value)?;
        Ok(Decoded { schema_id, msg: serde_json::from_value(value)? })
    }

    /// Decodes a record of a topic whose subject is `subject`, with its writer's schema taken
    /// from `writers` by the frame's id: an id not held is an unknown id, one registered for
    /// other subjects only is refused. For callers whose cache already holds every id the
    /// registry knows (or that have no registry).
    pub fn decode_from(
        &self,
        bytes: &[u8],
        writers: &WriterSchemas,
        subject: &str,
    ) -> Result<Decoded<T>, ProtocolError> {
        let (schema_id, _) = wire::unframe(bytes)?;
        let writer = writers.for_subject(schema_id, subject)?;
        self.decode_written(bytes, &writer)
    }
}

/// Every violation of `value` against `validator`, or `Ok`.
pub(crate) fn violations(validator: &jsonschema::Validator, value: &Value) -> Result<(), ProtocolError> {
    let errors: Vec<String> =
        validator.iter_errors(value).map(|e| format!("{} at '{}'", e, e.instance_path())).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::SchemaViolation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{examples, ActionMsg, StateMsg};

    fn action_codec() -> Codec<ActionMsg> {
        Codec::new(7).unwrap_or_else(|e| panic!("schema compiles: {e}"))
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let codec: Codec<StateMsg> = Codec::new(3).unwrap_or_else(|e| panic!("{e}"));
        let msg = examples::state();
        let bytes = codec.encode(&msg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 3]);
        let back = codec.decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, Decoded { schema_id: 3, msg });
    }

    #[test]
    fn action_round_trips_with_and_without_model_version() {
        let codec = action_codec();
        let mut msg = examples::action();
        for version in [None, Some(12)] {
            msg.model_version = version;
            let bytes = codec.encode(&msg).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(codec.decode(&bytes).map(|d| d.msg).ok(), Some(msg.clone()));
        }
    }

    #[test]
    fn violating_message_is_refused_before_it_is_produced() {
        let codec = action_codec();
        let mut msg = examples::action();
        msg.ps = 1.5;
        msg.episode_id.clear();
        match codec.encode(&msg) {
            Err(ProtocolError::SchemaViolation(errors)) => {
                assert_eq!(errors.len(), 2, "{errors:?}");
                assert!(errors.iter().any(|e| e.contains("/ps")), "{errors:?}");
                assert!(errors.iter().any(|e| e.contains("/episode_id")), "{errors:?}");
            }
            other => panic!("expected a schema violation, got {other:?}"),
        }
    }

    #[test]
    fn decode_rejects_unknown_fields_wrong_types_and_bad_frames() {
        let codec = action_codec();
        let mut value = serde_json::to_value(examples::action()).unwrap_or_default();
        value["surprise"] = Value::from(1);
        let framed = wire::frame(7, &serde_json::to_vec(&value).unwrap_or_default());
        assert!(matches!(codec.decode(&framed), Err(ProtocolError::SchemaViolation(_))));

        value = serde_json::to_value(examples::action()).unwrap_or_default();
        value["action"] = Value::from("seven");
        let framed = wire::frame(7, &serde_json::to_vec(&value).unwrap_or_default());
        assert!(matches!(codec.decode(&framed), Err(ProtocolError::SchemaViolation(_))));

        assert!(matches!(codec.decode(b"\0\0\0\0\x07{not json"), Err(ProtocolError::Json(_))));
        assert!(matches!(codec.decode(b"{}"), Err(ProtocolError::Wire(_))));
    }

    #[test]
    fn older_writer_schema_id_is_still_readable() {
        let codec = action_codec();
        let bytes = wire::frame(2, &serde_json::to_vec(&examples::action()).unwrap_or_default());
        assert_eq!(codec.decode(&bytes).map(|d| d.schema_id).ok(), Some(2));
    }

    #[test]
    fn reco_state_round_trips_and_is_checked() {
        let codec: Codec<crate::RecoStateMsg> = Codec::new(5).unwrap_or_else(|e| panic!("{e}"));
        let msg = examples::reco_state();
        let bytes = codec.encode(&msg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(codec.decode(&bytes).map(|d| d.msg).ok(), Some(msg.clone()));
        let mut bad = msg;
        bad.reward = 2.0;
        bad.n_actions = 0;
        match codec.encode(&bad) {
            Err(ProtocolError::SchemaViolation(errors)) => assert_eq!(errors.len(), 2, "{errors:?}"),
            other => panic!("expected a schema violation, got {other:?}"),
        }
    }

    #[test]
    fn action_with_ps_all_round_trips_and_old_actions_still_decode() {
        let codec = action_codec();
        let mut msg = examples::action();
        msg.ps_all = Some(vec![0.25; 4]);
        let bytes = codec.encode(&msg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(codec.decode(&bytes).map(|d| d.msg).ok(), Some(msg.clone()));
        // An action written before the field existed has no `ps_all` key at all.
        let mut old = serde_json::to_value(examples::action()).unwrap_or_default();
        assert!(old.get("ps_all").is_none());
        old["schema_version"] = Value::from(1);
        let framed = wire::frame(7, &serde_json::to_vec(&old).unwrap_or_default());
        assert_eq!(codec.decode(&framed).map(|d| d.msg.ps_all).ok(), Some(None));
        msg.ps_all = Some(vec![1.5]);
        assert!(matches!(codec.encode(&msg), Err(ProtocolError::SchemaViolation(_))));
    }
}
