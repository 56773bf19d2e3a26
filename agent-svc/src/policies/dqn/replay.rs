//! The replay buffer: the last `capacity` transitions, sampled uniformly into training batches.
//!
//! Two kinds of transition share the buffer: an ordinary one teaches the Q-value of the action
//! taken; a *full-feedback* one carries the reward of every action (all actions outside its
//! `positives` earned 0), learned on the whole row of Q-values (see `--dqn-hindsight future`).
//!
//! Invariant: storage is allocated once (fixed-width token and positive rows), so pushing never
//! allocates and a full buffer overwrites its oldest transition.

use rand::Rng;
use tch::{Device, Kind, Tensor};

use super::vocab::PAD;

/// One step of experience, as the learner stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Token ids of the state acted on (at most `max_tokens`, unpadded).
    pub obs: Vec<i64>,
    /// The product index of the state acted on (the wide table's row).
    pub item: i64,
    /// The action taken.
    pub action: i64,
    /// The reward it earned.
    pub reward: f32,
    /// Token ids of the state it led to.
    pub next_obs: Vec<i64>,
    /// The product index of the state it led to.
    pub next_item: i64,
    /// The next state ended the episode: no bootstrapping from it (truncation does not count).
    pub terminated: bool,
    /// Full feedback: `(action, target reward)` for the actions that would have earned a reward
    /// in this state (every other action earned 0); `None` for an ordinary transition, where
    /// only `action` is known.
    pub positives: Option<Vec<(i64, f32)>>,
}

/// Most positive actions a full-feedback transition keeps (later ones are cut).
pub const MAX_POSITIVES: usize = 64;

/// A training batch, as tensors on the learner's device.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, tokens]` int64 token ids of the states acted on.
    pub obs: Tensor,
    /// `[batch]` int64 product indices of the states acted on.
    pub items: Tensor,
    /// `[batch]` int64 actions.
    pub actions: Tensor,
    /// `[batch]` float rewards.
    pub rewards: Tensor,
    /// `[batch, tokens]` int64 token ids of the next states.
    pub next_obs: Tensor,
    /// `[batch]` int64 product indices of the next states.
    pub next_items: Tensor,
    /// `[batch]` float, 1 where the next state terminated the episode.
    pub terminated: Tensor,
    /// Present when the batch holds a full-feedback transition: `(rewards, mask)`, both
    /// `[batch, n_actions]` float. A full-feedback row has its reward for every action and a
    /// mask of ones; an ordinary row has its reward at its action and a one-hot mask.
    pub full: Option<(Tensor, Tensor)>,
}

/// A training batch for the tower head (see [`Replay::candidates`]).
#[derive(Debug)]
pub struct Candidates {
    /// The states, actions, rewards and next states (`full` is `None`).
    pub states: Batch,
    /// `[batch * k]` the candidate actions of each row, row after row: its own `per_row`
    /// first, then the `shared` ones.
    pub cands: Vec<i64>,
    /// Candidates per row (`per_row` + the shared ones).
    pub k: i64,
    /// Candidates of each row's own (its action, its positives, padding).
    pub per_row: i64,
    /// The negatives every row shares (empty without a full-feedback row), last in each row.
    pub shared: Vec<i64>,
    /// `[batch, k]` float: each candidate's reward target (before bootstrapping).
    pub targets: Tensor,
    /// `[batch, k]` float: each candidate's weight in its row's loss (0 for padding).
    pub weights: Tensor,
    /// `[batch]` the item of each row's state.
    pub row_items: Vec<i64>,
    /// `[batch]` the item of each row's next state.
    pub next_row_items: Vec<i64>,
}

/// A ring buffer of transitions with fixed-width token rows.
#[derive(Debug)]
pub struct Replay {
    capacity: usize,
    width: usize,
    obs: Vec<i64>,
    obs_len: Vec<u16>,
    next_obs: Vec<i64>,
    next_len: Vec<u16>,
    items: Vec<i64>,
    next_items: Vec<i64>,
    actions: Vec<i64>,
    rewards: Vec<f32>,
    terminated: Vec<f32>,
    /// Positive actions of full-feedback slots, `MAX_POSITIVES` per slot, and their rewards.
    positives: Vec<i32>,
    pos_rewards: Vec<f32>,
    /// Positives held per slot; `NOT_FULL` marks an ordinary transition.
    pos_len: Vec<u8>,
    /// Full-feedback transitions held.
    full_held: usize,
    len: usize,
    pos: usize,
}

impl Replay {
    /// An empty buffer of `capacity` transitions whose states have at most `width` tokens.
    pub fn new(capacity: usize, width: usize) -> Self {
        let (capacity, width) = (capacity.max(1), width.clamp(1, usize::from(u16::MAX)));
        Self {
            capacity,
            width,
            obs: vec![PAD; capacity * width],
            obs_len: vec![0; capacity],
            next_obs: vec![PAD; capacity * width],
            next_len: vec![0; capacity],
            items: vec![0; capacity],
            next_items: vec![0; capacity],
            actions: vec![0; capacity],
            rewards: vec![0.0; capacity],
            terminated: vec![0.0; capacity],
            positives: vec![0; capacity * MAX_POSITIVES],
            pos_rewards: vec![0.0; capacity * MAX_POSITIVES],
            pos_len: vec![NOT_FULL; capacity],
            full_held: 0,
            len: 0,
            pos: 0,
        }
    }

    /// Transitions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no transition is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most transitions held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Stores `t`, overwriting the oldest transition when full; tokens beyond the width are cut.
    pub fn push(&mut self, t: &Transition) {
        let (i, w) = (self.pos, self.width);
        let put = |rows: &mut Vec<i64>, lens: &mut Vec<u16>, src: &[i64]| {
            let n = src.len().min(w);
            rows[i * w..i * w + n].copy_from_slice(&src[..n]);
            rows[i * w + n..(i + 1) * w].fill(PAD);
            lens[i] = n as u16;
        };
        put(&mut self.obs, &mut self.obs_len, &t.obs);
        put(&mut self.next_obs, &mut self.next_len, &t.next_obs);
        (self.items[i], self.next_items[i]) = (t.item, t.next_item);
        self.actions[i] = t.action;
        self.rewards[i] = t.reward;
        self.terminated[i] = if t.terminated { 1.0 } else { 0.0 };
        self.full_held -= usize::from(self.pos_len[i] != NOT_FULL);
        self.pos_len[i] = match &t.positives {
            None => NOT_FULL,
            Some(p) => {
                let n = p.len().min(MAX_POSITIVES);
                let slots = i * MAX_POSITIVES..i * MAX_POSITIVES + n;
                for ((a, r), &(action, reward)) in
                    self.positives[slots.clone()].iter_mut().zip(&mut self.pos_rewards[slots]).zip(&p[..n])
                {
                    (*a, *r) = (i32::try_from(action).unwrap_or(i32::MAX), reward);
                }
                self.full_held += 1;
                n as u8
            }
        };
        self.pos = (self.pos + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    /// `size` slots drawn uniformly with replacement (empty when the buffer is).
    pub fn sample_indices<R: Rng>(&self, size: usize, rng: &mut R) -> Vec<usize> {
        if self.len == 0 {
            return Vec::new();
        }
        (0..size).map(|_| rng.random_range(0..self.len)).collect()
    }

    /// The transition in slot `i` (for tests and checks).
    pub fn get(&self, i: usize) -> Transition {
        let w = self.width;
        Transition {
            obs: self.obs[i * w..i * w + usize::from(self.obs_len[i])].to_vec(),
            item: self.items[i],
            action: self.actions[i],
            reward: self.rewards[i],
            next_obs: self.next_obs[i * w..i * w + usize::from(self.next_len[i])].to_vec(),
            next_item: self.next_items[i],
            terminated: self.terminated[i] > 0.5,
            positives: self
                .positives_of(i)
                .map(|(p, r)| p.iter().map(|&a| i64::from(a)).zip(r.iter().copied()).collect()),
        }
    }

    fn positives_of(&self, i: usize) -> Option<(&[i32], &[f32])> {
        let n = self.pos_len[i];
        let slots = i * MAX_POSITIVES..i * MAX_POSITIVES + usize::from(n);
        (n != NOT_FULL).then(|| (&self.positives[slots.clone()], &self.pos_rewards[slots]))
    }

    /// The transitions in `slots` as a batch of candidates for the tower head: each row scores
    /// its own candidate actions, not all of them. An ordinary row has one candidate, its
    /// action, with its reward. A full-feedback row has its action, its positives (each with its
    /// target) and the `negatives` shared by the batch (target 0, or the positive's target
    /// where one coincides), the negatives weighing `negative_weight` each in the row's loss;
    /// shorter rows are padded with weight 0.
    pub fn candidates(&self, slots: &[usize], negatives: &[i64], negative_weight: f32, device: Device) -> Candidates {
        let full = slots.iter().any(|&i| self.pos_len[i] != NOT_FULL);
        let max_pos = slots.iter().filter_map(|&i| self.positives_of(i)).map(|(p, _)| p.len()).max().unwrap_or(0);
        let k = 1 + if full { max_pos + negatives.len() } else { 0 };
        let (mut cands, mut targets, mut weights) =
            (Vec::with_capacity(slots.len() * k), vec![0f32; slots.len() * k], vec![0f32; slots.len() * k]);
        for (row, &i) in slots.iter().enumerate() {
            let (t, w) = (&mut targets[row * k..(row + 1) * k], &mut weights[row * k..(row + 1) * k]);
            let action = self.actions[i];
            cands.push(action);
            w[0] = 1.0;
            match self.positives_of(i) {
                None => {
                    t[0] = self.rewards[i];
                    cands.extend(std::iter::repeat_n(action, k - 1));
                }
                Some((actions, rewards)) => {
                    let target_of =
                        |a: i64| actions.iter().position(|&p| i64::from(p) == a).map_or(0.0, |j| rewards[j]);
                    t[0] = target_of(action);
                    for j in 0..max_pos {
                        match actions.get(j) {
                            Some(&a) => {
                                cands.push(i64::from(a));
                                (t[1 + j], w[1 + j]) = (rewards[j], 1.0);
                            }
                            None => cands.push(action),
                        }
                    }
                    for (j, &a) in negatives.iter().enumerate() {
                        cands.push(a);
                        (t[1 + max_pos + j], w[1 + max_pos + j]) = (target_of(a), negative_weight);
                    }
                }
            }
        }
        let batch = self.batch_ordinary(slots, device);
        let shape = [slots.len() as i64, k as i64];
        let dense = |v: &[f32]| Tensor::from_slice(v).view(shape).to_device(device);
        Candidates {
            states: batch,
            cands,
            k: k as i64,
            per_row: (k - if full { negatives.len() } else { 0 }) as i64,
            shared: if full { negatives.to_vec() } else { Vec::new() },
            targets: dense(&targets),
            weights: dense(&weights),
            row_items: slots.iter().map(|&i| self.items[i]).collect(),
            next_row_items: slots.iter().map(|&i| self.next_items[i]).collect(),
        }
    }

    /// The transitions in `slots` as tensors for an action space of `n_actions`; token columns
    /// cut to the longest state drawn.
    pub fn batch(&self, slots: &[usize], n_actions: i64, device: Device) -> Batch {
        let full = (self.full_held > 0 && slots.iter().any(|&i| self.pos_len[i] != NOT_FULL)).then(|| {
            let n = usize::try_from(n_actions).unwrap_or(0);
            let (mut rewards, mut mask) = (vec![0f32; slots.len() * n], vec![0f32; slots.len() * n]);
            for (row, &i) in slots.iter().enumerate() {
                let (r, m) = (&mut rewards[row * n..(row + 1) * n], &mut mask[row * n..(row + 1) * n]);
                let at = |a: i64| usize::try_from(a).ok().filter(|&a| a < n);
                match self.positives_of(i) {
                    Some((actions, rewards)) => {
                        m.fill(1.0);
                        for (&a, &reward) in actions.iter().zip(rewards) {
                            if let Some(a) = at(i64::from(a)) {
                                r[a] = reward;
                            }
                        }
                    }
                    None => {
                        if let Some(a) = at(self.actions[i]) {
                            (r[a], m[a]) = (self.rewards[i], 1.0);
                        }
                    }
                }
            }
            let shape = [slots.len() as i64, n_actions];
            let dense = |v: &[f32]| Tensor::from_slice(v).view(shape).to_device(device);
            (dense(&rewards), dense(&mask))
        });
        Batch { full, ..self.batch_ordinary(slots, device) }
    }

    /// The states, next states, items, actions, rewards and ends of `slots` ([`Replay::batch`]
    /// without its full-feedback part).
    fn batch_ordinary(&self, slots: &[usize], device: Device) -> Batch {
        let tokens = |rows: &[i64], lens: &[u16]| {
            let width = slots.iter().map(|&i| usize::from(lens[i])).max().unwrap_or(0).max(1);
            let mut flat = Vec::with_capacity(slots.len() * width);
            for &i in slots {
                flat.extend_from_slice(&rows[i * self.width..i * self.width + width]);
            }
            Tensor::from_slice(&flat).view([slots.len() as i64, width as i64]).to_device(device)
        };
        let pick_f = |v: &[f32]| {
            let picked: Vec<f32> = slots.iter().map(|&i| v[i]).collect();
            Tensor::from_slice(&picked).to_kind(Kind::Float).to_device(device)
        };
        let pick_i = |v: &[i64]| {
            let picked: Vec<i64> = slots.iter().map(|&i| v[i]).collect();
            Tensor::from_slice(&picked).to_device(device)
        };
        Batch {
            obs: tokens(&self.obs, &self.obs_len),
            items: pick_i(&self.items),
            actions: pick_i(&self.actions),
            rewards: pick_f(&self.rewards),
            next_obs: tokens(&self.next_obs, &self.next_len),
            next_items: pick_i(&self.next_items),
            terminated: pick_f(&self.terminated),
            full: None,
        }
    }
}

/// `pos_len` of an ordinary transition.
const NOT_FULL: u8 = u8::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};

    fn t(i: i64) -> Transition {
        Transition {
            obs: vec![i + 2; (i as usize % 3) + 1],
            item: 10 + i,
            action: i,
            reward: i as f32,
            next_obs: vec![i + 3],
            next_item: 11 + i,
            terminated: i % 2 == 0,
            positives: None,
        }
    }

    #[test]
    fn keeps_the_last_capacity_transitions() {
        let mut r = Replay::new(4, 3);
        assert!(r.is_empty() && r.sample_indices(8, &mut ChaCha8Rng::seed_from_u64(0)).is_empty());
        for i in 0..6 {
            r.push(&t(i));
        }
        assert_eq!((r.len(), r.capacity()), (4, 4));
        let mut held: Vec<i64> = (0..4).map(|i| r.get(i).action).collect();
        held.sort();
        assert_eq!(held, [2, 3, 4, 5], "the two oldest were overwritten");
        assert_eq!(r.get(0), t(4), "slot reuse clears the old tokens");
        let mut long = t(1);
        long.obs = vec![9; 10];
        r.push(&long);
        assert_eq!(r.get(2).obs, [9, 9, 9], "cut to the width");
    }

    #[test]
    fn samples_uniformly_and_batches_as_tensors() {
        let mut r = Replay::new(100, 4);
        for i in 0..10 {
            r.push(&t(i));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let slots = r.sample_indices(20_000, &mut rng);
        let mut counts = [0usize; 10];
        slots.iter().for_each(|&s| counts[s] += 1);
        assert!(counts.iter().all(|&c| (1_700..2_300).contains(&c)), "{counts:?}");
        let b = r.batch(&[0, 1, 2], 10, Device::Cpu);
        assert!(b.full.is_none(), "ordinary transitions only: no dense rows");
        assert_eq!(b.obs.size(), [3, 3], "cut to the longest state drawn");
        assert_eq!(b.next_obs.size(), [3, 1]);
        assert_eq!(Vec::<i64>::try_from(&b.actions).unwrap_or_else(|e| panic!("{e}")), [0, 1, 2]);
        assert_eq!(Vec::<i64>::try_from(&b.items).unwrap_or_else(|e| panic!("{e}")), [10, 11, 12]);
        assert_eq!(Vec::<i64>::try_from(&b.next_items).unwrap_or_else(|e| panic!("{e}")), [11, 12, 13]);
        assert_eq!(Vec::<f32>::try_from(&b.terminated).unwrap_or_else(|e| panic!("{e}")), [1.0, 0.0, 1.0]);
        assert_eq!(
            Vec::<i64>::try_from(b.obs.view([-1])).unwrap_or_else(|e| panic!("{e}")),
            [2, 0, 0, 3, 3, 0, 4, 4, 4]
        );
    }

    #[test]
    fn full_feedback_rows_are_dense_and_ordinary_rows_one_hot() {
        let mut r = Replay::new(3, 2);
        r.push(&t(1));
        let positives = vec![(0, 1.0), (3, 0.5), (99, 1.0)];
        r.push(&Transition { positives: Some(positives.clone()), ..t(2) });
        assert_eq!(r.get(1).positives, Some(positives));
        let b = r.batch(&[0, 1], 4, Device::Cpu);
        let (rewards, mask) = b.full.unwrap_or_else(|| panic!("a full-feedback row was drawn"));
        let flat = |x: &Tensor| Vec::<f32>::try_from(x.view([-1])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(flat(&rewards), [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5], "row 0: reward 1 at action 1");
        assert_eq!(flat(&mask), [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], "out-of-range positive 99 ignored");
        // Overwriting the full slot leaves no full transition behind.
        r.push(&t(3));
        r.push(&t(4));
        r.push(&t(5));
        assert!(r.batch(&[0, 1, 2], 4, Device::Cpu).full.is_none());
        let long: Vec<(i64, f32)> = (0..100).map(|a| (a, 1.0)).collect();
        r.push(&Transition { positives: Some(long), ..t(6) });
        assert_eq!(r.get(2).positives.map(|p| p.len()), Some(MAX_POSITIVES), "cut to MAX_POSITIVES");
    }
}
