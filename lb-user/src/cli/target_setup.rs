//! `xlb target-setup`: what a target of a `dsr` or `tunnel` listener needs, the field's most
//! reported DSR problem made one command. It prints the commands; `--apply` runs them and
//! records what was there before, and `--undo` puts that back.
//!
//! - the VIP on the loopback (`ip addr add VIP/32 dev lo`, `/128` for IPv6): the target
//!   accepts packets to it;
//! - `arp_ignore=1`, `arp_announce=2` (all interfaces): it does not answer ARP for the VIP,
//!   which would steal the VIP from the balancer on a shared segment, nor use it as an ARP
//!   source;
//! - `rp_filter=2` (loose, all interfaces): packets arrive with the client's source on an
//!   interface the reply may not leave by;
//! - `tunnel` only: `xlb decap attach IFACE` (or the kernel's ipip device, where it exists).
//!
//! An IPv6 VIP needs the VIP on the loopback (and, `tunnel`, decapsulation) alone: Linux
//! answers neighbour solicitations only for addresses of the interface asked, and IPv6 has no
//! reverse-path filter sysctl.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::decap,
    iproute::{ip, ip_output},
};

/// Where `--apply` records what `--undo` restores, unless `--record` says otherwise.
const DEFAULT_RECORD_DIR: &str = "/run/xlb";

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The listener's VIP.
    #[arg(long)]
    vip: IpAddr,
    /// The listener's mode.
    #[arg(long, value_parser = ["dsr", "tunnel"])]
    mode: String,
    /// The interface tunnelled packets arrive on (tunnel mode: where decapsulation attaches).
    #[arg(long)]
    iface: Option<String>,
    /// Run the commands (and record what was there before).
    #[arg(long, conflicts_with = "undo")]
    apply: bool,
    /// Put back what --apply changed.
    #[arg(long)]
    undo: bool,
    /// The record --apply writes and --undo reads (default /run/xlb/target-setup-VIP.json).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Where decapsulation pins its program (see `xlb decap`).
    #[arg(long, default_value = decap::PIN_ROOT)]
    pin_dir: PathBuf,
}

/// One change, with how to see it done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Step {
    Sysctl { key: String, value: String },
    VipOnLoopback { vip: IpAddr },
    Decap { iface: String },
}

/// What `--apply` found before each change.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// (key, value before)
    sysctls: Vec<(String, String)>,
    /// The VIP was added (not there before).
    vip_added: Option<IpAddr>,
    /// Decapsulation was attached to this interface.
    decap: Option<String>,
}

fn steps(a: &Args) -> Result<Vec<Step>, String> {
    if a.vip.is_ipv6() {
        let mut s = vec![Step::VipOnLoopback { vip: a.vip }];
        if a.mode == "tunnel" {
            let iface = a.iface.clone().ok_or(
                "--mode tunnel needs --iface IFACE: the interface tunnelled packets arrive on",
            )?;
            s.push(Step::Decap { iface });
        }
        return Ok(s);
    }
    let mut s = vec![
        Step::VipOnLoopback { vip: a.vip },
        Step::Sysctl {
            key: "net.ipv4.conf.all.arp_ignore".into(),
            value: "1".into(),
        },
        Step::Sysctl {
            key: "net.ipv4.conf.all.arp_announce".into(),
            value: "2".into(),
        },
        Step::Sysctl {
            key: "net.ipv4.conf.all.rp_filter".into(),
            value: "2".into(),
        },
    ];
    if a.mode == "tunnel" {
        let iface = a.iface.clone().ok_or(
            "--mode tunnel needs --iface IFACE: the interface tunnelled packets arrive on",
        )?;
        s.push(Step::Sysctl {
            key: format!("net.ipv4.conf.{iface}.rp_filter"),
            value: "2".into(),
        });
        s.push(Step::Decap { iface });
    }
    Ok(s)
}

fn command_of(s: &Step) -> String {
    match s {
        Step::Sysctl { key, value } => format!("sysctl -w {key}={value}"),
        Step::VipOnLoopback { vip } => {
            format!("ip {} addr add {vip}/{} dev lo", fam(*vip), host_len(*vip))
        }
        Step::Decap { iface } => format!(
            "xlb decap attach {iface}    # or, where the kernel has them: ip link add xlb-ipip type ipip (IPv4 outer), ip link add xlb-ip6tnl type ip6tnl mode any (IPv6 outer); ip link set ... up"
        ),
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Result<String, String> {
    std::fs::read_to_string(sysctl_path(key))
        .map(|v| v.trim().to_owned())
        .map_err(|e| format!("reading {key}: {e}"))
}

fn write_sysctl(key: &str, value: &str) -> Result<(), String> {
    std::fs::write(sysctl_path(key), value).map_err(|e| format!("setting {key}={value}: {e}"))
}

/// `ip`'s family flag for `a`.
fn fam(a: IpAddr) -> &'static str {
    if a.is_ipv6() { "-6" } else { "-4" }
}

/// Prefix length of a single address of `a`'s family.
fn host_len(a: IpAddr) -> u8 {
    if a.is_ipv6() { 128 } else { 32 }
}

fn vip_on_loopback(vip: IpAddr) -> Result<bool, String> {
    Ok(ip_output(&format!("-o {} addr show dev lo", fam(vip)))?.contains(&format!(" {vip}/")))
}

fn record_path(a: &Args) -> PathBuf {
    a.record.clone().unwrap_or_else(|| {
        Path::new(DEFAULT_RECORD_DIR).join(format!("target-setup-{}.json", a.vip))
    })
}

/// Run the steps, recording as it goes; on a failure, undo what was done and say why.
fn apply(a: &Args, steps: &[Step]) -> Result<Record, String> {
    let path = record_path(a);
    if path.exists() {
        return Err(format!(
            "{} exists: this target is already set up for {} (run --undo first)",
            path.display(),
            a.vip
        ));
    }
    let mut rec = Record::default();
    for s in steps {
        let done = match s {
            Step::Sysctl { key, value } => read_sysctl(key).and_then(|before| {
                write_sysctl(key, value)?;
                rec.sysctls.push((key.clone(), before));
                Ok(())
            }),
            Step::VipOnLoopback { vip } => vip_on_loopback(*vip).and_then(|there| {
                if !there {
                    ip(&format!(
                        "{} addr add {vip}/{} dev lo",
                        fam(*vip),
                        host_len(*vip)
                    ))?;
                    rec.vip_added = Some(*vip);
                }
                Ok(())
            }),
            Step::Decap { iface } => match decap::attach(&a.pin_dir, iface) {
                Ok(_) => {
                    rec.decap = Some(iface.clone());
                    Ok(())
                }
                // Set up for another VIP already (one program decapsulates for all): kept,
                // and left to that VIP's --undo.
                Err(decap::DecapError::AlreadyAttached(_)) => {
                    println!("kept: decapsulation already attached to {iface}");
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(e) = done {
            let _ = undo_record(a, &rec);
            return Err(format!("{e}; what was already changed is undone"));
        }
        println!("done: {}", command_of(s));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&rec).expect("record serialises");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(rec)
}

fn undo_record(a: &Args, rec: &Record) -> Result<(), String> {
    let mut errors = Vec::new();
    if let Some(iface) = &rec.decap
        && let Err(e) = decap::detach_pinned(&a.pin_dir, iface)
    {
        errors.push(e.to_string());
    }
    for (key, before) in rec.sysctls.iter().rev() {
        if let Err(e) = write_sysctl(key, before) {
            errors.push(e);
        }
    }
    if let Some(vip) = rec.vip_added
        && let Err(e) = ip(&format!(
            "{} addr del {vip}/{} dev lo",
            fam(vip),
            host_len(vip)
        ))
    {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

pub fn run(a: &Args) -> ExitCode {
    let steps = match steps(a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xlb: {e}");
            return ExitCode::from(super::EXIT_REJECTED);
        }
    };
    let result = if a.undo {
        let path = record_path(a);
        std::fs::read(&path)
            .map_err(|e| format!("{}: {e} (nothing to undo?)", path.display()))
            .and_then(|b| {
                serde_json::from_slice::<Record>(&b)
                    .map_err(|e| format!("{} is not a target-setup record: {e}", path.display()))
            })
            .and_then(|rec| {
                undo_record(a, &rec)?;
                std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                println!("undone: {} restored as it was", a.vip);
                Ok(())
            })
    } else if a.apply {
        apply(a, &steps).map(|_| ())
    } else {
        println!("# On each target of a {} listener on {}:", a.mode, a.vip);
        for s in &steps {
            println!("{}", command_of(s));
        }
        println!("# (xlb target-setup ... --apply runs these; --undo puts everything back)");
        Ok(())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(vip: &str, mode: &str) -> Args {
        Args {
            vip: vip.parse().unwrap(),
            mode: mode.into(),
            iface: Some("eth0".into()),
            apply: false,
            undo: false,
            record: None,
            pin_dir: decap::PIN_ROOT.into(),
        }
    }

    #[test]
    fn an_ipv6_target_needs_the_vip_on_lo_and_for_a_tunnel_decapsulation() {
        let s = steps(&args("2001:db8:100::12", "dsr")).unwrap();
        let cmds: Vec<String> = s.iter().map(command_of).collect();
        assert_eq!(cmds, ["ip -6 addr add 2001:db8:100::12/128 dev lo"]);
        let t: Vec<String> = steps(&args("2001:db8:100::12", "tunnel"))
            .unwrap()
            .iter()
            .map(command_of)
            .collect();
        assert_eq!(t.len(), 2);
        assert!(t[1].starts_with("xlb decap attach eth0"), "{t:?}");
        let v4: Vec<String> = steps(&args("198.18.100.20", "dsr"))
            .unwrap()
            .iter()
            .map(command_of)
            .collect();
        assert_eq!(v4[0], "ip -4 addr add 198.18.100.20/32 dev lo");
        assert!(v4.iter().any(|c| c.contains("arp_ignore=1")));
    }
}
