//! Prometheus metrics with a real Prometheus: the agent on the demo rig serves `/metrics`
//! (`metrics = "127.0.0.1:9469"`), `promtool check metrics` accepts what it serves, and a
//! Prometheus server scraping it every second answers a query with the new flows curl made.
mod common;

use std::time::{Duration, Instant};

use common::Env;
use xlb_rig::Setup;

const METRICS: &str = "127.0.0.1:9469";
const PROMETHEUS: &str = "127.0.0.1:9090";

fn setup() -> Setup {
    Setup {
        interval_s: 1,
        ..Setup::demo(&[1, 2])
    }
}

/// `curl URL` from the balancer's namespace (where the agent and Prometheus listen).
fn curl_lb(env: &Env, url: &str) -> String {
    let out = env
        .rig
        .lb
        .command("curl")
        .args(["-s", "-m", "5", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_real_prometheus_scrapes_the_agent_and_promtool_accepts_the_metrics() {
    let mut env = Env::start("metrics", 2, &setup());
    // Restart the agent with the metrics endpoint on.
    assert!(env.rig.stop("xlb").unwrap().success());
    let config = format!(
        "metrics = \"{METRICS}\"\n{}",
        env.rig.config(&env.socket, &setup())
    );
    std::fs::write(&env.config, config).unwrap();
    env.start_agent();
    let names = env.curls(12);
    assert!(names.iter().all(|n| n.starts_with("backend-")));

    let text = curl_lb(&env, &format!("http://{METRICS}/metrics"));
    for needle in [
        "xlb_listener_new_flows_total{listener=\"web\"} 12",
        "xlb_listener_bytes_total{listener=\"web\",direction=\"to_target\"}",
        "xlb_target_state{group=\"web\",target=\"198.18.1.2:8080\",state=\"healthy\"} 1",
        "xlb_target_state{group=\"web\",target=\"198.18.1.2:8080\",state=\"unhealthy\"} 0",
        "xlb_packets_total{reason=\"fwd_redirect\",kind=\"forward\"}",
        "xlb_group_fail_open{group=\"web\"} 0",
        // Without an OpenMetrics Accept header: the Prometheus text format.
        "# TYPE xlb_listener_new_flows_total counter",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    // The last health check of each target took a measured, short time.
    let check: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "xlb_target_check_duration_seconds{group=\"web\",target=\"198.18.1.2:8080\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no check duration in\n{text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(check > 0.0 && check < 1.0, "check took {check} s");
    // The connection table holds the 12 flows (their entries outlive the connections).
    let flows: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("xlb_connection_table_entries{table=\"flows\"} "))
        .unwrap_or_else(|| panic!("no flows occupancy in\n{text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(flows >= 12, "{flows} entries for 12 connections");
    assert!(
        text.contains("xlb_connection_table_capacity{table=\"embryonic\"} "),
        "{text}"
    );
    // What Prometheus asks for: OpenMetrics, the crate's own output.
    let out = env
        .rig
        .lb
        .command("curl")
        .args([
            "-s",
            "-H",
            "Accept: application/openmetrics-text; version=1.0.0",
        ])
        .arg(format!("http://{METRICS}/metrics"))
        .output()
        .unwrap();
    let om = String::from_utf8(out.stdout).unwrap();
    assert!(om.contains("# TYPE xlb_listener_new_flows counter"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    // promtool's lint: names, types, units, help.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_input(text.as_bytes());
    let out = check.take().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus, scraping every second.
    let dir = env.dir.0.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: xlb\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"
        ),
    )
    .unwrap();
    let mut cmd = env.rig.lb.command("prometheus");
    cmd.arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"));
    env.rig
        .spawn_until("prometheus", cmd, "Server is ready to receive web requests")
        .unwrap();
    env.curls(8);
    // The query answers 20 new flows once a scrape after the curls has landed.
    let query = format!(
        "http://{PROMETHEUS}/api/v1/query?query=xlb_listener_new_flows_total%7Blistener%3D%22web%22%7D"
    );
    let start = Instant::now();
    loop {
        let answer: serde_json::Value =
            serde_json::from_str(&curl_lb(&env, &query)).expect("Prometheus answers JSON");
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned);
        if value.as_deref() == Some("20") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "Prometheus still says {value:?}: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `Command::output` with bytes on stdin.
trait OutputWithInput {
    fn output_with_input(&mut self, input: &[u8]) -> Option<std::process::Output>;
}

impl OutputWithInput for std::process::Command {
    fn output_with_input(&mut self, input: &[u8]) -> Option<std::process::Output> {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input).ok()?;
        child.wait_with_output().ok()
    }
}
