//! JSON Schemas generated from the message types (draft-07, which both Confluent's registry
//! and Apicurio accept). The files in `protocol/schemas/` are these values, pretty-printed;
//! a test in `tests/` fails when they drift, and `make schemas` rewrites them.

use schemars::{generate::SchemaSettings, JsonSchema};
use serde_json::Value;

use crate::messages::{ActionMsg, RecoStateMsg, StateMsg};
use crate::topics::{value_subject, ACTION_TOPIC, RECOGYM_ACTION_TOPIC, RECOGYM_STATE_TOPIC, STATE_TOPIC};

/// The draft-07 JSON Schema of a message type, with a title naming it.
pub fn schema_of<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft07().into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// Every registered subject with its schema: `(subject, schema)`. Both action topics carry
/// [`ActionMsg`].
pub fn subjects() -> Vec<(String, Value)> {
    vec![
        (value_subject(STATE_TOPIC), schema_of::<StateMsg>()),
        (value_subject(ACTION_TOPIC), schema_of::<ActionMsg>()),
        (value_subject(RECOGYM_STATE_TOPIC), schema_of::<RecoStateMsg>()),
        (value_subject(RECOGYM_ACTION_TOPIC), schema_of::<ActionMsg>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_closed_and_require_the_envelope() {
        for (subject, schema) in subjects() {
            assert_eq!(schema["additionalProperties"], Value::Bool(false), "{subject}");
            let required: Vec<&str> =
                schema["required"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            for field in ["schema_version", "env_id", "episode_id", "step"] {
                assert!(required.contains(&field), "{subject} must require {field}");
            }
        }
    }

    #[test]
    fn propensity_is_bounded_in_the_schema() {
        let schema = schema_of::<ActionMsg>();
        assert_eq!(schema["properties"]["ps"]["minimum"], 0.0);
        assert_eq!(schema["properties"]["ps"]["maximum"], 1.0);
    }
}
