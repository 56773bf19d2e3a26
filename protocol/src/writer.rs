//! The writer's side of decoding: the schema a record was written with, compiled, with the
//! subjects it is registered under, and a cache of such schemas by registry id. Consumers
//! validate each record against its writer's schema ([`crate::Codec::decode_written`]), then
//! deserialise it into their own type, which ignores fields it does not know: a reader built
//! before an optional field was added reads records that carry it, and a newer reader reads
//! records written before it existed.
//!
//! Invariant: [`WriterSchemas::for_subject`] hands out a schema only for an id it holds and only
//! for a subject that id is registered under, so a record is never validated against a schema
//! of another topic. Fetching unknown ids (from a registry) is the caller's job: this crate does
//! no I/O.

use std::{collections::HashMap, sync::Arc};

use schemars::JsonSchema;
use serde_json::Value;

use crate::{schema::schema_of, ProtocolError};

/// A writer's schema: its registry id, the subjects it is registered under and its validator.
pub struct WriterSchema {
    id: u32,
    subjects: Vec<String>,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for WriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterSchema").field("id", &self.id).field("subjects", &self.subjects).finish_non_exhaustive()
    }
}

impl WriterSchema {
    /// Compiles the schema registered as `id` under `subjects`. A schema that does not compile
    /// is the fault of whoever registered it, so it is reported as such (not as a bug here).
    pub fn compile(id: u32, subjects: Vec<String>, schema: &Value) -> Result<Self, ProtocolError> {
        let validator = jsonschema::options()
            .build(schema)
            .map_err(|e| ProtocolError::InvalidWriterSchema { id, reason: e.to_string() })?;
        Ok(Self { id, subjects, validator })
    }

    /// `T`'s own generated schema standing in for the registry's entry `id` of `subject`: for
    /// transports without a registry, where writer and reader are the same build.
    pub fn local<T: JsonSchema>(id: u32, subject: &str) -> Result<Self, ProtocolError> {
        let validator =
            jsonschema::options().build(&schema_of::<T>()).map_err(|e| ProtocolError::InvalidSchema(e.to_string()))?;
        Ok(Self { id, subjects: vec![subject.to_string()], validator })
    }

    /// The registry id, as written in the frames.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The subjects the schema is registered under (one schema can serve several topics).
    pub fn subjects(&self) -> &[String] {
        &self.subjects
    }

    /// Refuses a schema that is not registered under `subject`.
    pub fn check_subject(&self, subject: &str) -> Result<(), ProtocolError> {
        if self.subjects.iter().any(|s| s == subject) {
            Ok(())
        } else {
            Err(ProtocolError::ForeignSchemaId {
                id: self.id,
                subjects: self.subjects.clone(),
                expected: subject.to_string(),
            })
        }
    }

    /// Checks a JSON value against the schema, listing every violation.
    pub fn validate(&self, value: &Value) -> Result<(), ProtocolError> {
        crate::codec::violations(&self.validator, value)
    }
}

/// Compiled writer schemas by registry id.
#[derive(Debug, Default)]
pub struct WriterSchemas {
    by_id: HashMap<u32, Arc<WriterSchema>>,
}

impl WriterSchemas {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache holding exactly `schemas` (replacing earlier entries of the same id).
    pub fn of(schemas: impl IntoIterator<Item = WriterSchema>) -> Self {
        let mut out = Self::new();
        for schema in schemas {
            out.insert(schema);
        }
        out
    }

    /// The schema of `id`, if held.
    pub fn get(&self, id: u32) -> Option<Arc<WriterSchema>> {
        self.by_id.get(&id).cloned()
    }

    /// Adds (or replaces) a schema and returns the shared copy.
    pub fn insert(&mut self, schema: WriterSchema) -> Arc<WriterSchema> {
        let schema = Arc::new(schema);
        self.by_id.insert(schema.id, Arc::clone(&schema));
        schema
    }

    /// Number of schemas held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no schema is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The writer's schema for a record framed with `id` on a topic whose subject is `subject`:
    /// [`ProtocolError::UnknownSchemaId`] when not held (call it only once the registry was
    /// asked), [`ProtocolError::ForeignSchemaId`] when registered for other subjects only.
    pub fn for_subject(&self, id: u32, subject: &str) -> Result<Arc<WriterSchema>, ProtocolError> {
        let schema = self.get(id).ok_or(ProtocolError::UnknownSchemaId(id))?;
        schema.check_subject(subject)?;
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::{
        messages::{examples, ProductObs, StateMsg},
        wire, Codec, Decoded,
    };

    /// The fashion state schema as registered before `last_action` and `catalog` existed.
    const OLD_STATE_SCHEMA: &str = include_str!("../schemas/history/fashion_state-value.v2.json");
    const SUBJECT: &str = "t_state-value";
    const OLD_ID: u32 = 10;
    const NEW_ID: u32 = 11;

    /// `StateMsg` as it was before `last_action` and `catalog`: a reader built then.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[schemars(deny_unknown_fields)]
    struct OldStateMsg {
        schema_version: u32,
        env_id: String,
        episode_id: String,
        step: u32,
        user_id: String,
        n_actions: u32,
        observation: ProductObs,
        reward: f64,
        next_item_hit: bool,
        terminated: bool,
        truncated: bool,
        #[serde(default)]
        attempt: u32,
        ts_ms: i64,
    }

    fn old_schema() -> Value {
        serde_json::from_str(OLD_STATE_SCHEMA).unwrap_or_else(|e| panic!("history schema: {e}"))
    }

    /// Both versions of the state subject, as a registry would hold them.
    fn writers() -> WriterSchemas {
        let old = WriterSchema::compile(OLD_ID, vec![SUBJECT.into()], &old_schema()).unwrap_or_else(|e| panic!("{e}"));
        let new = WriterSchema::local::<StateMsg>(NEW_ID, SUBJECT).unwrap_or_else(|e| panic!("{e}"));
        WriterSchemas::of([old, new])
    }

    fn new_state() -> StateMsg {
        let mut s = examples::state();
        (s.step, s.last_action, s.catalog, s.accept_prob) = (1, Some(42), Some("0123456789abcdef".into()), Some(0.5));
        s
    }

    fn framed<T: Serialize>(id: u32, msg: &T) -> Vec<u8> {
        wire::frame(id, &serde_json::to_vec(msg).unwrap_or_default())
    }

    fn codec<T: crate::Message>() -> Codec<T> {
        Codec::new(NEW_ID).unwrap_or_else(|e| panic!("{e}"))
    }

    fn property_names(schema: &Value) -> Vec<String> {
        schema["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default()
    }

    #[test]
    fn the_old_schema_has_the_old_struct_s_fields_and_the_new_one_three_more() {
        let old = property_names(&old_schema());
        assert_eq!(old, property_names(&crate::schema::schema_of::<OldStateMsg>()));
        let mut expected = old;
        expected.extend(["accept_prob", "catalog", "last_action"].map(String::from));
        expected.sort();
        assert_eq!(property_names(&crate::schema::schema_of::<StateMsg>()), expected);
        assert_eq!(old_schema()["required"], crate::schema::schema_of::<StateMsg>()["required"], "both are optional");
    }

    #[test]
    fn the_validator_is_the_one_the_frame_names() {
        let writers = writers();
        let new = new_state();
        // Valid under the new schema, which names the two fields...
        let d = codec::<StateMsg>().decode_from(&framed(NEW_ID, &new), &writers, SUBJECT);
        assert_eq!(d.ok(), Some(Decoded { schema_id: NEW_ID, msg: new.clone() }));
        // ...and refused when framed as written under the old one, which is closed without them.
        match codec::<StateMsg>().decode_from(&framed(OLD_ID, &new), &writers, SUBJECT) {
            Err(ProtocolError::SchemaViolation(errors)) => {
                assert!(errors.iter().any(|e| e.contains("last_action")), "{errors:?}");
                assert!(errors.iter().any(|e| e.contains("catalog")), "{errors:?}");
            }
            other => panic!("expected a violation of the old schema, got {other:?}"),
        }
        // A writer schema that is not the frame's is a caller's bug, never a silent pass.
        let old = writers.get(OLD_ID).unwrap_or_else(|| panic!("old schema held"));
        assert!(matches!(
            codec::<StateMsg>().decode_written(&framed(NEW_ID, &new), &old),
            Err(ProtocolError::WriterMismatch { framed: NEW_ID, writer: OLD_ID })
        ));
        // The writer's bounds apply: a catalog that is not 16 hex digits breaks the new schema.
        let mut bad = new;
        bad.catalog = Some("XYZ".into());
        assert!(matches!(
            codec::<StateMsg>().decode_from(&framed(NEW_ID, &bad), &writers, SUBJECT),
            Err(ProtocolError::SchemaViolation(_))
        ));
    }

    #[test]
    fn an_unknown_id_is_refused_with_its_number() {
        let err = codec::<StateMsg>().decode_from(&framed(99, &examples::state()), &writers(), SUBJECT);
        assert!(matches!(err, Err(ProtocolError::UnknownSchemaId(99))), "{err:?}");
        assert_eq!(err.err().map(|e| e.to_string()).as_deref(), Some("unknown schema id 99"));
    }

    #[test]
    fn an_id_of_another_subject_is_refused_with_both_subjects() {
        let mut writers = writers();
        let action = WriterSchema::local::<crate::ActionMsg>(12, "t_action-value").unwrap_or_else(|e| panic!("{e}"));
        writers.insert(action);
        // The payload is a valid state: only the id's subject is wrong.
        let err = codec::<StateMsg>().decode_from(&framed(12, &examples::state()), &writers, SUBJECT);
        assert!(matches!(err, Err(ProtocolError::ForeignSchemaId { id: 12, .. })), "{err:?}");
        assert_eq!(
            err.err().map(|e| e.to_string()).as_deref(),
            Some("schema id 12 belongs to subject t_action-value, not t_state-value")
        );
        // A schema of many subjects names a few of them only.
        let many: Vec<String> = (0..5).map(|i| format!("t{i}-value")).collect();
        let err = WriterSchema::compile(14, many, &old_schema()).map(|w| w.check_subject(SUBJECT));
        assert_eq!(
            err.ok().and_then(Result::err).map(|e| e.to_string()).as_deref(),
            Some("schema id 14 belongs to subject t0-value, t1-value, t2-value (and 2 more), not t_state-value")
        );
        // A schema shared by several subjects serves each of them.
        let shared = WriterSchema::compile(13, vec!["a-value".into(), SUBJECT.into()], &old_schema())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(shared.check_subject(SUBJECT).is_ok() && shared.check_subject("b-value").is_err());
    }

    #[test]
    fn an_old_reader_reads_a_new_record_and_ignores_the_new_fields() {
        let new = new_state();
        let d = codec::<OldStateMsg>().decode_from(&framed(NEW_ID, &new), &writers(), SUBJECT);
        let old = d.unwrap_or_else(|e| panic!("the old reader must read a new record: {e}")).msg;
        assert_eq!((old.step, old.episode_id.as_str(), old.reward), (1, "ep-0001", new.reward));
        // The reader's own schema is still closed: checked against it alone, the record is refused.
        assert!(matches!(codec::<OldStateMsg>().decode(&framed(NEW_ID, &new)), Err(ProtocolError::SchemaViolation(_))));
    }

    #[test]
    fn a_new_reader_reads_an_old_record_without_the_new_fields() {
        let mut old = serde_json::to_value(examples::state()).unwrap_or_default();
        old["schema_version"] = Value::from(2);
        assert!(old.get("last_action").is_none() && old.get("catalog").is_none(), "None is not written");
        let old: OldStateMsg = serde_json::from_value(old).unwrap_or_else(|e| panic!("{e}"));
        for id in [OLD_ID, NEW_ID] {
            let d = codec::<StateMsg>().decode_from(&framed(id, &old), &writers(), SUBJECT);
            let msg = d.unwrap_or_else(|e| panic!("id {id}: {e}")).msg;
            assert_eq!((msg.last_action, msg.catalog, msg.schema_version), (None, None, 2));
        }
    }

    #[test]
    fn a_registered_schema_that_does_not_compile_is_the_record_s_fault() {
        let bad = serde_json::json!({"type": 12});
        let err = WriterSchema::compile(7, vec![SUBJECT.into()], &bad);
        assert!(matches!(err, Err(ProtocolError::InvalidWriterSchema { id: 7, .. })), "{err:?}");
    }
}
