//! Random streams. Python RecoGym draws everything from one `RandomState(random_seed)` shared by
//! all users in sequence; here every consumer has its own ChaCha8 stream so that a user's
//! trajectory depends only on `(random_seed, user_id)` and the actions taken, never on which
//! other users ran before it or on which thread.
//!
//! A stream is ChaCha8 with a 256-bit key expanded by SplitMix64 from `(random_seed, domain)` and
//! the ChaCha stream number set to the user id (the world uses stream 0 of its own domain).

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a random stream is used for; each domain has its own key, so equal user ids in two
/// domains never share numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    /// Product embeddings and popularity (`set_static_params`).
    World,
    /// One user's latent state, transitions, organic views and clicks.
    User,
    /// `RandomAgent`'s choices for one user.
    RandomAgent,
    /// `OrganicUserCountAgent`'s draws for one user.
    OrganicUserCountAgent,
}

impl Domain {
    fn tag(self) -> u64 {
        // Arbitrary distinct odd constants ("RGworld", "RGuser", ...); only distinctness matters.
        match self {
            Domain::World => 0x5247_776f_726c_6401,
            Domain::User => 0x5247_7573_6572_0003,
            Domain::RandomAgent => 0x5247_7261_6e64_0005,
            Domain::OrganicUserCountAgent => 0x5247_6f75_6300_0007,
        }
    }
}

/// SplitMix64 step (Steele, Lea, Flood 2014): a full-period mixer good for expanding seeds.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG of `domain` for `(seed, stream)`.
pub(crate) fn stream(seed: u64, domain: Domain, stream: u64) -> ChaCha8Rng {
    let mut state = seed ^ splitmix64(&mut domain.tag());
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_distinct_and_reproducible() {
        let a: u64 = stream(42, Domain::User, 7).random();
        let b: u64 = stream(42, Domain::User, 7).random();
        let c: u64 = stream(42, Domain::User, 8).random();
        let d: u64 = stream(42, Domain::RandomAgent, 7).random();
        let e: u64 = stream(43, Domain::User, 7).random();
        assert_eq!(a, b);
        assert!(a != c && a != d && a != e);
    }
}
