//! `trellis-agent run` (the node agent), `flows` (its flow log) and `operator` (the IPAM operator).

use std::process::ExitCode;

use trellis_agent::cli::{self, Command, PROGRAM, RunConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let command = match cli::parse(std::env::args().skip(1).collect()) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("{PROGRAM}: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match command {
        Command::Help(usage) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Command::Operator(options) => trellis_ipam::operator::run(options, PROGRAM).await,
        Command::Flows { server, query } => {
            let mut stdout = std::io::stdout();
            cli::fetch_flows(server, &query, |chunk| {
                // A closed pipe (`| head`) ends the output; nothing to report.
                let _ = std::io::Write::write_all(&mut stdout, chunk).and_then(|()| std::io::Write::flush(&mut stdout));
            })
            .await
        }
        Command::Run => {
            let config = match RunConfig::from_env(|name| std::env::var(name).ok()) {
                Ok(config) => config,
                Err(problems) => {
                    eprintln!("{PROGRAM}: invalid configuration:\n  {}", problems.join("\n  "));
                    return ExitCode::from(2);
                }
            };
            tracing_subscriber::fmt().json().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
            cli::run(config).await
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{PROGRAM}: {error}");
            ExitCode::FAILURE
        }
    }
}
