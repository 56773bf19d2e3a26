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

/// Defaults that replace those of a command's arguments, chosen from a first parse of the
/// command line (a preset flag): `(argument id, value)` pairs.
pub type Defaults = fn(&clap::ArgMatches) -> Vec<(&'static str, &'static str)>;

/// `command` with the default value of every argument named in `defaults` replaced, its
/// subcommands' included.
fn with_defaults(command: clap::Command, defaults: &[(&'static str, &'static str)]) -> clap::Command {
    command
        .mut_args(|arg| match defaults.iter().find(|(id, _)| arg.get_id() == *id) {
            Some((_, value)) => arg.default_value(*value),
            None => arg,
        })
        .mut_subcommands(|sub| with_defaults(sub, defaults))
}

/// Parses `args` with `command` twice: once to learn which defaults `defaults` picks (a preset),
/// then again with those defaults in place. A value given by flag or environment variable
/// still wins over the preset's, since clap takes a default only where neither is given.
fn parse_layered<T: clap::Parser>(
    command: impl Fn() -> clap::Command,
    args: Vec<OsString>,
    defaults: Defaults,
) -> Result<T, clap::Error> {
    let first = command().try_get_matches_from(args.clone())?;
    let chosen = defaults(&first);
    let mut matches =
        if chosen.is_empty() { first } else { with_defaults(command(), &chosen).try_get_matches_from(args)? };
    T::from_arg_matches_mut(&mut matches)
}

/// `T::parse()` for a service's `main`, with the defaults `defaults` picks (a preset) in place:
/// exits with clap's message and status on bad flags, `--help` or `--version`.
pub fn parse_with<T: clap::Parser>(defaults: Defaults) -> T {
    parse_layered(T::command, std::env::args_os().collect(), defaults).unwrap_or_else(|e| e.exit())
}

/// [`try_parse_flags`] with the defaults `defaults` picks (a preset) in place.
pub fn try_parse_flags_with<T: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    defaults: Defaults,
) -> Result<T, clap::Error> {
    parse_layered(|| without_env(T::command()), args.into_iter().map(Into::into).collect(), defaults)
}
