//! Topic names and their layout. `deploy/topics.env` is the source of truth the stack is built
//! from; `tests/tests/config_sources.rs` fails if these constants drift from it.

/// States published by the environment, keyed by episode id.
pub const STATE_TOPIC: &str = "fashion_state";
/// Actions published by the agent, keyed by episode id.
pub const ACTION_TOPIC: &str = "fashion_action";
/// Messages that could not be decoded or broke their schema, with the reason in the headers.
pub const DEAD_LETTER_TOPIC: &str = "fashion_dead_letter";
/// States of the RecoGym environment (`reco-gym-v1`), keyed by episode id (one user).
pub const RECOGYM_STATE_TOPIC: &str = "recogym_state";
/// Actions answering RecoGym states, keyed by episode id.
pub const RECOGYM_ACTION_TOPIC: &str = "recogym_action";
/// RecoGym records that could not be used, with the reason in the headers.
pub const RECOGYM_DEAD_LETTER_TOPIC: &str = "recogym_dead_letter";
/// Versioned network weights for the agent replicas, in chunks keyed `{model}/{index}`
/// (`crate::weights`): compacted, one partition.
pub const WEIGHTS_TOPIC: &str = "fashion_agent_weights";
/// What the stack knows of one environment apart from its messages: its name on the command
/// line and its three topics. Each environment declares one, beside its topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvSpec {
    /// The name on the command line (`--env`), e.g. `recogym`.
    pub name: &'static str,
    /// Its states topic.
    pub state_topic: &'static str,
    /// Its actions topic.
    pub action_topic: &'static str,
    /// Its dead-letter topic.
    pub dead_letter_topic: &'static str,
    /// Prefix of its variables in `deploy/topics.env` (`RECOGYM_` for `RECOGYM_STATE_TOPIC`).
    pub topics_env_prefix: &'static str,
}

/// Amazon Fashion review sequences (`StateMsg`).
pub const FASHION: EnvSpec = EnvSpec {
    name: "fashion",
    state_topic: STATE_TOPIC,
    action_topic: ACTION_TOPIC,
    dead_letter_topic: DEAD_LETTER_TOPIC,
    topics_env_prefix: "",
};

/// RecoGym's `reco-gym-v1` simulator (`RecoStateMsg`).
pub const RECOGYM: EnvSpec = EnvSpec {
    name: "recogym",
    state_topic: RECOGYM_STATE_TOPIC,
    action_topic: RECOGYM_ACTION_TOPIC,
    dead_letter_topic: RECOGYM_DEAD_LETTER_TOPIC,
    topics_env_prefix: "RECOGYM_",
};

/// Default partition count of every topic (caps the number of agent replicas that get work).
pub const DEFAULT_PARTITIONS: u32 = 6;
/// Replication factor of every topic.
pub const REPLICATION_FACTOR: u32 = 3;
/// `min.insync.replicas` of every topic: with `acks=all`, a write survives one dead broker.
pub const MIN_INSYNC_REPLICAS: u32 = 2;

/// The schema-registry subject of a topic's values (Confluent's `TopicNameStrategy`).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Header names of a dead-letter record; its value is the original payload, byte for byte.
pub mod dead_letter {
    /// Why the message was rejected, in words.
    pub const REASON: &str = "dlq.reason";
    /// Topic the message was read from.
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    /// Partition the message was read from, decimal.
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    /// Offset of the message in its partition, decimal.
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_topic_name_strategy() {
        assert_eq!(value_subject(STATE_TOPIC), "fashion_state-value");
        assert_eq!(value_subject(ACTION_TOPIC), "fashion_action-value");
        assert_eq!(value_subject(RECOGYM_STATE_TOPIC), "recogym_state-value");
    }
}
