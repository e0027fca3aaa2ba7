use std::path::Path;

use super::*;
use crate::model::Mode;

const GOOD: &str = r#"interfaces = ["eth0"]

[[listener]]
name = "web"
vip = "198.18.100.10"
port = 80
protocol = "tcp"
target_group = "web"

[[target_group]]
name = "web"
port = 8080
targets = [{ address = "198.18.1.2" }, { address = "198.18.2.2", port = 8081, weight = 3 }]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    parse(Path::new("xlb.toml"), text).expect_err("config should be rejected")
}

/// Exactly one error, on `line`, whose message contains `needle`.
fn one_error(text: &str, line: usize, needle: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains(needle), "{e}");
    assert!(
        e.to_string().starts_with(&format!("xlb.toml:{line}:")),
        "{e}"
    );
}

#[test]
fn a_good_config_parses_with_defaults() {
    let c = parse(Path::new("xlb.toml"), GOOD).unwrap();
    assert_eq!(c.interfaces, ["eth0"]);
    assert_eq!(c.tables, Tables::default());
    assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
    let l = &c.listeners[0];
    assert_eq!(
        (l.vip, l.port, l.protocol),
        ("198.18.100.10".parse().unwrap(), 80, Protocol::Tcp)
    );
    assert_eq!(l.udp_idle_timeout_s, DEFAULT_UDP_IDLE_TIMEOUT_S);
    let g = &c.target_groups[0];
    assert_eq!(
        g.targets[0],
        Target {
            endpoint: Endpoint::new("198.18.1.2".parse().unwrap(), 8080),
            weight: 1
        }
    );
    assert_eq!(
        g.targets[1],
        Target {
            endpoint: Endpoint::new("198.18.2.2".parse().unwrap(), 8081),
            weight: 3
        }
    );
}

#[test]
fn toml_syntax_error_names_its_line() {
    one_error(
        &GOOD.replace("port = 80\n", "port = = 80\n"),
        6,
        "invalid string",
    );
}

#[test]
fn unknown_field_is_rejected() {
    one_error(
        &GOOD.replace("port = 80\n", "port = 80\nprot = 1\n"),
        7,
        "unknown field",
    );
}

#[test]
fn unknown_target_group() {
    one_error(
        &GOOD.replace("target_group = \"web\"", "target_group = \"api\""),
        8,
        "unknown target group \"api\"",
    );
}

#[test]
fn duplicate_listener_name() {
    let text = format!(
        "{GOOD}\n[[listener]]\nname = \"web\"\nvip = \"198.18.100.11\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n"
    );
    one_error(&text, 16, "listener \"web\" is defined twice");
}

#[test]
fn duplicate_listener_address() {
    let text = format!(
        "{GOOD}\n[[listener]]\nname = \"web2\"\nvip = \"198.18.100.10\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n"
    );
    one_error(&text, 15, "uses 198.18.100.10:80/tcp like listener \"web\"");
}

#[test]
fn same_vip_and_port_on_udp_is_another_listener() {
    let good = GOOD.replace("targets = [", "health_check = { port = 8080 }\ntargets = [");
    let text = format!(
        "{good}\n[[listener]]\nname = \"dns\"\nvip = \"198.18.100.10\"\nport = 80\nprotocol = \"udp\"\ntarget_group = \"web\"\n"
    );
    assert!(parse(Path::new("x"), &text).is_ok());
}

#[test]
fn duplicate_target_group() {
    let text = format!("{GOOD}\n[[target_group]]\nname = \"web\"\nport = 80\n");
    one_error(&text, 16, "target group \"web\" is defined twice");
}

#[test]
fn duplicate_target_in_a_group() {
    one_error(
        &GOOD.replace(
            "198.18.2.2\", port = 8081, weight = 3",
            "198.18.1.2\", port = 8080",
        ),
        13,
        "198.18.1.2:8080 is listed twice",
    );
}

#[test]
fn bad_vip_address() {
    one_error(
        &GOOD.replace("198.18.100.10", "198.18.100.300"),
        5,
        "not an IPv4 or IPv6 address",
    );
}

#[test]
fn an_ipv6_vip_needs_ipv6_targets_in_nat_and_dsr_mode() {
    // IPv4 targets behind an IPv6 VIP: refused on the vip line, naming the target.
    one_error(
        &GOOD.replace("198.18.100.10", "2001:db8::1"),
        5,
        "cannot send to target 198.18.1.2:8080 of group \"web\": mode \"nat\"",
    );
    let v6 = GOOD
        .replace("198.18.100.10", "2001:db8:100::10")
        .replace("198.18.1.2", "2001:db8:1::2")
        .replace("198.18.2.2", "2001:db8:2::2");
    let c = parse(Path::new("xlb.toml"), &v6).unwrap();
    assert_eq!(
        c.listeners[0].vip,
        "2001:db8:100::10".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        c.target_groups[0].targets[1].endpoint,
        Endpoint::new("2001:db8:2::2".parse().unwrap(), 8081)
    );
    let dsr = v6
        .replace(
            "target_group = \"web\"",
            "target_group = \"web\"\nmode = \"dsr\"",
        )
        .replace(", port = 8081", "")
        .replace("port = 8080", "port = 80");
    parse(Path::new("xlb.toml"), &dsr).unwrap();
    // An IPv6 VIP in tunnel mode needs tunnel.source_prefix6 (and no IPv4 prefix).
    let tunnel = dsr.replace("mode = \"dsr\"", "mode = \"tunnel\"");
    let errs = errors(&tunnel);
    assert!(
        errs.iter()
            .any(|e| e.message.contains("set tunnel.source_prefix6")),
        "{errs:?}"
    );
    let with6 = tunnel.replace(
        "interfaces = [\"eth0\"]",
        "interfaces = [\"eth0\"]\ntunnel = { source_prefix6 = \"2001:db8:250::/64\" }",
    );
    let c = parse(Path::new("xlb.toml"), &with6).unwrap();
    assert_eq!(
        c.tunnel.unwrap().source6,
        Some(("2001:db8:250::".parse().unwrap(), 64))
    );
    let bad = with6.replace("2001:db8:250::/64", "2001:db8:250::/129");
    assert!(errors(&bad)[0].message.contains("is not an IPv6 prefix"));
    // ... and IPv4 targets cannot serve it (IPv6-in-IPv4 is not built).
    let v4_targets = with6
        .replace("2001:db8:1::2", "198.18.1.2")
        .replace("2001:db8:2::2", "198.18.2.2");
    let errs = errors(&v4_targets);
    assert!(
        errs.iter()
            .any(|e| e.message.contains("IPv6-in-IPv4 is not built")),
        "{errs:?}"
    );
}

#[test]
fn ipv6_addresses_may_be_bracketed_ipv4_ones_not() {
    let v6 = GOOD
        .replace("\"198.18.100.10\"", "\"[2001:db8:100::10]\"")
        .replace("198.18.1.2", "[2001:db8:1::2]")
        .replace("198.18.2.2", "2001:db8:2::2");
    let c = parse(Path::new("xlb.toml"), &v6).unwrap();
    assert_eq!(
        c.listeners[0].vip,
        "2001:db8:100::10".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        c.target_groups[0].targets[0].endpoint.addr,
        "2001:db8:1::2".parse::<IpAddr>().unwrap()
    );
    one_error(
        &GOOD.replace("\"198.18.100.10\"", "\"[198.18.100.10]\""),
        5,
        "is not an IPv4 or IPv6 address",
    );
}

#[test]
fn bad_target_address() {
    one_error(
        &GOOD.replace("198.18.1.2", "backend-1"),
        13,
        "not an IPv4 or IPv6 address",
    );
}

#[test]
fn port_out_of_range() {
    one_error(
        &GOOD.replace("port = 80\n", "port = 70000\n"),
        6,
        "out of range (1-65535)",
    );
    one_error(
        &GOOD.replace("port = 8080", "port = 0"),
        12,
        "out of range (1-65535)",
    );
}

#[test]
fn negative_port_is_a_type_error_with_a_line() {
    one_error(
        &GOOD.replace("port = 80\n", "port = -1\n"),
        6,
        "expected u32",
    );
}

#[test]
fn weight_out_of_range() {
    one_error(
        &GOOD.replace("weight = 3", "weight = 5000"),
        13,
        "target weight 5000 is out of range",
    );
}

#[test]
fn maglev_size_must_be_prime() {
    let text = format!("{GOOD}\n[tables]\nmaglev_size = 65536\n");
    one_error(&text, 16, "not prime");
}

#[test]
fn maglev_size_out_of_range() {
    let text = format!("{GOOD}\n[tables]\nmaglev_size = 7\n");
    one_error(&text, 16, "out of range");
}

#[test]
fn max_connections_out_of_range() {
    let text = format!("{GOOD}\n[tables]\nmax_connections = 10\n");
    one_error(&text, 16, "tables.max_connections 10 is out of range");
}

#[test]
fn more_listeners_than_the_table_holds() {
    let text = format!(
        "{GOOD}\n[tables]\nmax_listeners = 1\n\n[[listener]]\nname = \"b\"\nvip = \"198.18.100.11\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n"
    );
    one_error(&text, 18, "2 listeners, but tables.max_listeners is 1");
}

#[test]
fn ring_memory_is_bounded() {
    let text = format!("{GOOD}\n[tables]\nmax_listeners = 1024\nmaglev_size = 1048573\n");
    one_error(&text, 15, "MiB of rings");
}

#[test]
fn udp_idle_timeout_only_on_udp() {
    one_error(
        &GOOD.replace(
            "target_group = \"web\"\n\n",
            "target_group = \"web\"\nudp_idle_timeout = 30\n\n",
        ),
        9,
        "UDP listeners only",
    );
}

#[test]
fn no_interfaces() {
    one_error(
        &GOOD.replace("[\"eth0\"]", "[]"),
        1,
        "at least one interface",
    );
}

#[test]
fn duplicate_interface() {
    one_error(
        &GOOD.replace("[\"eth0\"]", "[\"eth0\", \"eth0\"]"),
        1,
        "listed twice",
    );
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let text = GOOD
        .replace("198.18.100.10", "nope")
        .replace("port = 8080", "port = 0");
    let errs = errors(&text);
    assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![5, 12]);
}

#[test]
fn primes() {
    assert!(is_prime(65_537) && is_prime(251) && is_prime(1_048_573));
    assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(65_535));
}

#[test]
fn a_udp_listener_needs_a_health_check_port_on_its_group() {
    let text = format!(
        "{GOOD}\n[[listener]]\nname = \"dns\"\nvip = \"198.18.100.10\"\nport = 53\nprotocol = \"udp\"\ntarget_group = \"web\"\n"
    );
    one_error(&text, 19, "set health_check.port");
    let off = GOOD.replace(
        "targets = [",
        "health_check = { enabled = false }\ntargets = [",
    );
    assert!(parse(Path::new("x"), &format!("{off}\n[[listener]]\nname = \"dns\"\nvip = \"198.18.100.10\"\nport = 53\nprotocol = \"udp\"\ntarget_group = \"web\"\n")).is_ok());
}

fn with_health(check: &str) -> String {
    format!("{GOOD}[target_group.health_check]\n{check}\n")
}

#[test]
fn health_check_defaults_are_a_cloud_nlbs() {
    let c = parse(Path::new("x"), GOOD).unwrap();
    let h = &c.target_groups[0].health_check;
    assert!(h.enabled);
    assert_eq!(
        (
            h.interval.as_secs(),
            h.timeout.as_secs(),
            h.healthy_threshold,
            h.unhealthy_threshold
        ),
        (30, 10, 5, 2)
    );
    assert_eq!(c.target_groups[0].deregistration_delay.as_secs(), 300);
    assert_eq!(c.target_groups[0].unhealthy_flows, FlowPolicy::Rebalance);
    let c = parse(
        Path::new("x"),
        &with_health("protocol = \"http\"\ninterval = 1"),
    )
    .unwrap();
    let h = &c.target_groups[0].health_check;
    assert_eq!(
        (h.interval.as_secs(), h.timeout.as_secs(), h.path.as_str()),
        (1, 1, "/"),
        "timeout follows a short interval"
    );
    assert!(h.matcher.matches(200) && h.matcher.matches(399) && !h.matcher.matches(404));
}

#[test]
fn health_check_errors() {
    one_error(
        &with_health("interval = 0"),
        15,
        "health_check.interval 0 is out of range (1-300)",
    );
    one_error(
        &with_health("interval = 5\ntimeout = 6"),
        16,
        "longer than the interval",
    );
    one_error(
        &with_health("healthy_threshold = 1"),
        15,
        "out of range (2-10)",
    );
    one_error(
        &with_health("protocol = \"http\"\nmatcher = \"2xx\""),
        16,
        "health_check.matcher",
    );
    one_error(
        &with_health("protocol = \"http\"\npath = \"health\""),
        16,
        "must start with /",
    );
    one_error(
        &with_health("path = \"/health\""),
        15,
        "HTTP health checks only",
    );
    one_error(
        &with_health("protocol = \"udp\""),
        15,
        "unknown variant `udp`, expected `tcp` or `http`",
    );
    one_error(
        &with_health("port = 0"),
        15,
        "health_check.port 0 is out of range",
    );
}

#[test]
fn deregistration_delay_and_flow_policy() {
    let g = GOOD.replace(
        "port = 8080\n",
        "port = 8080\nderegistration_delay = 0\nunhealthy_flows = \"keep\"\n",
    );
    let c = parse(Path::new("x"), &g).unwrap();
    assert_eq!(c.target_groups[0].deregistration_delay.as_secs(), 0);
    assert_eq!(c.target_groups[0].unhealthy_flows, FlowPolicy::Keep);
    one_error(
        &GOOD.replace(
            "port = 8080\n",
            "port = 8080\nderegistration_delay = 3601\n",
        ),
        13,
        "deregistration_delay 3601 is out of range (0-3600)",
    );
    one_error(
        &GOOD.replace("port = 8080\n", "port = 8080\nunhealthy_flows = \"drop\"\n"),
        13,
        "unknown variant `drop`, expected `rebalance` or `keep`",
    );
}

const DSR: &str = r#"interfaces = ["eth0"]

[[listener]]
name = "web"
vip = "198.18.100.10"
port = 80
protocol = "tcp"
target_group = "web"
mode = "dsr"

[[target_group]]
name = "web"
port = 80
targets = [{ address = "198.18.1.2" }]
"#;

#[test]
fn a_dsr_listener_parses_with_its_mode_and_nat_is_the_default() {
    let c = parse(Path::new("xlb.toml"), DSR).unwrap();
    assert_eq!(c.listeners[0].mode, Mode::Dsr);
    assert_eq!(c.tunnel, None);
    let c = parse(Path::new("xlb.toml"), GOOD).unwrap();
    assert_eq!(c.listeners[0].mode, Mode::Nat);
}

#[test]
fn dsr_and_tunnel_listeners_need_targets_on_the_listener_port() {
    one_error(
        &DSR.replace("port = 80\ntargets", "port = 8080\ntargets"),
        9,
        "targets must use the listener's port 80, but 198.18.1.2:8080 in target group \"web\" does not",
    );
    one_error(
        &DSR.replace(
            "{ address = \"198.18.1.2\" }",
            "{ address = \"198.18.1.2\", port = 81 }",
        ),
        9,
        "198.18.1.2:81",
    );
}

#[test]
fn a_tunnel_listener_needs_a_source_prefix_and_it_must_be_one() {
    let tunnel = DSR.replace("mode = \"dsr\"", "mode = \"tunnel\"");
    one_error(&tunnel, 9, "set tunnel.source_prefix");
    let with = |p: &str| {
        format!(
            "[tunnel]\nsource_prefix = \"{p}\"\n{}",
            tunnel.replacen("interfaces = [\"eth0\"]\n", "", 1)
        )
    };
    let c = parse(
        Path::new("xlb.toml"),
        &format!("interfaces = [\"eth0\"]\n{}", with("198.18.250.0/24")),
    )
    .unwrap();
    let t = c.tunnel.unwrap();
    assert_eq!(
        (t.source, t.source_prefix_len, t.icmp_frag_needed),
        ("198.18.250.0".parse().unwrap(), 24, true)
    );
    one_error(
        &format!("interfaces = [\"eth0\"]\n{}", with("198.18.250.0/33")),
        3,
        "is not an IPv4 prefix",
    );
    one_error(
        &DSR.replace("mode = \"dsr\"", "mode = \"ipvs\""),
        9,
        "unknown variant",
    );
}

#[test]
fn icmp_echo_is_on_unless_turned_off() {
    assert!(parse(Path::new("xlb.toml"), GOOD).unwrap().icmp_echo);
    let off = GOOD.replacen("interfaces", "icmp_echo = false\ninterfaces", 1);
    assert!(!parse(Path::new("xlb.toml"), &off).unwrap().icmp_echo);
}

#[test]
fn source_rules_parse_and_bad_ones_are_refused_at_their_line() {
    let with = |rules: &str| {
        GOOD.replace(
            "target_group = \"web\"\n",
            &format!("target_group = \"web\"\n{rules}\n"),
        )
    };
    let c = parse(
        Path::new("xlb.toml"),
        &with(
            "allow_sources = [\"198.18.0.0/16\", \"10.0.0.1\"]\ndeny_sources = [\"198.18.9.0/24\"]",
        ),
    )
    .unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        l.allow_sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["198.18.0.0/16", "10.0.0.1/32"]
    );
    assert_eq!(l.deny_sources[0].to_string(), "198.18.9.0/24");
    one_error(
        &with("deny_sources = [\"198.18.9.5/24\"]"),
        9,
        "host bits set: the prefix is 198.18.9.0/24",
    );
    one_error(
        &with("allow_sources = [\"2001:db8::/32\"]"),
        9,
        "not of the VIP's family",
    );
    one_error(
        &with("allow_sources = [\"198.18.0.0/16\", \"198.18.0.0/16\"]"),
        9,
        "listed twice",
    );
    one_error(&with("deny_sources = [\"nope\"]"), 9, "is not a prefix");
}

/// Some error of `text` contains `needle` on `line`.
fn has_error(text: &str, line: usize, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.line == line && e.message.contains(needle)),
        "no {needle:?} on line {line}: {errs:?}"
    );
}

#[test]
fn the_other_validation_errors_each_name_their_line() {
    one_error(&GOOD.replace("[\"eth0\"]", "[\"a/b\"]"), 1, "is not valid");
    one_error(
        &GOOD.replace("name = \"web\"\nvip", "name = \"\"\nvip"),
        4,
        "listener name is empty",
    );
    has_error(
        &GOOD.replace(
            "[[target_group]]\nname = \"web\"",
            "[[target_group]]\nname = \"\"",
        ),
        11,
        "target group name is empty",
    );
    one_error(
        &GOOD.replace("port = 8081", "port = 70000"),
        13,
        "target port 70000 is out of range",
    );
    one_error(
        &with_health("unhealthy_threshold = 11"),
        15,
        "health_check.unhealthy_threshold 11 is out of range (2-10)",
    );
    one_error(
        &with_health("interval = 300\ntimeout = 121"),
        16,
        "health_check.timeout 121 is out of range",
    );
    one_error(
        &with_health("matcher = \"200\""),
        15,
        "HTTP health checks only",
    );
    has_error(
        &GOOD.replace(
            "protocol = \"tcp\"\ntarget_group = \"web\"",
            "protocol = \"udp\"\ntarget_group = \"web\"\nudp_idle_timeout = 0",
        ),
        9,
        "udp_idle_timeout 0 is out of range",
    );
    let many: Vec<String> = (0..4096u32)
        .map(|i| {
            format!(
                "{{ address = \"10.{}.{}.{}\" }}",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff
            )
        })
        .collect();
    let text = GOOD.replace(
        "targets = [{ address = \"198.18.1.2\" }, { address = \"198.18.2.2\", port = 8081, weight = 3 }]",
        &format!("targets = [{}]", many.join(", ")),
    );
    one_error(&text, 10, "4096 targets in all; at most 4095 fit");
}

#[test]
fn named_rule_sets_are_shared_by_listeners_of_either_family() {
    let text = format!(
        "{GOOD}\n[[listener]]\nname = \"web6\"\nvip = \"2001:db8::10\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web6\"\nsource_rules = [\"office\"]\n\
[[target_group]]\nname = \"web6\"\nport = 8080\ntargets = [{{ address = \"2001:db8::2\" }}]\n\
[[source_rules]]\nname = \"office\"\nallow = [\"198.18.0.0/16\", \"2001:db8::/32\"]\ndeny = [\"198.18.66.0/24\"]\n"
    )
    .replacen("target_group = \"web\"\n", "target_group = \"web\"\nsource_rules = [\"office\"]\ndeny_sources = [\"198.18.66.0/24\"]\n", 1);
    let c = parse(Path::new("xlb.toml"), &text).unwrap();
    let (web, web6) = (&c.listeners[0], &c.listeners[1]);
    let s = |v: &[Cidr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(s(&web.allow_sources), ["198.18.0.0/16"]);
    assert_eq!(
        s(&web.deny_sources),
        ["198.18.66.0/24"],
        "own and the set's, once"
    );
    assert_eq!(s(&web6.allow_sources), ["2001:db8::/32"]);
    assert!(web6.deny_sources.is_empty());
    let errs = errors(&text.replace(
        "source_rules = [\"office\"]\ndeny",
        "source_rules = [\"lab\"]\ndeny",
    ));
    assert!(
        errs.iter()
            .any(|e| e.line == 9 && e.message.contains("unknown source_rules set \"lab\"")),
        "{errs:?}"
    );
    let bad = text.replace(
        "deny = [\"198.18.66.0/24\"]\n",
        "deny = [\"198.18.66.5/24\"]\n",
    );
    assert_ne!(bad, text);
    assert!(
        errors(&bad).iter().any(|e| e
            .message
            .contains("source_rules \"office\" deny: 198.18.66.5/24 has host bits set")),
        "{:?}",
        errors(&bad)
    );
    let twice = format!("{text}[[source_rules]]\nname = \"office\"\n");
    assert!(
        errors(&twice)
            .iter()
            .any(|e| e.message.contains("defined twice"))
    );
}

#[test]
fn new_flow_limits_are_off_by_default_and_checked_for_range() {
    let c = parse(Path::new("xlb.toml"), GOOD).unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        (l.new_flows_per_second, l.new_flows_per_second_per_source),
        (0, 0)
    );
    let limited = GOOD.replace(
        "target_group = \"web\"\n\n",
        "target_group = \"web\"\nnew_flows_per_second = 5000\nnew_flows_per_second_per_source = 20\n\n",
    );
    let c = parse(Path::new("xlb.toml"), &limited).unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        (l.new_flows_per_second, l.new_flows_per_second_per_source),
        (5000, 20)
    );
    one_error(
        &limited.replace("new_flows_per_second = 5000", "new_flows_per_second = 0"),
        9,
        "new_flows_per_second 0 is out of range (1-10000000)",
    );
    one_error(
        &limited.replace(
            "new_flows_per_second_per_source = 20",
            "new_flows_per_second_per_source = 10000001",
        ),
        10,
        "new_flows_per_second_per_source 10000001 is out of range (1-10000000)",
    );
}

#[test]
fn more_source_rules_than_the_data_plane_holds_is_an_error_at_the_listener() {
    let list = |n: u32| {
        (0..n)
            .map(|i| format!("\"10.{}.{}.0/24\"", i >> 8, i & 0xff))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let with = |n: u32| {
        GOOD.replace(
            "target_group = \"web\"\n\n",
            &format!("target_group = \"web\"\ndeny_sources = [{}]\n\n", list(n)),
        )
    };
    let c = parse(Path::new("xlb.toml"), &with(MAX_SOURCE_RULES)).unwrap();
    assert_eq!(c.listeners[0].deny_sources.len(), MAX_SOURCE_RULES as usize);
    one_error(
        &with(MAX_SOURCE_RULES + 1),
        3,
        "4097 source rules in all; at most 4096 fit",
    );
}

#[test]
fn metrics_takes_an_address_and_port() {
    let c = parse(
        Path::new("xlb.toml"),
        &format!("metrics = \"127.0.0.1:9469\"\n{GOOD}"),
    )
    .unwrap();
    assert_eq!(c.metrics, Some("127.0.0.1:9469".parse().unwrap()));
    assert_eq!(parse(Path::new("xlb.toml"), GOOD).unwrap().metrics, None);
    one_error(
        &format!("metrics = \"9469\"\n{GOOD}"),
        1,
        "metrics \"9469\" is not an address and port",
    );
}

#[test]
fn the_data_plane_is_pinned_by_default_and_pin_dir_empty_turns_it_off() {
    let c = parse(Path::new("xlb.toml"), GOOD).unwrap();
    assert_eq!(c.pin_dir.as_deref(), Some(Path::new(DEFAULT_PIN_DIR)));
    assert!(!c.keep_dataplane);
    let c = parse(
        Path::new("xlb.toml"),
        &format!("pin_dir = \"\"\nkeep_dataplane = true\n{GOOD}"),
    )
    .unwrap();
    assert_eq!(c.pin_dir, None);
    assert!(c.keep_dataplane);
    let c = parse(
        Path::new("xlb.toml"),
        &format!("pin_dir = \"/run/xlb-bpf\"\n{GOOD}"),
    )
    .unwrap();
    assert_eq!(c.pin_dir.as_deref(), Some(Path::new("/run/xlb-bpf")));
}
