//! istiod-lite binary: parse the command line, set up logging, run [`istiod_lite::app`].

use istiod_lite::config::{self, Command, ConfigError};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match config::parse(&args, &config::ProcessEnv) {
        Ok(c) => c,
        Err(ConfigError::Help) => {
            print!("{}", config::USAGE);
            return Ok(());
        }
        Err(e) => {
            eprintln!("istiod-lite: {e}");
            std::process::exit(2);
        }
    };
    match cmd {
        Command::NodeToken { state_dir, node } => {
            let tokens = istiod_lite::auth::NodeTokens::load_or_create(&state_dir)?;
            println!("{}", tokens.token_for(&node));
            Ok(())
        }
        Command::WaypointToken {
            state_dir,
            namespace,
            gateway,
        } => {
            let tokens = istiod_lite::auth::NodeTokens::load_or_create(&state_dir)?;
            let p = istiod_lite::auth::Principal::Waypoint {
                namespace,
                name: gateway,
            };
            println!("{}", tokens.token_for_principal(&p));
            Ok(())
        }
        Command::Serve(cfg) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .init();
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(istiod_lite::app::run(*cfg)));
            if let Err(e) = result {
                // The cause chain is what an operator needs; skip anyhow's backtrace dump.
                tracing::error!("fatal: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
