//! Command-line parsing helpers shared by the services and their tests.

use std::ffi::OsString;

/// `command` with no environment-variable fallback on any argument, its subcommands' included.
pub fn without_env(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| arg.env(None::<&str>)).mut_subcommands(without_env)
}

/// Parses `args` (the program name first) into `T` as `T::try_parse_from` would, except that
/// no argument falls back on an environment variable: clap reads `env = "..."` fallbacks from
/// the process environment, where they would pick up whatever the developer's shell exports
/// (`DQN_NET=lstm`, `EPISODES=7`). clap 4.6 has no setting that turns env lookups off for one
/// parse, so the command is rebuilt with every `env` removed, then matched.
pub fn try_parse_flags<T: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<T, clap::Error> {
    let mut matches = without_env(T::command()).try_get_matches_from(args)?;
    T::from_arg_matches_mut(&mut matches)
}

/// [`try_parse_flags`], panicking with clap's message on bad flags.
pub fn parse_flags<T: clap::Parser>(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> T {
    try_parse_flags(args).unwrap_or_else(|e| panic!("bad flags: {e}"))
}
