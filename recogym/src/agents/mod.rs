//! Reference agents ported from `recogym/agents/`.

mod organic_count;
mod organic_user_count;
mod random;

pub use organic_count::OrganicCountAgent;
pub use organic_user_count::OrganicUserCountAgent;
pub use random::RandomAgent;
