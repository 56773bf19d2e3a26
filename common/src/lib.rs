//! Plumbing shared by `env-svc`, `agent-svc` and `archiver`: logging, shutdown, Kafka client
//! settings, the schema-registry client and the metrics endpoint. No business logic lives here.

pub mod check;
pub mod cli;
pub mod kafka;
pub mod link;
pub mod metrics;
pub mod offsets;
pub mod partitions;
pub mod registry;
pub mod shutdown;
pub mod telemetry;
pub mod weights;
