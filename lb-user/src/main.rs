//! `xlb`: the agent and its CLI.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use xlb::{
    agent::Agent,
    config::{self, DEFAULT_CONTROL_SOCKET, LoadError},
    control::{self, Request, Response},
    status,
};

/// Exit code for a rejected config (EX_USAGE-style, as sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "xlb", version, about = "An XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the data plane, attach it to the configured interfaces and stay in the foreground.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without touching the running data plane.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Listeners, targets and counters of the running agent.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
    /// Make the running agent re-read its config file (same as SIGHUP).
    Reload {
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
    },
}

fn load_config(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        match &e {
            LoadError::Invalid(errs) => {
                for err in errs {
                    eprintln!("{err}");
                }
                eprintln!(
                    "xlb: {} error(s); nothing was attached or changed",
                    errs.len()
                );
            }
            LoadError::Read { .. } => eprintln!("xlb: {e}"),
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { config } => match load_config(&config) {
            Ok(c) => {
                let targets: usize = c.target_groups.iter().map(|g| g.targets.len()).sum();
                println!(
                    "{}: ok ({} listener(s), {} target group(s), {} target(s))",
                    config.display(),
                    c.listeners.len(),
                    c.target_groups.len(),
                    targets
                );
                Ok(())
            }
            Err(code) => return code,
        },
        Cmd::Run { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match Agent::start(&config, &cfg) {
                Ok(agent) => {
                    agent
                        .serve(&cfg.control_socket, std::future::pending())
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Cmd::Status { json, socket } => match control::call(&socket, &Request::Status).await {
            Ok(Response::Status(s)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).expect("status serialises")
                    );
                } else {
                    print!("{}", status::render(&s));
                }
                Ok(())
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        },
        Cmd::Reload { socket } => match control::call(&socket, &Request::Reload).await {
            Ok(Response::Reloaded(r)) => {
                println!(
                    "reloaded: listeners +{} ~{} -{} ={}; targets +{} -{}",
                    r.listeners_added.len(),
                    r.listeners_changed.len(),
                    r.listeners_removed.len(),
                    r.listeners_unchanged.len(),
                    r.targets_added,
                    r.targets_removed
                );
                Ok(())
            }
            Ok(Response::Error { message }) => {
                eprintln!("{message}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn unexpected(r: Response) -> anyhow::Error {
    match r {
        Response::Error { message } => anyhow::anyhow!(message),
        other => anyhow::anyhow!("unexpected response from the agent: {other:?}"),
    }
}
