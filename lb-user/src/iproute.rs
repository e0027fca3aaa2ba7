//! What the agent and the CLI ask of iproute2's `ip`, which every host that runs xlb has:
//! policy rules and routes for data-path probes, the VIP on a target's loopback.

/// Run `ip` with `cmd`'s words (addresses, numbers and interface names: no quoting needed);
/// the error carries what `ip` said.
pub fn ip(cmd: &str) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(cmd.split_whitespace())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip`'s standard output for `cmd`.
pub fn ip_output(cmd: &str) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(cmd.split_whitespace())
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
