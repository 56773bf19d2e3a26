//! The configs the test helpers build depend on their flags only: a variable the developer's
//! shell exports (`DQN_NET=lstm`, `EPISODES=7`, ...) would otherwise reach them through clap's
//! `env = "..."` fallbacks. Checked in two child processes of this test binary, one with such
//! variables set and one without: the helpers build the same configs in both, while clap's own
//! parse, in the same child, does pick the variables up (so they did reach it). No stack needed.

use std::path::Path;

use streamrec_tests::{agent_run_args, env_run_args, parse_flags};

/// Set in a child: the file it writes its configs to.
const PROBE_OUT: &str = "STREAMREC_CONFIG_PROBE_OUT";

/// Variables a developer's shell may export, each of which some flag falls back on.
const STRAY: [(&str, &str); 10] = [
    ("DQN_NET", "lstm"),
    ("DQN_HIDDEN", "7,7"),
    ("CHECKPOINT_DIR", "/nonexistent/checkpoints"),
    ("EPISODES", "7"),
    ("CONCURRENCY", "3"),
    ("ENV_KIND", "recogym"),
    ("AGENT_POLICY", "dqn"),
    ("AGENT_GROUP_ID", "stray"),
    ("STATE_TOPIC", "stray_state"),
    // With ENV_KIND=recogym above, the topics resolve from the RecoGym variables.
    ("RECOGYM_STATE_TOPIC", "stray_state"),
];

#[derive(Debug, clap::Parser)]
struct SimCli {
    #[command(flatten)]
    dataset: fashion::DatasetArgs,
    #[command(flatten)]
    episodes: env_svc::config::EpisodeArgs,
    #[command(flatten)]
    agent: agent_svc::AgentArgs,
}

#[derive(Debug, clap::Parser)]
struct EnvCli {
    #[command(flatten)]
    run: env_svc::config::RunArgs,
}

/// The configs as the helpers build them (defaults only, so that every fallback is in play),
/// then as clap alone builds the env's, one per line.
fn describe_configs() -> String {
    use clap::Parser;
    let none: &[&str] = &[];
    // The topics as the services resolve them (flag, else the environment's variable).
    let (env, agent) = (env_run_args(none), agent_run_args(none));
    let helpers = [
        format!("{env:?} {:?}", env.stack.topics()),
        format!("{agent:?} {:?}", agent.stack.topics()),
        format!("{:?}", parse_flags::<SimCli>(["sim"])),
    ];
    let run = EnvCli::parse_from(["env-svc"]).run;
    let clap = format!("{run:?} {:?}", run.stack.topics());
    format!("helpers {}\nclap {clap}\n", helpers.join(" "))
}

/// Runs this test in a child process with a cleared environment plus `vars`; returns what it
/// wrote.
fn probe(vars: &[(&str, &str)], out: &Path) -> String {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let child = streamrec_tests::clean_command(exe)
        .args(["configs_built_by_the_helpers_ignore_the_environment", "--exact", "--quiet", "--test-threads=1"])
        .envs(vars.iter().copied())
        .env(PROBE_OUT, out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the child: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&child.stdout), String::from_utf8_lossy(&child.stderr));
    assert!(child.status.success(), "the child failed: {}\n{text}", child.status);
    std::fs::read_to_string(out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
}

#[test]
fn configs_built_by_the_helpers_ignore_the_environment() {
    if let Some(out) = std::env::var_os(PROBE_OUT) {
        // The child: write the configs and stop.
        std::fs::write(&out, describe_configs()).unwrap_or_else(|e| panic!("{e}"));
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let clean = probe(&[], &dir.path().join("clean.txt"));
    let stray = probe(&STRAY, &dir.path().join("stray.txt"));
    let line = |text: &str, prefix: &str| -> String {
        text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_string).unwrap_or_default()
    };
    // The variables reached the child: clap alone reads them.
    let (clap_clean, clap_stray) = (line(&clean, "clap "), line(&stray, "clap "));
    assert_ne!(clap_clean, clap_stray);
    assert!(clap_stray.contains("episodes: 7") && clap_stray.contains("\"stray_state\""), "{clap_stray}");
    // The helpers did not.
    let (helpers_clean, helpers_stray) = (line(&clean, "helpers "), line(&stray, "helpers "));
    assert!(helpers_clean.contains("episodes: "), "{helpers_clean}");
    assert_eq!(helpers_clean, helpers_stray, "a helper built a config from the environment");
    for shown in
        ["episodes: 7,", "concurrency: 3,", "dqn_hidden: [7, 7]", "\"stray_state\"", "\"stray\"", "/nonexistent"]
    {
        assert!(!helpers_stray.contains(shown), "{shown} shows in a helper's config: {helpers_stray}");
    }
}
