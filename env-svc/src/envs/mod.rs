//! Environments, one module each. An environment is pure: it turns actions into transitions and
//! knows nothing of transports.

pub mod fashion;
