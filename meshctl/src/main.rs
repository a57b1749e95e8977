//! meshctl binary: parse the command line, run the command, exit with a code scripts can trust
//! (0 ok, 1 check failed, 2 usage, 3 a component unreachable or answering nonsense).

use clap::Parser;
use meshctl::cli::Cli;
use meshctl::config::ProcessEnv;
use meshctl::error::Error;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help and version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let code = match meshctl::app::run(cli, &ProcessEnv) {
        Ok(()) => 0,
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            if !e.is_silent() {
                eprintln!("meshctl: {e}");
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}
