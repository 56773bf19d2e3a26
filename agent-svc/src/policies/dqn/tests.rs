//! Tests of the DQN policy as the agent loop drives it: propensities, the epsilon schedule,
//! checkpoints and resume, and a small learning smoke test.

use std::time::Duration;

use protocol::{messages::examples, StateMsg};
use rand::Rng;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};

use super::*;

fn state(text: &str, n_actions: u32, step: u32) -> StateMsg {
    let mut s = examples::state();
    s.observation.text = text.into();
    s.n_actions = n_actions;
    s.step = step;
    s
}

/// A small, fast configuration (MLP net).
fn small(dir: Option<&std::path::Path>) -> DqnArgs {
    DqnArgs {
        dqn_net: NetKind::Mlp,
        dqn_embedding_dim: 16,
        dqn_hidden: vec![32],
        dqn_vocab_size: 50,
        dqn_max_tokens: 8,
        dqn_gamma: 0.5,
        dqn_lr: 1e-2,
        dqn_batch_size: 32,
        dqn_learning_starts: 64,
        dqn_target_every: 50,
        dqn_eps_decay_steps: 800,
        dqn_sync_every: 10,
        dqn_checkpoint_every: 0,
        checkpoint_dir: dir.map(Into::into),
        // The toy problems below pay for the action itself, not for products seen later.
        dqn_hindsight: Hindsight::Off,
        dqn_id_token: false,
        ..DqnArgs::default()
    }
}

#[test]
fn defaults_are_the_papers_network_and_parse() {
    let a = DqnArgs::default();
    assert_eq!(a.net_config(), NetConfig::paper(20_000, 32));
    assert_eq!((a.dqn_batch_size, a.dqn_double, a.dqn_tau), (64, true, 1.0));
    assert!(a.validate().is_ok());
    assert!(matches!(a.device(), Ok(Device::Cpu)));
    let bad = DqnArgs { dqn_device: "tpu".into(), ..DqnArgs::default() };
    assert!(bad.device().is_err());
}

#[test]
fn epsilon_falls_linearly_and_propensities_match() {
    let a = DqnArgs { dqn_eps_start: 1.0, dqn_eps_end: 0.1, dqn_eps_decay_steps: 100, ..DqnArgs::default() };
    assert_eq!(a.epsilon(0), 1.0);
    assert!((a.epsilon(50) - 0.55).abs() < 1e-12);
    assert_eq!(a.epsilon(100), 0.1);
    assert_eq!(a.epsilon(10_000), 0.1);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let picks: Vec<(u32, f64)> = (0..20_000).map(|_| epsilon_greedy(3, 10, 0.2, &mut rng)).collect();
    let greedy = picks.iter().filter(|(a, _)| *a == 3).count() as f64 / picks.len() as f64;
    assert!((greedy - 0.82).abs() < 0.02, "greedy share {greedy}");
    for (a, ps) in picks {
        assert!((ps - if a == 3 { 0.82 } else { 0.02 }).abs() < 1e-12);
    }
    assert_eq!(epsilon_greedy(4, 10, 0.0, &mut rng), (4, 1.0));
}

#[test]
fn transitions_end_bootstrapping_on_termination_not_truncation() {
    let dqn = Dqn::<StateMsg>::new(&small(None), 0).unwrap_or_else(|e| panic!("{e:#}"));
    let prev = state("red dress", 10, 0);
    let mut next = state("blue shirt", 10, 1);
    next.truncated = true;
    let fb = Feedback { prev: &prev, prev_index: 0, action: 3, reward: 1.0, next: &next };
    let t = dqn.transition(&fb);
    assert_eq!(
        (t.obs.clone(), t.action, t.reward, t.next_obs.clone(), t.terminated),
        (vec![2, 3], 3, 1.0, vec![4, 5], false)
    );
    let mut ended = next.clone();
    (ended.truncated, ended.terminated) = (false, true);
    assert!(dqn.transition(&Feedback { next: &ended, ..fb }).terminated);
}

/// Plays `steps` transitions of the toy problem: the text is "red" or "blue"; "red" pays for
/// action 3, "blue" for action 7; episodes of 5 steps, 8 in parallel (one batch per poll), the
/// learner kept up with every 10 polls.
/// Returns the reward rate over the last quarter.
fn play(dqn: &mut Dqn, steps: usize, rng: &mut ChaCha8Rng) -> f64 {
    let color = |rng: &mut ChaCha8Rng| if rng.random_bool(0.5) { "red" } else { "blue" };
    let mut states: Vec<StateMsg> = (0..8).map(|_| state(color(rng), 10, 0)).collect();
    let (mut done, mut late_reward, mut late_n) = (0, 0.0, 0);
    while done < steps {
        let refs: Vec<&StateMsg> = states.iter().collect();
        let actions = dqn.act(&refs, rng).unwrap_or_else(|e| panic!("{e:#}"));
        let mut next_states = Vec::with_capacity(states.len());
        for (s, (a, ps)) in states.iter().zip(actions) {
            assert!(a < 10 && ps > 0.0 && ps <= 1.0);
            let right = if s.observation.text == "red" { 3 } else { 7 };
            let mut next = state(color(rng), 10, s.step + 1);
            next.reward = if a == right { 1.0 } else { 0.0 };
            next.terminated = next.step == 5;
            dqn.learn(&Feedback { prev: s, prev_index: 0, action: a, reward: next.reward, next: &next })
                .unwrap_or_else(|e| panic!("{e:#}"));
            if done >= steps * 3 / 4 {
                late_reward += next.reward;
                late_n += 1;
            }
            done += 1;
            next_states.push(if next.terminated { state(color(rng), 10, 0) } else { next });
        }
        states = next_states;
        // Pace the stream to the learner (a real env is far slower than this loop), so the
        // result does not depend on how the two threads happen to interleave.
        if done % 80 == 0 {
            dqn.flush(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
    late_reward / f64::from(late_n.max(1))
}

fn greedy_accuracy(dqn: &mut Dqn) -> f64 {
    let (red, blue) = (state("red", 10, 0), state("blue", 10, 0));
    let ranked = dqn.top_k(&[&red, &blue], 3).unwrap_or_else(|e| panic!("{e:#}"));
    let acts = dqn.act(&[&red, &blue], &mut ChaCha8Rng::seed_from_u64(0)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(acts.iter().map(|a| a.1).collect::<Vec<_>>(), [1.0, 1.0], "no exploration in eval mode");
    assert_eq!((ranked[0][0], ranked[1][0]), (acts[0].0, acts[1].0), "top_k is best first");
    f64::from(u8::from(acts[0].0 == 3) + u8::from(acts[1].0 == 7)) / 2.0
}

#[test]
fn learns_a_two_context_problem_well_beyond_random() {
    let _rng = net::torch_rng_guard();
    let mut dqn = Dqn::<StateMsg>::new(&small(None), 1).unwrap_or_else(|e| panic!("{e:#}"));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let late_rate = play(&mut dqn, 1_600, &mut rng);
    let updates = dqn.flush(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    dqn.set_eval(true).unwrap_or_else(|e| panic!("{e:#}"));
    let accuracy = greedy_accuracy(&mut dqn);
    eprintln!("dqn smoke: {updates} updates, reward rate over the last quarter {late_rate:.2} (random 0.10), greedy accuracy {accuracy}");
    assert_eq!(accuracy, 1.0);
    assert!(late_rate > 0.5, "reward rate {late_rate} (random: 0.1)");
    assert!(dqn.model_version().unwrap_or(0) > 0);
}

#[test]
fn with_backpressure_no_update_is_skipped_whatever_the_train_ratio() {
    let _rng = net::torch_rng_guard();
    // Two updates owed per transition, at most three owed at a time: the learner must stop
    // reading (the agent then waits) rather than skip.
    let args = DqnArgs {
        dqn_backpressure: true,
        dqn_train_ratio: 2.0,
        dqn_max_owed: 3,
        dqn_learning_starts: 10,
        ..small(None)
    };
    let mut dqn = Dqn::<StateMsg>::new(&args, 3).unwrap_or_else(|e| panic!("{e:#}"));
    for step in 0..200 {
        let (s, next) = (state("red", 10, step), state("blue", 10, step + 1));
        dqn.learn(&Feedback { prev: &s, prev_index: 0, action: 3, reward: 0.0, next: &next })
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let updates = dqn.flush(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(updates, 2 * (200 - 10 + 1), "two updates for each transition from the tenth on");
}

#[test]
fn resumes_from_its_checkpoint_and_refuses_another_action_space() {
    let _rng = net::torch_rng_guard();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // With the wide table, so that its rows go through the checkpoint too.
    let args = DqnArgs { dqn_wide: true, ..small(Some(dir.path())) };
    let mut dqn = Dqn::<StateMsg>::new(&args, 2).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(dqn.save().is_ok(), "nothing to save before the first state");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    play(&mut dqn, 300, &mut rng);
    dqn.flush(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    dqn.set_eval(true).unwrap_or_else(|e| panic!("{e:#}"));
    dqn.save().unwrap_or_else(|e| panic!("{e:#}"));
    let probe = [state("red", 10, 0), state("blue dress", 10, 0), state("unknown words", 10, 0)];
    let refs: Vec<&StateMsg> = probe.iter().collect();
    let before = dqn.top_k(&refs, 10).unwrap_or_else(|e| panic!("{e:#}"));
    let (version, eps) = (dqn.model_version(), dqn.args.epsilon(dqn.shared.eps_step.load(Ordering::Relaxed)));
    let words = dqn.vocab().words().to_vec();
    drop(dqn);

    let mut resumed = Dqn::<StateMsg>::new(&args, 3).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(resumed.model_version(), version);
    assert_eq!(resumed.vocab().words(), words.as_slice());
    assert_eq!(resumed.epsilon(), eps);
    resumed.set_eval(true).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        resumed.top_k(&refs, 10).unwrap_or_else(|e| panic!("{e:#}")),
        before,
        "same ranking from the same weights"
    );

    // Frozen at epsilon 0.5, a logging policy: the greedy product with probability 0.5 + 0.5/10,
    // every other at 0.05, each answer carrying that propensity.
    let mut logger = Dqn::<StateMsg>::new(&args, 6).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(logger.freeze(1.5).is_err(), "an epsilon outside [0, 1] is refused");
    logger.freeze(0.5).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(logger.epsilon(), 0.5);
    let greedy = before[0][0];
    let answers: Vec<(u32, f64)> =
        (0..400).flat_map(|_| logger.act(&refs[..1], &mut rng).unwrap_or_else(|e| panic!("{e:#}"))).collect();
    for &(a, ps) in &answers {
        let want = if a == greedy { 0.55 } else { 0.05 };
        assert!((ps - want).abs() < 1e-9, "action {a} logged with {ps}, not {want}");
    }
    let share = answers.iter().filter(|(a, _)| *a == greedy).count() as f64 / answers.len() as f64;
    assert!((share - 0.55).abs() < 0.1, "greedy share {share}");

    let file = checkpoint::file_in(dir.path());
    let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
    let mut other = Dqn::<StateMsg>::new(&args, 4).unwrap_or_else(|e| panic!("{e:#}"));
    let wider = state("red", 12, 0);
    let e = other.act(&[&wider], &mut rng).err().unwrap_or_else(|| panic!("answered with a refused checkpoint"));
    assert!(format!("{e:#}").contains("trained for 10 actions but the states announce 12"), "{e:#}");
    assert!(other.save().is_ok(), "nothing was built, nothing is saved");
    assert_eq!(std::fs::read(&file).unwrap_or_else(|e| panic!("{e}")), bytes, "checkpoint untouched");

    let wrong_net = DqnArgs { dqn_hidden: vec![8], ..args };
    let e =
        Dqn::<StateMsg>::new(&wrong_net, 5).err().unwrap_or_else(|| panic!("loaded a checkpoint of another network"));
    assert!(e.to_string().contains("another network"), "{e}");
}

#[test]
fn full_feedback_targets_decay_with_the_distance_to_each_later_product() {
    let step = |action: i64, reward: f32| Transition {
        obs: vec![2],
        item: 0,
        action,
        reward,
        next_obs: vec![3],
        next_item: 0,
        terminated: false,
        positives: None,
    };
    // Products shown after each step: 5, then 6, then 5 again (episode end).
    let steps = vec![(step(9, 1.0), 5), (step(1, 0.0), 6), (step(2, 0.0), 5)];
    let full = full_feedback(steps.clone(), 0.5);
    let positives: Vec<Vec<(i64, f32)>> = full.iter().map(|t| t.positives.clone().unwrap_or_default()).collect();
    assert_eq!(positives, [vec![(5, 1.0), (6, 0.5)], vec![(6, 1.0), (5, 0.5)], vec![(5, 1.0)]]);
    assert_eq!(full.iter().map(|t| t.action).collect::<Vec<_>>(), [9, 1, 2], "actions taken are kept");
    let exact = full_feedback(steps, 1.0);
    assert!(
        exact.iter().flat_map(|t| t.positives.clone().unwrap_or_default()).all(|(_, r)| r == 1.0),
        "decay 1: the env's reward"
    );
}

/// A DQN that acts uniformly at random (epsilon 1), learns with `hindsight`, gamma 0.
fn random_actor(hindsight: Hindsight) -> (Dqn<StateMsg>, ChaCha8Rng) {
    let args = DqnArgs {
        dqn_hindsight: hindsight,
        dqn_id_token: true,
        dqn_eps_start: 1.0,
        dqn_eps_end: 1.0,
        dqn_gamma: 0.0,
        ..small(None)
    };
    (Dqn::<StateMsg>::new(&args, 7).unwrap_or_else(|e| panic!("{e:#}")), ChaCha8Rng::seed_from_u64(7))
}

/// A state at product `index` (id `P{index}`) with the words `color`, of episode `ep-{episode}`.
fn product(color: &str, index: u32, step: u32, episode: usize) -> StateMsg {
    let mut s = state(color, 10, step);
    s.observation.index = index;
    s.observation.asin = format!("P{index}");
    s.episode_id = format!("ep-{episode}");
    s
}

/// 400 episodes, red users (product 0, then 3, then 4) and blue ones (1, 7, 8) in turn, the
/// states made by `state`; `outcome(i, action, later, next)` sets what the action at step `i`
/// earned and whether it ended the episode (`later`: the products after the first). Then the
/// learner catches up and the DQN turns to evaluation.
fn play_red_and_blue(
    dqn: &mut Dqn<StateMsg>,
    rng: &mut ChaCha8Rng,
    state: impl Fn(&str, u32, u32, usize) -> StateMsg,
    outcome: impl Fn(usize, u32, &[u32], &mut StateMsg),
) {
    for episode in 0..400 {
        let (color, first, later) = if episode % 2 == 0 { ("red", 0, [3, 4]) } else { ("blue", 1, [7, 8]) };
        let mut s = state(color, first, 0, episode);
        for (i, &p) in later.iter().enumerate() {
            let (a, _) = dqn.act(&[&s], rng).unwrap_or_else(|e| panic!("{e:#}"))[0];
            let mut next = state(color, p, s.step + 1, episode);
            outcome(i, a, &later, &mut next);
            dqn.learn(&Feedback { prev: &s, prev_index: 0, action: a, reward: next.reward, next: &next })
                .unwrap_or_else(|e| panic!("{e:#}"));
            s = next;
        }
        if episode % 20 == 19 {
            dqn.flush(Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }
    dqn.flush(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e:#}"));
    dqn.set_eval(true).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn future_hindsight_learns_products_seen_later_without_choosing_them() {
    let _rng = net::torch_rng_guard();
    // Episodes start on a "red" or "blue" product; red users go on to see products 3 then 4,
    // blue users 7 then 8. The agent acts uniformly at random (epsilon 1) and is paid only when
    // it happens to pick one of them; full feedback teaches it all of them anyway.
    let (mut dqn, mut rng) = random_actor(Hindsight::Future);
    play_red_and_blue(&mut dqn, &mut rng, product, |i, a, later, next| {
        next.reward = if later[i..].contains(&a) { 1.0 } else { 0.0 };
        next.terminated = i + 1 == later.len();
    });
    let (red, blue) = (product("red", 0, 0, 9_000), product("blue", 1, 0, 9_001));
    let mut top: Vec<Vec<u32>> = dqn.top_k(&[&red, &blue], 2).unwrap_or_else(|e| panic!("{e:#}"));
    top.iter_mut().for_each(|t| t.sort_unstable());
    assert_eq!(top, [vec![3, 4], vec![7, 8]], "the two products each kind of user sees later rank first");
}

#[test]
fn a_dqn_that_cannot_start_fails_instead_of_answering() {
    let _rng = net::torch_rng_guard();
    // The wide table is dense: refused above 4,096 actions, as an error of the first call.
    let args = DqnArgs { dqn_wide: true, ..small(None) };
    let mut dqn = Dqn::<StateMsg>::new(&args, 0).unwrap_or_else(|e| panic!("{e:#}"));
    let big = state("red", 5_000, 0);
    let e = dqn.act(&[&big], &mut ChaCha8Rng::seed_from_u64(0)).err().unwrap_or_else(|| panic!("answered"));
    let msg = format!("{e:#}");
    assert!(
        msg.contains("dqn cannot start") && msg.contains("--dqn-wide needs an action space of at most 4096"),
        "{msg}"
    );
    assert!(dqn.top_k(&[&big], 3).is_err(), "evaluation fails the same way");
}

#[test]
fn a_state_of_another_action_space_is_an_error_once_serving() {
    let _rng = net::torch_rng_guard();
    let mut dqn = Dqn::<StateMsg>::new(&small(None), 0).unwrap_or_else(|e| panic!("{e:#}"));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(dqn.act(&[&state("red", 10, 0)], &mut rng).is_ok());
    let e = dqn.act(&[&state("red", 12, 0)], &mut rng).err().unwrap_or_else(|| panic!("answered"));
    assert!(format!("{e:#}").contains("of an action space of 12 products"), "{e:#}");
    let mut other = state("red", 10, 0);
    other.catalog = Some("00000000000000aa".into());
    let e = dqn.act(&[&other], &mut rng).err().unwrap_or_else(|| panic!("answered another catalogue"));
    assert!(format!("{e:#}").contains("(catalogue 00000000000000aa)"), "{e:#}");
}

#[test]
fn a_checkpoint_of_another_catalogue_is_refused_or_set_aside_when_asked() {
    let _rng = net::torch_rng_guard();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let args = small(Some(dir.path()));
    let on = |catalog: &str| {
        let mut s = state("red", 10, 0);
        s.catalog = Some(catalog.into());
        s
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut dqn = Dqn::<StateMsg>::new(&args, 0).unwrap_or_else(|e| panic!("{e:#}"));
    dqn.act(&[&on("00000000000000aa")], &mut rng).unwrap_or_else(|e| panic!("{e:#}"));
    dqn.save().unwrap_or_else(|e| panic!("{e:#}"));
    drop(dqn);

    let mut same = Dqn::<StateMsg>::new(&args, 0).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(same.act(&[&on("00000000000000aa")], &mut rng).is_ok(), "the same catalogue resumes");
    drop(same);
    let mut other = Dqn::<StateMsg>::new(&args, 0).unwrap_or_else(|e| panic!("{e:#}"));
    let e = other.act(&[&on("00000000000000bb")], &mut rng).err().unwrap_or_else(|| panic!("mixed catalogues"));
    let msg = format!("{e:#}");
    assert!(msg.contains("catalogue 00000000000000aa but the states come from catalogue 00000000000000bb"), "{msg}");
    drop(other);

    let fresh = DqnArgs { dqn_checkpoint_mismatch: CheckpointMismatch::Fresh, ..args };
    let mut other = Dqn::<StateMsg>::new(&fresh, 0).unwrap_or_else(|e| panic!("{e:#}"));
    other.act(&[&on("00000000000000bb")], &mut rng).unwrap_or_else(|e| panic!("{e:#}"));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("dqn.ckpt.replaced-")), "the old checkpoint is kept aside: {names:?}");
}

/// `DqnArgs` from `flags` as the services parse them (presets applied), no environment read.
fn parsed(flags: &[&str]) -> DqnArgs {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        dqn: DqnArgs,
    }
    let args = std::iter::once("agent").chain(flags.iter().copied());
    common::cli::try_parse_flags_with::<Wrap>(args, preset_defaults).unwrap_or_else(|e| panic!("{e}")).dqn
}

#[test]
fn the_defaults_are_the_papers_network_and_a_preset_replaces_them_but_not_what_was_given() {
    let paper = parsed(&[]);
    assert_eq!(
        (paper.dqn_net, paper.dqn_lstm_units.clone(), paper.dqn_hidden.clone()),
        (NetKind::Lstm, vec![64, 64, 32], vec![64, 32])
    );
    assert_eq!(
        (paper.dqn_gamma, paper.dqn_hindsight, paper.dqn_id_token, paper.dqn_wide),
        (0.9, Hindsight::Off, false, false)
    );
    assert_eq!(parsed(&["--dqn-preset", "paper"]).net_config(), paper.net_config());

    let fashion = parsed(&["--dqn-preset", "fashion"]);
    assert_eq!((fashion.dqn_net, fashion.dqn_hidden.clone(), fashion.dqn_wide), (NetKind::Mlp, vec![64], true));
    assert_eq!((fashion.dqn_gamma, fashion.dqn_lr, fashion.dqn_eps_decay_steps), (0.0, 0.003, 3000));
    assert_eq!((fashion.dqn_hindsight, fashion.dqn_id_token), (Hindsight::Future, true));
    assert_eq!(fashion.net_config().head, Head::Auto, "any catalogue size");
    let (small, large) = (fashion.net_config().resolved(1_500), fashion.net_config().resolved(186_637));
    assert_eq!((small.head, small.tower_dim, small.wide_pairs), (Head::Dense, 0, 0));
    assert_eq!((large.head, large.tower_dim, large.wide_pairs, large.wide), (Head::Tower, 64, 1_000_000, true));
    let mine = parsed(&["--dqn-preset", "fashion", "--dqn-lr", "0.01", "--dqn-hidden", "8,8"]);
    assert_eq!((mine.dqn_lr, mine.dqn_hidden.clone(), mine.dqn_net), (0.01, vec![8, 8], NetKind::Mlp));

    let recogym = parsed(&["--dqn-preset", "recogym"]);
    assert_eq!((recogym.dqn_net, recogym.dqn_train_ratio, recogym.dqn_replay_capacity), (NetKind::Mlp, 0.25, 400_000));
}

#[test]
fn every_preset_names_real_flags() {
    use clap::{CommandFactory, ValueEnum};
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        dqn: DqnArgs,
    }
    let command = Wrap::command();
    for preset in DqnPreset::value_variants() {
        for (id, _) in preset.settings() {
            assert!(command.get_arguments().any(|a| a.get_id() == *id), "{preset:?} sets {id}, which is no flag");
        }
    }
}

#[test]
fn the_candidate_search_probing_every_list_answers_as_the_exact_scan_and_auto_picks_it_for_large_catalogues() {
    let _rng = net::torch_rng_guard();
    let args = DqnArgs {
        dqn_head: Head::Tower,
        dqn_tower_dim: 8,
        dqn_search: Search::Ivf,
        dqn_ivf_lists: 4,
        dqn_ivf_probe: 4,
        dqn_ivf_popular: 0,
        ..small(None)
    };
    let mut dqn = Dqn::<StateMsg>::new(&args, 1).unwrap_or_else(|e| panic!("{e:#}"));
    play(&mut dqn, 800, &mut ChaCha8Rng::seed_from_u64(1));
    dqn.set_eval(true).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(dqn.search, Search::Ivf);
    let states: Vec<StateMsg> = ["red", "blue", "red blue", "green"].iter().map(|t| state(t, 10, 0)).collect();
    let refs: Vec<&StateMsg> = states.iter().collect();
    let answers = |dqn: &mut Dqn| {
        let top = dqn.top_k(&refs, 10).unwrap_or_else(|e| panic!("{e:#}"));
        let act = dqn.act(&refs, &mut ChaCha8Rng::seed_from_u64(0)).unwrap_or_else(|e| panic!("{e:#}"));
        (top, act)
    };
    let from_index = answers(&mut dqn);
    assert_eq!(dqn.live.as_ref().and_then(|l| l.index.as_ref()).map(|i| i.lists()), Some(4), "the index served");
    dqn.search = Search::Exact;
    assert_eq!(from_index, answers(&mut dqn));

    assert_eq!(Search::Auto.resolved(Head::Tower, IVF_ABOVE + 1), Search::Ivf);
    assert_eq!(Search::Auto.resolved(Head::Tower, IVF_ABOVE), Search::Exact);
    assert_eq!(Search::Ivf.resolved(Head::Dense, 1_000_000), Search::Exact, "the dense head scores every action");
    assert_eq!(parsed(&["--dqn-preset", "fashion"]).dqn_search, Search::Auto);
}

#[test]
fn hindsight_is_refused_on_states_whose_user_the_recommendations_steer() {
    let _rng = net::torch_rng_guard();
    let mut steered = state("red", 10, 0);
    steered.env_id = format!("{}/run", protocol::FASHION_INTERACTIVE_ENV);
    steered.accept_prob = Some(0.5);
    let refused = |hindsight: Hindsight, s: &StateMsg| -> String {
        let args = DqnArgs { dqn_hindsight: hindsight, ..small(None) };
        let mut dqn = Dqn::<StateMsg>::new(&args, 1).unwrap_or_else(|e| panic!("{e:#}"));
        match dqn.act(&[s], &mut ChaCha8Rng::seed_from_u64(0)) {
            Ok(_) => panic!("--dqn-hindsight {hindsight:?} on {} must be refused", s.env_id),
            Err(e) => format!("{e:#}"),
        }
    };
    let served = |hindsight: Hindsight, s: &StateMsg| {
        let args = DqnArgs { dqn_hindsight: hindsight, ..small(None) };
        let mut dqn = Dqn::<StateMsg>::new(&args, 1).unwrap_or_else(|e| panic!("{e:#}"));
        dqn.act(&[s], &mut ChaCha8Rng::seed_from_u64(0)).unwrap_or_else(|e| panic!("{hindsight:?}: {e:#}"));
    };
    // Full feedback relabels with products the steered user saw because of the actions.
    let err = refused(Hindsight::Future, &steered);
    assert!(err.contains("--dqn-hindsight next") && err.contains("change what the user does next"), "{err}");
    // The next product is sound where the state publishes its acceptance probability ...
    served(Hindsight::Next, &steered);
    // ... and refused where it does not.
    let err = refused(Hindsight::Next, &StateMsg { accept_prob: None, ..steered.clone() });
    assert!(err.contains("no sound relabelling") && err.contains("--dqn-hindsight off"), "{err}");
    // The replayed user (the paper's env) takes either; without hindsight the steered one is served.
    let replayed = state("red", 10, 0);
    served(Hindsight::Future, &replayed);
    served(Hindsight::Next, &replayed);
    served(Hindsight::Off, &steered);
}

#[test]
fn the_interactive_user_relabels_only_declined_steps_that_went_on_with_the_acceptance_probability() {
    let mut s = state("red", 10, 3);
    assert_eq!(s.relabel(), Relabel::Reward(1.0), "replay: the next product always paid 1");
    s.env_id = format!("{}/run", protocol::FASHION_INTERACTIVE_ENV);
    s.accept_prob = Some(0.3);
    assert_eq!(s.relabel(), Relabel::Reward(0.3), "declined, and the user went on to this product");
    let accepted = StateMsg { reward: 1.0, ..s.clone() };
    assert_eq!(accepted.relabel(), Relabel::NotHere, "accepted: the user jumped to the recommended product");
    let ended = StateMsg { terminated: true, ..s.clone() };
    assert_eq!(ended.relabel(), Relabel::NotHere, "the user may have left because of the action");
    let truncated = StateMsg { truncated: true, ..s.clone() };
    assert_eq!(truncated.relabel(), Relabel::Reward(0.3), "a step limit cuts both alike");
    assert_eq!(StateMsg { accept_prob: None, ..s }.relabel(), Relabel::Unsound);
}

#[test]
fn next_hindsight_on_the_interactive_user_learns_the_next_product_without_choosing_it() {
    let _rng = net::torch_rng_guard();
    // Red users go 0 -> 3 -> 4, blue users 1 -> 7 -> 8. The agent acts at random (epsilon 1), and
    // every recommendation is declined; relabelling the declined steps teaches it the next product.
    let (mut dqn, mut rng) = random_actor(Hindsight::Next);
    let product = |color: &str, index: u32, step: u32, episode: usize| {
        let mut s = product(color, index, step, episode);
        (s.env_id, s.accept_prob) = (format!("{}/run", protocol::FASHION_INTERACTIVE_ENV), Some(0.5));
        s
    };
    play_red_and_blue(&mut dqn, &mut rng, product, |i, _, later, next| {
        // A step limit cuts the episode at its second step: truncated, so still relabelled.
        (next.reward, next.truncated) = (0.0, i + 1 == later.len());
    });
    let states = [product("red", 0, 0, 9_000), product("blue", 1, 0, 9_001), product("red", 3, 1, 9_002)];
    let top = dqn.top_k(&states.iter().collect::<Vec<_>>(), 1).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(top, [vec![3], vec![7], vec![4]], "each product's next product ranks first");
}
