//! `xlb`: the agent and its CLI.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use xlb::{
    agent::Agent,
    config::{self, DEFAULT_CONTROL_SOCKET, LoadError},
    control::{self, parse_target},
    status::{self, GroupStatus, ListenerStatus, Status},
};

/// Exit code for a rejected config or request (as sysexits' EX_USAGE).
const EXIT_REJECTED: u8 = 64;

#[derive(Parser)]
#[command(name = "xlb", version, about = "An XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Remote {
    /// The running agent's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    /// Listeners, target groups and counters of the running agent.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// Listeners and their counters.
    Listeners {
        #[command(flatten)]
        remote: Remote,
    },
    /// Register, deregister, and see the health of targets.
    Targets {
        #[command(subcommand)]
        cmd: TargetsCmd,
    },
    /// Make the running agent re-read its config file (same as SIGHUP).
    Reload {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum TargetsCmd {
    /// Add ADDR[:PORT] to GROUP (the group's port if none). Kept across restarts.
    Register {
        group: String,
        target: String,
        #[arg(long)]
        weight: Option<u32>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Take ADDR[:PORT] out of GROUP: no new flows; established ones drain for the group's
    /// deregistration delay.
    Deregister {
        group: String,
        target: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// States and reasons of every target (of GROUP only, if given).
    Health {
        group: Option<String>,
        #[command(flatten)]
        remote: Remote,
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
        ExitCode::from(EXIT_REJECTED)
    })
}

/// Call the agent; print JSON or render the body; map HTTP errors to exit codes.
async fn remote(
    r: &Remote,
    method: &str,
    path: &str,
    body: Option<Value>,
    render: impl Fn(Value) -> anyhow::Result<String>,
) -> ExitCode {
    match control::call(&r.socket, method, path, body).await {
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
        Ok((code, v)) if (200..300).contains(&code) => {
            if r.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("JSON prints"));
            } else {
                match render(v) {
                    Ok(text) => print!("{text}"),
                    Err(e) => {
                        eprintln!("xlb: unexpected answer from the agent: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Ok((code, v)) => {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            if r.json {
                println!("{}", json!({"error": msg, "status": code}));
            }
            eprintln!("xlb: {msg}");
            ExitCode::from(if code == 500 { 1 } else { EXIT_REJECTED })
        }
    }
}

fn message(v: Value) -> anyhow::Result<String> {
    Ok(format!("{}\n", v["message"].as_str().unwrap_or_default()))
}

fn target_path(group: &str, target: &str) -> Result<String, ExitCode> {
    parse_target(target)
        .map(|_| format!("/v1/target-groups/{group}/targets/{target}"))
        .map_err(|e| {
            eprintln!("xlb: {e}");
            ExitCode::from(EXIT_REJECTED)
        })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().cmd {
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
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let result = match Agent::start(&config, cfg) {
                Ok(agent) => agent.serve(std::future::pending()).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xlb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { remote: r } => {
            remote(&r, "GET", "/v1/status", None, |v| {
                Ok(status::render(&serde_json::from_value::<Status>(v)?))
            })
            .await
        }
        Cmd::Listeners { remote: r } => {
            remote(&r, "GET", "/v1/listeners", None, |v| {
                let mut o = String::new();
                status::render_listeners(
                    &mut o,
                    &serde_json::from_value::<Vec<ListenerStatus>>(v)?,
                );
                Ok(o)
            })
            .await
        }
        Cmd::Reload { remote: r } => {
            remote(&r, "POST", "/v1/reload", None, |v| {
                let n = |k: &str| v[k].as_array().map(Vec::len).unwrap_or(0);
                Ok(format!(
                    "reloaded: listeners +{} ~{} -{} ={}; targets +{} -{}\n",
                    n("listeners_added"),
                    n("listeners_changed"),
                    n("listeners_removed"),
                    n("listeners_unchanged"),
                    v["targets_added"],
                    v["targets_removed"]
                ))
            })
            .await
        }
        Cmd::Targets { cmd } => match cmd {
            TargetsCmd::Register {
                group,
                target,
                weight,
                remote: r,
            } => {
                let body = json!({ "address": target, "weight": weight });
                remote(
                    &r,
                    "POST",
                    &format!("/v1/target-groups/{group}/targets"),
                    Some(body),
                    message,
                )
                .await
            }
            TargetsCmd::Deregister {
                group,
                target,
                remote: r,
            } => match target_path(&group, &target) {
                Ok(path) => remote(&r, "DELETE", &path, None, message).await,
                Err(code) => code,
            },
            TargetsCmd::Health { group, remote: r } => {
                let path = match &group {
                    Some(g) => format!("/v1/target-groups/{g}"),
                    None => "/v1/target-groups".to_owned(),
                };
                remote(&r, "GET", &path, None, |v| {
                    let mut o = String::new();
                    status::render_groups(&mut o, &serde_json::from_value::<Vec<GroupStatus>>(v)?);
                    Ok(o)
                })
                .await
            }
        },
    }
}
