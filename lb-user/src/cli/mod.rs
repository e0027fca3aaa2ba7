//! The `xlb` command line: `run` and `check` work on a config file; every other verb is a
//! typed request to the running agent's control API ([`crate::api`]).
pub mod render;
pub mod target_setup;
pub mod top;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    api::{
        self, ApplyReport, GroupStatus, ListenerStatus, Message, RegisterRequest,
        client::{self, Answer},
    },
    dataplane::decap,
    model::{
        self, TargetRef,
        config::{self, DEFAULT_CONTROL_SOCKET, LoadError},
    },
};

/// Exit code for a rejected config or request (as sysexits' EX_USAGE).
pub(crate) const EXIT_REJECTED: u8 = 64;

#[derive(Parser)]
#[command(name = "xlb", version, about = "An XDP layer-4 load balancer")]
pub struct Cli {
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
    /// Source rules of listeners: list them with their counters, add or remove one at run
    /// time (kept across restarts in the state file, as runtime registrations are).
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// This balancer node in a fleet: withdraw its VIPs (drain) or announce them again.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Print the BIRD 2 configuration that announces this node's VIPs over BGP, from the
    /// config's `[bgp]` section (local_as, router_id, peers).
    BirdConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Why a flow goes where it goes: its listener, source rules, connection entry, Maglev
    /// pick and that target's state, the next hop, and the verdict of the real XDP program on
    /// a packet of the flow (run once against the live maps, so it counts as one packet).
    Explain {
        /// tcp or udp.
        protocol: String,
        /// The client: ADDRESS:PORT.
        source: String,
        /// Where it sends: VIP:PORT.
        destination: String,
        /// The TCP packet to run: syn or ack (default: SYN without an entry, else ACK).
        #[arg(long)]
        flags: Option<String>,
        /// The interface it arrives on (default: the config's first).
        #[arg(long)]
        ingress: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// A live view of the running agent: rates per listener and target, health, top drop
    /// reasons; refreshed each second, `q` quits.
    Top {
        /// Milliseconds between refreshes.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check this host for what makes a balancer silently fail (forwarding, rp_filter, XDP
    /// modes, routes to targets, MTU for tunnels, BIRD sessions, bpffs) and say how to fix
    /// each. Exits 1 when something fails.
    Doctor {
        #[arg(long, short)]
        config: PathBuf,
        /// BIRD's control socket (with [bgp]).
        #[arg(long, default_value = "/run/bird/bird.ctl")]
        bird_socket: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the running agent re-read its config file (same as SIGHUP).
    Reload {
        #[command(flatten)]
        remote: Remote,
    },
    /// On a `tunnel` target without an ipip module: strip the outer header of IP-in-IP packets
    /// to this host in XDP, before the stack sees them.
    Decap {
        #[command(subcommand)]
        cmd: DecapCmd,
    },
    /// Print (or, with --apply, run) what a DSR or tunnel target needs: the VIP on loopback,
    /// no ARP answers for it, loose reverse-path filtering, and for tunnel the decapsulation.
    TargetSetup(target_setup::Args),
}

#[derive(Subcommand)]
enum DecapCmd {
    /// Attach to IFACE, decapsulating packets to its IPv4 addresses. Stays after exit.
    Attach {
        iface: String,
        #[command(flatten)]
        pins: Pins,
    },
    /// Detach from IFACE.
    Detach {
        iface: String,
        #[command(flatten)]
        pins: Pins,
    },
    /// Interfaces with decapsulation attached, and their counters.
    Status {
        #[command(flatten)]
        pins: Pins,
    },
}

#[derive(Args, Clone)]
struct Pins {
    /// Where the attached program's link and maps are pinned (a BPF filesystem, mounted here
    /// if it is not one yet).
    #[arg(long, default_value = decap::PIN_ROOT)]
    pin_dir: PathBuf,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Withdraw every VIP of this node (BGP); keep serving what still arrives. With
    /// --stop-after, the agent stops (withdrawn, detached) that many seconds later.
    Drain {
        #[arg(long, value_name = "SECONDS")]
        stop_after: Option<u32>,
        #[command(flatten)]
        remote: Remote,
    },
    /// End a drain: announce the healthy VIPs again.
    Resume {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Every listener's rules and the packets each matched.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Add a rule: `xlb rules add web deny 198.18.66.0/24`.
    Add {
        listener: String,
        /// allow or deny
        kind: String,
        source: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a rule (from the config file's or from runtime additions).
    Remove {
        listener: String,
        kind: String,
        source: String,
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

/// Call the agent; print JSON or render the typed answer; map HTTP errors to exit codes.
async fn remote<T: DeserializeOwned>(
    r: &Remote,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
    render: impl Fn(&T) -> String,
) -> ExitCode {
    match client::call::<T>(&r.socket, method, path, body).await {
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
        Ok((Answer::Ok(v), json)) => {
            if r.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).expect("JSON prints")
                );
            } else {
                print!("{}", render(&v));
            }
            ExitCode::SUCCESS
        }
        Ok((Answer::Refused { status, error }, _)) => {
            if r.json {
                println!("{}", serde_json::json!({"error": error, "status": status}));
            }
            eprintln!("xlb: {error}");
            ExitCode::from(if status == 500 { 1 } else { EXIT_REJECTED })
        }
    }
}

fn message(m: &Message) -> String {
    format!("{}\n", m.message)
}

/// A target as the user wrote it, checked before anything is sent.
fn target_ref(target: &str) -> Result<TargetRef, ExitCode> {
    target.parse().map_err(|e: model::ModelError| {
        eprintln!("xlb: {e}");
        ExitCode::from(EXIT_REJECTED)
    })
}

const NO_BODY: Option<&()> = None;

/// `xlb rules add|remove`: the rule checked here first, then sent.
async fn rule_change(
    r: &Remote,
    method: &str,
    listener: &str,
    kind: String,
    source: String,
) -> ExitCode {
    let body = api::RuleRequest { kind, source };
    if let Err(e) = body.rule() {
        eprintln!("xlb: {e}");
        return ExitCode::from(EXIT_REJECTED);
    }
    remote(r, method, &api::rules_path(listener), Some(&body), message).await
}

/// Parse the command line and run it.
pub async fn main() -> ExitCode {
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
            match crate::agent::run(&config, cfg, std::future::pending()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xlb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { remote: r } => remote(&r, "GET", api::STATUS, NO_BODY, render::render).await,
        Cmd::Listeners { remote: r } => {
            remote(
                &r,
                "GET",
                api::LISTENERS,
                NO_BODY,
                |l: &Vec<ListenerStatus>| {
                    let mut o = String::new();
                    render::render_listeners(&mut o, l);
                    o
                },
            )
            .await
        }
        Cmd::Explain {
            protocol,
            source,
            destination,
            flags,
            ingress,
            remote: r,
        } => {
            let body = api::ExplainRequest {
                protocol,
                source,
                destination,
                flags,
                ingress,
            };
            remote(&r, "POST", api::EXPLAIN, Some(&body), render::explanation).await
        }
        Cmd::Top {
            interval_ms,
            remote: r,
        } => match top::run(
            &r.socket,
            std::time::Duration::from_millis(interval_ms.max(100)),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xlb: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Doctor {
            config,
            bird_socket,
            remote: r,
        } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // The running agent's interfaces, when it answers.
            let attached =
                match client::call::<api::Status>(&r.socket, "GET", api::STATUS, NO_BODY).await {
                    Ok((Answer::Ok(s), _)) => Some(
                        s.interfaces
                            .into_iter()
                            .map(|i| (i.name, i.mode))
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                };
            let host = crate::doctor::RealHost { bird_socket };
            let findings = crate::doctor::diagnose(&cfg, &host, attached.as_deref());
            if r.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&findings).expect("JSON prints")
                );
            } else {
                print!("{}", crate::doctor::render(&findings));
            }
            if findings
                .iter()
                .any(|f| f.level == crate::doctor::Level::Fail)
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Cmd::Node { cmd } => match cmd {
            NodeCmd::Drain {
                stop_after,
                remote: r,
            } => {
                let body = api::DrainRequest {
                    stop_after_s: stop_after,
                };
                remote(&r, "POST", api::NODE_DRAIN, Some(&body), message).await
            }
            NodeCmd::Resume { remote: r } => {
                remote(&r, "POST", api::NODE_RESUME, NO_BODY, message).await
            }
        },
        Cmd::BirdConfig { config } => match load_config(&config) {
            Ok(c) => {
                let Some(bgp) = &c.bgp else {
                    eprintln!("xlb: {}: no [bgp] section", config.display());
                    return ExitCode::from(EXIT_REJECTED);
                };
                match crate::announce::bird_config(bgp, &config.display().to_string()) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("xlb: {}: {e}", config.display());
                        ExitCode::from(EXIT_REJECTED)
                    }
                }
            }
            Err(code) => code,
        },
        Cmd::Reload { remote: r } => {
            remote(&r, "POST", api::RELOAD, NO_BODY, |a: &ApplyReport| {
                render::reload(a)
            })
            .await
        }
        Cmd::Rules { cmd } => match cmd {
            RulesCmd::List { remote: r } => {
                remote(
                    &r,
                    "GET",
                    api::LISTENERS,
                    NO_BODY,
                    |l: &Vec<ListenerStatus>| {
                        let mut o = String::new();
                        render::render_rules(&mut o, l);
                        if o.is_empty() {
                            o.push_str("no source rules: every listener takes every source\n");
                        }
                        o
                    },
                )
                .await
            }
            RulesCmd::Add {
                listener,
                kind,
                source,
                remote: r,
            } => rule_change(&r, "POST", &listener, kind, source).await,
            RulesCmd::Remove {
                listener,
                kind,
                source,
                remote: r,
            } => rule_change(&r, "DELETE", &listener, kind, source).await,
        },
        Cmd::Decap { cmd } => decap_cmd(cmd),
        Cmd::TargetSetup(args) => target_setup::run(&args),
        Cmd::Targets { cmd } => match cmd {
            TargetsCmd::Register {
                group,
                target,
                weight,
                remote: r,
            } => {
                let t = match target_ref(&target) {
                    Ok(t) => t,
                    Err(code) => return code,
                };
                if let Err(e) = model::weight(weight) {
                    eprintln!("xlb: {e}");
                    return ExitCode::from(EXIT_REJECTED);
                }
                let body = RegisterRequest::new(t, weight);
                remote(&r, "POST", &api::targets_path(&group), Some(&body), message).await
            }
            TargetsCmd::Deregister {
                group,
                target,
                remote: r,
            } => match target_ref(&target) {
                Ok(_) => {
                    let path = api::target_path(&group, &target);
                    remote(&r, "DELETE", &path, NO_BODY, message).await
                }
                Err(code) => code,
            },
            TargetsCmd::Health { group, remote: r } => {
                let path = match &group {
                    Some(g) => api::group_path(g),
                    None => api::TARGET_GROUPS.to_owned(),
                };
                remote(&r, "GET", &path, NO_BODY, |g: &Vec<GroupStatus>| {
                    let mut o = String::new();
                    render::render_groups(&mut o, g);
                    o
                })
                .await
            }
        },
    }
}

fn decap_cmd(cmd: DecapCmd) -> ExitCode {
    let result = match cmd {
        DecapCmd::Attach { iface, pins } => {
            decap::attach(&pins.pin_dir, &iface).map(|(mode, addrs)| {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!(
                    "{iface}: decapsulating IP-in-IP to {} ({} mode); pinned under {}",
                    list.join(", "),
                    mode.as_str(),
                    decap::pin_dir(&pins.pin_dir, &iface).display()
                );
            })
        }
        DecapCmd::Detach { iface, pins } => decap::detach_pinned(&pins.pin_dir, &iface)
            .map(|()| println!("{iface}: decapsulation detached")),
        DecapCmd::Status { pins } => decap::status(&pins.pin_dir).map(|all| {
            if all.is_empty() {
                println!("decapsulation is attached nowhere");
            }
            for (iface, counters) in all {
                println!("{iface}:");
                for (s, n) in counters {
                    println!("  {:<18} {n:>12}", s.label());
                }
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e}");
            ExitCode::FAILURE
        }
    }
}
