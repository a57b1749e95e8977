//! Dispatches a parsed command line to its command module.

use std::io::Write;

use time::OffsetDateTime;

use crate::cli::{Cli, Command};
use crate::cmd::{self, Ctx};
use crate::config::Source;
use crate::error::Error;
use crate::output::Style;

/// Runs `cli` with configuration from `env`, writing to stdout.
pub fn run(cli: Cli, env: &dyn Source) -> Result<(), Error> {
    let ctx = Ctx {
        env,
        timeout: cli.timeout,
        style: Style::detect(env),
        now: OffsetDateTime::now_utc(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = dispatch(&cli.command, &ctx, &mut out);
    out.flush()?;
    result
}

/// Runs `command` (what `run` does once the context is built; tests pass their own).
pub fn dispatch(command: &Command, ctx: &Ctx<'_>, out: &mut dyn Write) -> Result<(), Error> {
    match command {
        Command::ZtunnelConfig(a) => cmd::ztunnel_config::run(a, ctx, out),
        Command::Check(a) => cmd::check::run(a, ctx, out),
        Command::Stat(a) => cmd::stat::run(a, ctx, out),
        Command::Local(a) => cmd::local::run(a, out),
        Command::Tap(a) => cmd::tap::run(a, ctx, out),
        Command::Waypoint(a) => cmd::waypoint::run(a, ctx, out),
        Command::Describe(a) => cmd::describe::run(a, ctx, out),
    }
}
