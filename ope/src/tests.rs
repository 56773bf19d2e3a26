use super::*;

/// A synthetic bandit with known truth: K actions, context c in 0..4, reward probability
/// `p(c, a)`; logging uniform or epsilon-greedy; the target greedy or epsilon-greedy on the
/// best action.
fn p(c: u32, a: u32) -> f64 {
    0.05 + 0.1 * f64::from((c + a) % 4)
}

fn best(c: u32, k: u32) -> u32 {
    (0..k).max_by(|&x, &y| p(c, x).total_cmp(&p(c, y))).unwrap_or(0)
}

fn simulate(n_eps: usize, k: u32, logging_eps: f64, target: impl Fn(u32) -> Dist, model_bias: f64) -> (Vec<Row>, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut rows = Vec::new();
    let mut truth = 0.0;
    for e in 0..n_eps {
        for _ in 0..10 {
            let c = rng.random_range(0..4u32);
            let logging = Dist::epsilon_greedy(k, (c + 1) % k, logging_eps);
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let mut action = k - 1;
            for (a, pa) in logging.to_dense().iter().enumerate() {
                acc += pa;
                if u < acc {
                    action = a as u32;
                    break;
                }
            }
            let reward = if rng.random::<f64>() < p(c, action) { 1.0 } else { 0.0 };
            let t = target(c);
            truth += t.expect(|a| p(c, a), (0..k).map(|a| p(c, a)).sum::<f64>() / f64::from(k));
            let q = |a: u32| p(c, a) + model_bias;
            let q_mean = (0..k).map(q).sum::<f64>() / f64::from(k);
            rows.push(Row {
                episode: e,
                action,
                pscore: logging.prob(action),
                reward,
                q_logged: q(action),
                q_target: t.expect(q, q_mean),
                target: t,
            });
        }
    }
    let n = rows.len() as f64;
    (rows, truth / n)
}

#[test]
fn every_estimator_finds_the_truth_of_a_supported_target() {
    let k = 5;
    let (rows, truth) = simulate(3000, k, 1.0, |c| Dist::point(k, best(c, k)), 0.0);
    let ev = evaluate(&rows, &Config { bootstrap: 300, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    for e in &ev.estimates {
        // The exact model makes DM's interval a point at the truth (up to rounding).
        let i = Interval { lo: e.interval.lo - 1e-12, hi: e.interval.hi + 1e-12, ..e.interval };
        assert!(i.covers(truth), "{:?} {:?} truth {truth}\n{}", e.estimator, e.interval, table(&ev, Some(truth)));
        assert!(e.interval.lo < e.interval.value && e.interval.value < e.interval.hi || e.estimator == Estimator::Dm);
    }
    assert!(ev.warnings.is_empty(), "{:?}", ev.warnings);
    // Uniform logging over 5 actions, greedy target: a fifth of the rows match, weight 5.
    assert!((ev.support.max_weight - 5.0).abs() < 1e-9);
    assert!((ev.support.ess_fraction - 0.2).abs() < 0.02, "{:?}", ev.support);
    assert!((ev.support.mean_weight - 1.0).abs() < 0.05);
}

#[test]
fn dr_corrects_a_biased_model_and_dm_does_not() {
    let k = 5;
    let (rows, truth) = simulate(3000, k, 1.0, |c| Dist::epsilon_greedy(k, best(c, k), 0.2), 0.1);
    let ev = evaluate(&rows, &Config { bootstrap: 300, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    let (dm, dr) = (ev.get(Estimator::Dm), ev.get(Estimator::Dr));
    assert!(!dm.covers(truth) && (dm.value - truth - 0.1).abs() < 0.01, "dm {dm:?} truth {truth}");
    assert!(dr.covers(truth), "dr {dr:?} truth {truth}");
}

#[test]
fn the_estimates_are_the_closed_formulas() {
    let k = 3;
    let rows = vec![
        Row {
            episode: 0,
            action: 0,
            pscore: 0.5,
            reward: 1.0,
            target: Dist::point(k, 0),
            q_logged: 0.4,
            q_target: 0.4,
        },
        Row {
            episode: 0,
            action: 1,
            pscore: 0.25,
            reward: 0.0,
            target: Dist::point(k, 0),
            q_logged: 0.2,
            q_target: 0.3,
        },
        Row {
            episode: 1,
            action: 2,
            pscore: 0.25,
            reward: 1.0,
            target: Dist::epsilon_greedy(k, 2, 0.3),
            q_logged: 0.6,
            q_target: 0.5,
        },
    ];
    let ev = evaluate(&rows, &Config { bootstrap: 10, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    let w = [2.0, 0.0, (0.7 + 0.1) / 0.25];
    let r = [1.0, 0.0, 1.0];
    let ips = (w[0] * r[0] + w[2] * r[2]) / 3.0;
    let snips = (w[0] * r[0] + w[2] * r[2]) / (w[0] + w[1] + w[2]);
    let dm = (0.4 + 0.3 + 0.5) / 3.0;
    let dr = (0.4 + w[0] * (1.0 - 0.4) + 0.3 + 0.5 + w[2] * (1.0 - 0.6)) / 3.0;
    for (e, want) in [(Estimator::Ips, ips), (Estimator::Snips, snips), (Estimator::Dm, dm), (Estimator::Dr, dr)] {
        assert!((ev.get(e).value - want).abs() < 1e-12, "{e:?}: {} vs {want}", ev.get(e).value);
    }
    assert!((ev.logged.value - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!((ev.rows, ev.episodes, ev.refused_rows), (3, 2, 0));
    let ess = (w.iter().sum::<f64>()).powi(2) / w.iter().map(|x| x * x).sum::<f64>();
    assert!((ev.support.ess - ess).abs() < 1e-12);
}

#[test]
fn unsupported_targets_and_bad_propensities_are_warned_and_counted() {
    let k = 100;
    // Logging only ever takes actions 0..10; the target always takes 50.
    let mut rows: Vec<Row> = (0..500)
        .map(|i| Row {
            episode: i / 5,
            action: (i % 10) as u32,
            pscore: 0.1,
            reward: 0.0,
            target: Dist::point(k, 50),
            q_logged: 0.1,
            q_target: 0.1,
        })
        .collect();
    rows.push(Row { pscore: 0.0, ..rows[0].clone() });
    rows.push(Row { pscore: f64::NAN, ..rows[0].clone() });
    let ev = evaluate(&rows, &Config { bootstrap: 50, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ev.refused_rows, 2);
    let all = ev.warnings.join("\n");
    assert!(all.contains("2 logged decisions refused"), "{all}");
    assert!(all.contains("100.0% of its mass on actions the logging policy never took"), "{all}");
    assert!(all.contains("never takes a logged action"), "{all}");

    // Tiny propensities on the target's action: weight 10,000 on half the rows.
    let rows: Vec<Row> = (0..200)
        .map(|i| Row {
            episode: i,
            action: (i % 2) as u32,
            pscore: if i % 2 == 0 { 0.9999 } else { 0.0001 },
            reward: 1.0,
            target: Dist::point(2, 1),
            q_logged: 0.5,
            q_target: 0.5,
        })
        .collect();
    let ev = evaluate(&rows, &Config { bootstrap: 50, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ev.support.heavy_rows, 100);
    // Every matching row is a heavy one: they carry all the weight.
    assert!((ev.support.heavy_weight_share - 1.0).abs() < 1e-12, "{:?}", ev.support);
    assert!(
        ev.warnings.iter().any(|w| w.contains("weight above 100") && w.contains("100.0%") && w.contains("dominated")),
        "{:?}",
        ev.warnings
    );

    // A stochastic target that puts a little mass on the tiny-propensity action: warned, but not
    // called dominated (weight 0.012 / 0.0001 = 120 on 1 row of 200, against ~0.99 on the others).
    let rows: Vec<Row> = (0..200)
        .map(|i| Row {
            episode: i,
            action: u32::from(i == 0),
            pscore: if i == 0 { 0.0001 } else { 0.9999 },
            reward: 1.0,
            target: Dist::dense(&[0.988, 0.012]),
            q_logged: 0.5,
            q_target: 0.5,
        })
        .collect();
    let ev = evaluate(&rows, &Config { bootstrap: 50, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ev.support.heavy_rows, 1);
    assert!(ev.support.heavy_weight_share > 0.3 && ev.support.heavy_weight_share < 0.5, "{:?}", ev.support);
    let w = ev.warnings.iter().find(|w| w.contains("weight above 100")).unwrap_or_else(|| panic!("{:?}", ev.warnings));
    assert!(w.contains("sensitive") && !w.contains("dominated"), "{w}");

    // A tiny propensity is no warning when the target is as small there: uniform logging and a
    // uniform target over 100,000 actions (propensity 1e-5, weight 1 everywhere).
    let rows: Vec<Row> = (0..200)
        .map(|i| Row {
            episode: i,
            action: i as u32,
            pscore: 1e-5,
            reward: 0.0,
            target: Dist { k: 100_000, uniform: 1.0, points: Vec::new() },
            q_logged: 0.0,
            q_target: 0.0,
        })
        .collect();
    let ev = evaluate(&rows, &Config { bootstrap: 50, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ev.support.heavy_rows, 0);
    assert!(!ev.warnings.iter().any(|w| w.contains("weight above")), "{:?}", ev.warnings);
}

#[test]
fn bad_targets_and_empty_input_fail_naming_the_cause() {
    let bad = Row {
        episode: 0,
        action: 0,
        pscore: 0.5,
        reward: 1.0,
        target: Dist { k: 2, uniform: 0.0, points: vec![(0, 0.7)] },
        q_logged: 0.0,
        q_target: 0.0,
    };
    let err = evaluate(&[bad], &Config::default()).err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err.contains("row 0") && err.contains("sum to 0.7"), "{err}");
    let err = evaluate(&[], &Config::default()).err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err.contains("no usable logged decision"), "{err}");
}

#[test]
fn the_bootstrap_is_reproducible_by_seed() {
    let k = 4;
    let (rows, _) = simulate(200, k, 0.5, |c| Dist::point(k, best(c, k)), 0.0);
    let cfg = Config { bootstrap: 100, ..Config::default() };
    let a = evaluate(&rows, &cfg).unwrap_or_else(|e| panic!("{e:#}"));
    let b = evaluate(&rows, &cfg).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(a, b);
    let c = evaluate(&rows, &Config { seed: 2, ..cfg }).unwrap_or_else(|e| panic!("{e:#}"));
    assert_ne!(a.get(Estimator::Ips).lo, c.get(Estimator::Ips).lo);
}

#[test]
fn sparse_distributions_match_their_dense_form() {
    let d = Dist::epsilon_greedy(4, 2, 0.2);
    let close = |a: Vec<f64>, b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
    assert!(close(d.to_dense(), &[0.05, 0.05, 0.85, 0.05]), "{:?}", d.to_dense());
    assert!((d.prob(2) - 0.85).abs() < 1e-12 && d.prob(9) == 0.0);
    d.check().unwrap_or_else(|e| panic!("{e}"));
    let m = Dist::dense(&[0.5, 0.5, 0.0, 0.0]).mixed_with_uniform(0.4);
    assert!(close(m.to_dense(), &[0.4, 0.4, 0.1, 0.1]), "{:?}", m.to_dense());
    assert!((m.mass_outside(&[0, 1]) - 0.2).abs() < 1e-12);
    assert!((d.expect(f64::from, 1.5) - (0.2 * 1.5 + 0.8 * 2.0)).abs() < 1e-12);
    assert!((quantile(&[1.0, 2.0, 3.0], 0.5) - 2.0).abs() < 1e-12);
    assert!((log_loss(&[0.5], &[1.0]) - std::f64::consts::LN_2).abs() < 1e-12);
}
