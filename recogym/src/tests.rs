//! Mechanics of the port checked end to end: determinism under any scheduling, the Markov chain's
//! rates, the click model, flips and `normalize_beta` against values printed by Python RecoGym,
//! the logs' shape and the A/B interval.

use std::error::Error;

use crate::ab::{self, beta_interval, AbSettings};
use crate::{
    generate_logs, Agent, Config, Context, Event, Log, OrganicCountAgent, OrganicView, RandomAgent, Step, UserState,
    World,
};

type TestResult = Result<(), Box<dyn Error>>;

/// Runs `user_id` to the end with the random agent, returning every step.
fn trajectory(world: &World, user_id: u64) -> Vec<Step> {
    let mut agent = RandomAgent::from_config(world.config());
    agent.reset_user(user_id);
    let mut sim = world.user(user_id);
    let mut steps = vec![sim.reset(world)];
    while let Some(last) = steps.last().filter(|s| !s.done) {
        let ctx = Context { user_id, time: last.time, last_click: None };
        let action = agent.act(&last.organic, &ctx);
        steps.push(sim.step(world, action.product));
    }
    steps
}

#[test]
fn same_seed_same_trajectory_other_seed_other_trajectory() {
    let world = World::new(&Config::default());
    let again = World::new(&Config::default());
    let other = World::new(&Config { random_seed: 7, ..Config::default() });
    assert_eq!(trajectory(&world, 3), trajectory(&again, 3));
    assert_ne!(trajectory(&world, 3), trajectory(&other, 3));
    assert_ne!(trajectory(&world, 3), trajectory(&world, 4));
    // reset restarts the same user.
    let mut sim = world.user(3);
    let first = sim.reset(&world);
    assert_eq!(sim.reset(&world), first);
}

/// Per-user streams: a user's log is the same whether it runs alone, after others, in any order,
/// or on any number of threads.
#[test]
fn logs_do_not_depend_on_order_or_threads() -> TestResult {
    let world = World::new(&Config { num_products: 50, ..Config::default() });
    let agent = RandomAgent::from_config(world.config());
    let run = |threads| -> Result<Log, Box<dyn Error>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        Ok(pool.install(|| generate_logs(&world, 0..200, &agent)))
    };
    let one = run(1)?;
    assert_eq!(one, run(4)?);
    let mut backwards = Log::default();
    for user in (0..200).rev() {
        backwards.extend(generate_logs(&world, user..user + 1, &agent));
    }
    backwards.rows.sort_by_key(|row| row.u);
    assert_eq!(one, backwards);

    let settings = AbSettings { num_offline_users: 200, num_online_users: 300, ..AbSettings::default() };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let single = pool.install(|| ab::run(&world, &settings, OrganicCountAgent::from_config));
    assert_eq!(single, ab::run(&world, &settings, OrganicCountAgent::from_config));
    Ok(())
}

/// Transition frequencies observed through the step API match `state_transition`: organic →
/// (organic 0.74, bandit 0.25, stop 0.01); bandit without click → (organic 0.05, bandit 0.94,
/// stop 0.01, since Python uses prob_leave_organic there).
#[test]
fn transition_rates_match_the_markov_matrix() {
    let world = World::new(&Config::default());
    let (mut from_organic, mut from_bandit) = ([0u64; 3], [0u64; 3]);
    for user in 0..20_000 {
        let steps = trajectory(&world, user);
        for (i, step) in steps.iter().enumerate() {
            // Within a session every view but the last is followed by a view.
            from_organic[0] += step.organic.len().saturating_sub(1) as u64;
            if !step.organic.is_empty() {
                from_organic[if step.done { 2 } else { 1 }] += 1;
            }
            if i > 0 && !step.click {
                let next = if !step.organic.is_empty() {
                    0
                } else if step.done {
                    2
                } else {
                    1
                };
                from_bandit[next] += 1;
            }
        }
    }
    let expected = world.transitions();
    for (counts, row) in [(from_organic, expected[0]), (from_bandit, expected[1])] {
        let n = counts.iter().sum::<u64>() as f64;
        for (count, p) in counts.iter().zip(row) {
            let se = (p * (1.0 - p) / n).sqrt();
            let freq = *count as f64 / n;
            assert!((freq - p).abs() < 5.0 * se, "{counts:?}: {freq} vs {p}");
        }
    }
}

/// Mean bandit steps per user match the chain: a bandit visit ends each step with probability
/// q = c + (1 - c)(0.05 + 0.01) (c: click rate), going back to organic with probability
/// (c + (1 - c) 0.05) / q; organic browsing reaches bandit with probability 0.25 / 0.26. With the
/// random agent's c ≈ 1.2 % this is about 75 steps per user (80.6 without clicks).
#[test]
fn mean_bandit_steps_per_user_matches_the_chain() {
    let world = World::new(&Config::default());
    let users = 20_000;
    let (mut steps, mut clicks, mut views) = (0u64, 0u64, 0u64);
    for user in 0..users {
        for (i, step) in trajectory(&world, user).iter().enumerate() {
            steps += u64::from(i > 0);
            clicks += u64::from(step.click);
            views += step.organic.len() as u64;
        }
    }
    let c = clicks as f64 / steps as f64;
    let q = c + (1.0 - c) * 0.06;
    let back = (c + (1.0 - c) * 0.05) / q;
    let reach = 0.25 / 0.26;
    let visits = reach / (1.0 - back * reach);
    let expected = visits / q;
    let mean = steps as f64 / users as f64;
    assert!((mean / expected - 1.0).abs() < 0.03, "mean {mean} vs {expected} (c = {c})");
    // Organic: (1 + visits back) sessions of 1 / 0.26 views on average.
    let expected_views = (1.0 + visits * back) / 0.26;
    let mean_views = views as f64 / users as f64;
    assert!((mean_views / expected_views - 1.0).abs() < 0.03, "views {mean_views} vs {expected_views}");
}

/// Every user starts with an organic view, a click always sends the user back to organic
/// browsing (at least one view, even when the chain drew stop), and times increase by one per
/// transition.
#[test]
fn clicks_return_users_to_organic_and_time_ticks() {
    let world = World::new(&Config::default());
    let mut clicked = 0;
    for user in 0..3_000 {
        let steps = trajectory(&world, user);
        assert!(!steps[0].organic.is_empty());
        assert_eq!(steps[0].organic[0].time, 0);
        // The clock: the first view at 0, then +1 per transition (each view, each bandit step).
        let mut clock = 0;
        for (i, step) in steps.iter().enumerate() {
            if step.click {
                clicked += 1;
                assert!(!step.organic.is_empty());
            }
            if i > 0 {
                clock += 1; // the bandit step's transition
            }
            for view in &step.organic {
                assert_eq!(view.time, clock);
                clock += 1;
            }
            assert_eq!(step.time, clock);
        }
        assert!(steps.last().is_some_and(|s| s.done));
    }
    assert!(clicked > 1_000);
}

#[test]
fn click_probabilities_stay_in_ff_range_and_oracle_beats_random() {
    let world = World::new(&Config::default());
    let mut sim = world.user(0);
    let step = sim.reset(&world);
    if !step.done {
        assert_eq!(sim.debug_state(), UserState::Bandit);
        for product in 0..10 {
            let p = sim.oracle_click_probability(&world, product);
            assert!((0.004_47..0.029_32).contains(&p), "{p}");
        }
        let best = sim.oracle_best_product(&world);
        assert!((0..10).all(|p| sim.oracle_click_probability(&world, p) <= sim.oracle_click_probability(&world, best)));
    }
    let settings = AbSettings { num_offline_users: 500, num_online_users: 3_000, ..AbSettings::default() };
    let random = ab::run(&world, &settings, RandomAgent::from_config);
    let oracle = ab::run_oracle(&world, &settings);
    let organic = ab::run(&world, &settings, OrganicCountAgent::from_config);
    assert!(oracle.lo > random.hi, "oracle {oracle:?} vs random {random:?}");
    assert!(organic.lo > random.hi, "organic count {organic:?} vs random {random:?}");
    assert!(oracle.ctr >= organic.lo);
    assert_eq!(random.users, 3_000);
}

#[test]
fn normalize_beta_scales_rows_only() {
    let plain = World::new(&Config::default());
    let normalized = World::new(&Config { normalize_beta: true, ..Config::default() });
    for product in 0..10 {
        assert_eq!(plain.beta(product), plain.gamma(product));
        assert_eq!(normalized.gamma(product), plain.gamma(product));
        let norm: f64 = normalized.beta(product).iter().map(|b| b * b).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-12);
        let scale = plain.beta(product)[0] / normalized.beta(product)[0];
        for (b, n) in plain.beta(product).iter().zip(normalized.beta(product)) {
            assert!((b - n * scale).abs() < 1e-12);
        }
    }
    assert_eq!(normalized.mu_bandit(), plain.mu_organic());
}

/// `generate_beta` on a fixed Gamma (P = 12, K = 3, Gamma[i][k] = sin(1.7 i + 0.9 k + 0.3 i k)):
/// the permutations Python RecoGym 0.1.3.0 produced for these flip counts (6 is all the positive
/// pairs a greedy walk finds, so 12 gives the same).
#[test]
fn flips_match_python_generate_beta() -> TestResult {
    let (p, k) = (12usize, 3usize);
    let gamma: Vec<f64> = (0..p)
        .flat_map(|i| (0..k).map(move |d| (1.7 * i as f64 + 0.9 * d as f64 + 0.3 * (i * d) as f64).sin()))
        .collect();
    let mu: Vec<f64> = (0..p).map(|i| 0.1 * i as f64 - 0.5).collect();
    let expected: [(u32, [u32; 12]); 6] = [
        (1, [0, 1, 2, 3, 4, 8, 6, 7, 5, 9, 10, 11]),
        (2, [0, 1, 2, 3, 4, 8, 6, 10, 5, 9, 7, 11]),
        (3, [0, 4, 2, 3, 1, 8, 6, 10, 5, 9, 7, 11]),
        (4, [3, 4, 2, 0, 1, 8, 6, 10, 5, 9, 7, 11]),
        (6, [3, 4, 11, 0, 1, 8, 6, 10, 5, 9, 7, 2]),
        (12, [3, 4, 11, 0, 1, 8, 6, 10, 5, 9, 7, 2]),
    ];
    for (flips, index) in expected {
        let config = Config { num_products: p as u32, k, number_of_flips: flips, ..Config::default() };
        let world = World::with_embeddings(&config, gamma.clone(), mu.clone())?;
        assert_eq!(world.flip_index(), &index, "{flips} flips");
        for (product, &partner) in index.iter().enumerate() {
            // The bandit response to `product` is the organic profile of its partner.
            assert_eq!(world.beta(product as u32), world.gamma(partner));
            assert_eq!(world.mu_bandit()[product], mu[partner as usize]);
        }
    }
    Ok(())
}

/// With flips, the best bandit product for a user is no longer the likeliest organic view: for
/// a flipped product the click model follows its partner's organic profile.
#[test]
fn flips_change_the_organic_to_bandit_mapping() {
    let plain = World::new(&Config { num_products: 100, ..Config::default() });
    let flipped = World::new(&Config { num_products: 100, number_of_flips: 20, ..Config::default() });
    let moved: Vec<u32> = (0..100u32).filter(|&p| flipped.flip_index()[p as usize] != p).collect();
    assert_eq!(moved.len(), 40);
    for &p in &moved {
        let partner = flipped.flip_index()[p as usize];
        assert_eq!(flipped.flip_index()[partner as usize], p);
        assert_eq!(flipped.gamma(p), plain.gamma(p));
        assert_eq!(flipped.beta(p), plain.gamma(partner));
    }
}

/// Log shape: users in order, each user's rows in time order, a bandit row with `c = false`
/// last (the action Python logs after the user left), random propensities `1/P`.
#[test]
fn logs_have_recogym_shape() {
    let world = World::new(&Config { with_ps_all: true, ..Config::default() });
    let log = generate_logs(&world, 10..60, &RandomAgent::from_config(world.config()));
    for user_rows in log.rows.chunk_by(|a, b| a.u == b.u) {
        assert!(user_rows.windows(2).all(|w| w[0].t < w[1].t));
        let last = &user_rows[user_rows.len() - 1];
        assert_eq!((last.z, last.c), (Event::Bandit, Some(false)));
        assert_eq!(user_rows[0].z, Event::Organic);
        for row in user_rows {
            match row.z {
                Event::Organic => assert!(row.v.is_some() && row.a.is_none() && row.c.is_none()),
                Event::Bandit => {
                    assert!(row.v.is_none() && row.a.is_some());
                    assert_eq!(row.ps, Some(0.1));
                    assert_eq!(row.ps_all.as_deref(), Some(&[0.1; 10][..]));
                }
            }
        }
    }
    let users: Vec<u64> = log.rows.chunk_by(|a, b| a.u == b.u).map(|rows| rows[0].u).collect();
    assert_eq!(users, (10..60).collect::<Vec<_>>());
}

/// The interval is scipy's `beta.ppf(q, clicks + 1, failures + 1)`; values printed by scipy.
#[test]
fn beta_interval_matches_scipy() {
    let cases = [
        ((0, 0), (0.5, 0.025, 0.975)),
        ((10, 1_000), (0.010_654_306_353_012_743, 0.005_498_083_632_626_144, 0.018_295_025_028_672_41)),
        ((123, 10_123), (0.012_214_811_715_473_544, 0.010_197_387_151_466_713, 0.014_478_848_135_586_82)),
        ((19_713, 1_607_161), (0.012_266_132_834_743_029, 0.012_096_735_941_478_18, 0.012_437_084_104_823_252)),
        ((5, 10), (0.5, 0.233_793_597_659_345_18, 0.766_206_402_340_654_8)),
    ];
    for ((clicks, impressions), (median, lo, hi)) in cases {
        let (m, l, h) = beta_interval(clicks, impressions);
        for (got, want) in [(m, median), (l, lo), (h, hi)] {
            assert!(((got - want) / want).abs() < 1e-9, "{clicks}/{impressions}: {got} vs {want}");
        }
    }
}

/// What an agent is shown: the views since the previous opportunity, once each, in order.
#[test]
fn agents_see_each_view_once() {
    #[derive(Clone)]
    struct Recorder(Vec<OrganicView>);
    impl Agent for Recorder {
        fn reset_user(&mut self, _: u64) {
            self.0.clear();
        }
        fn act(&mut self, organic: &[OrganicView], _: &Context) -> crate::Action {
            self.0.extend_from_slice(organic);
            crate::Action { product: 0, ps: 1.0, ps_all: None }
        }
    }
    let world = World::new(&Config::default());
    let log = generate_logs(&world, 0..1, &Recorder(Vec::new()));
    let views: Vec<OrganicView> =
        log.rows.iter().filter_map(|row| row.v.map(|product| OrganicView { time: row.t, product })).collect();
    let mut policy = crate::log::AgentPolicy(Recorder(Vec::new()));
    crate::log::simulate_user(&world, 0, &mut policy, |_| {});
    assert_eq!(policy.0 .0, views);
}

/// `World` is shared across threads; `Agent` is usable as a trait object.
#[test]
fn world_is_send_sync_and_agent_is_object_safe() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<World>();
    assert_send_sync::<crate::UserSim>();
    let world = World::new(&Config::default());
    let mut agents: Vec<Box<dyn Agent>> = vec![
        Box::new(RandomAgent::from_config(world.config())),
        Box::new(OrganicCountAgent::from_config(world.config())),
    ];
    let views = [OrganicView { time: 0, product: 3 }];
    for agent in &mut agents {
        agent.reset_user(1);
        let action = agent.act(&views, &Context { user_id: 1, time: 1, last_click: None });
        assert!(action.product < 10);
    }
}
