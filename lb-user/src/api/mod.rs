//! The control API: HTTP+JSON on a Unix socket that only root may open (mode 0600), so
//! `curl --unix-socket /run/xlb/xlb.sock http://xlb/v1/status` works. The request and response
//! bodies below are shared by the server and the CLI, so the two cannot drift apart.
//!
//! | method | path | body / answer |
//! | --- | --- | --- |
//! | GET | /v1/status | [`Status`] |
//! | GET | /v1/listeners | [`ListenerStatus`] list |
//! | GET | /v1/target-groups | [`GroupStatus`] list |
//! | GET | /v1/target-groups/{group} | [`GroupStatus`] list of one |
//! | POST | /v1/target-groups/{group}/targets | [`RegisterRequest`] → [`Message`] |
//! | DELETE | /v1/target-groups/{group}/targets/{address[:port]} | → [`Message`] (drain) |
//! | POST | /v1/reload | → [`ApplyReport`] |
//! | POST | /v1/listeners/{listener}/rules | [`RuleRequest`] → [`Message`] (add a source rule) |
//! | DELETE | /v1/listeners/{listener}/rules | [`RuleRequest`] → [`Message`] (remove one) |
//!
//! Errors answer [`ErrorBody`] with 400 (bad request: malformed JSON, wrong types, unknown
//! fields), 404 (unknown group, target, listener or route), 405 (method), 409 (already there),
//! 413 (a body over [`MAX_BODY_BYTES`]), 422 (config rejected) or 500.
pub mod client;
pub mod server;
pub mod status;

use serde::{Deserialize, Serialize};

pub use crate::dataplane::reconcile::ApplyReport;
pub use status::{GroupStatus, ListenerStatus, RuleStatus, Status, TargetStatus, Traffic};

use crate::model::{ModelError, TargetRef};

/// Largest request body the control API reads; larger ones are refused (413) unread.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// `POST /v1/target-groups/{group}/targets`. `address` may carry the port (`"a:p"`); `port`,
/// when given, wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl RegisterRequest {
    pub fn new(target: TargetRef, weight: Option<u32>) -> Self {
        Self {
            address: target.addr.to_string(),
            port: target.port,
            weight,
        }
    }

    /// The target it names, checked.
    pub fn target(&self) -> Result<TargetRef, ModelError> {
        let mut t: TargetRef = self.address.parse()?;
        if let Some(p) = self.port {
            if p == 0 {
                return Err(ModelError::BadPort(format!("{}:0", self.address)));
            }
            t.port = Some(p);
        }
        Ok(t)
    }
}

/// `POST` / `DELETE /v1/listeners/{listener}/rules`: a source rule to add or remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    /// "allow" or "deny".
    pub kind: String,
    /// A prefix, as in the config file.
    pub source: String,
}

impl RuleRequest {
    /// The rule it names, checked.
    pub fn rule(&self) -> Result<crate::state::SourceRule, String> {
        Ok(crate::state::SourceRule {
            kind: self.kind.parse()?,
            source: self
                .source
                .parse()
                .map_err(|e: crate::model::CidrError| e.to_string())?,
        })
    }
}

/// `POST /v1/explain`: a flow to explain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// "tcp" or "udp".
    pub protocol: String,
    /// ADDRESS:PORT of the client.
    pub source: String,
    /// ADDRESS:PORT the client sends to.
    pub destination: String,
    /// "syn" or "ack" (TCP): the packet to run; default a SYN without an entry, else an ACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// The interface it arrives on (default: the first of `interfaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
}

/// The answer to [`ExplainRequest`], one line per question.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub flow: String,
    /// Which listener takes it.
    pub listener: String,
    /// What its source rules say.
    #[serde(default)]
    pub source_rules: String,
    /// The connection entry, and its target.
    pub connection: String,
    /// Where the listener's Maglev table sends the flow now, and that target's state.
    #[serde(default)]
    pub maglev: String,
    /// The route toward the target (`ip route get`).
    #[serde(default)]
    pub next_hop: String,
    /// The packet run through the program.
    pub packet: String,
    /// The verdict the program counted, and the events.
    pub verdict: String,
    #[serde(default)]
    pub events: Vec<String>,
    /// What left the program.
    pub output: String,
    /// How the verdict was obtained.
    pub method: String,
}

/// `POST /v1/node/drain`: withdraw this node's VIPs; with `stop_after_s`, stop the agent that
/// many seconds later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_after_s: Option<u32>,
}

pub fn rules_path(listener: &str) -> String {
    format!("{LISTENERS}/{listener}/rules")
}

/// The answer of a change (register, deregister).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

/// Every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

pub const STATUS: &str = "/v1/status";
pub const LISTENERS: &str = "/v1/listeners";
pub const RELOAD: &str = "/v1/reload";
pub const NODE_DRAIN: &str = "/v1/node/drain";
pub const NODE_RESUME: &str = "/v1/node/resume";
pub const EXPLAIN: &str = "/v1/explain";
pub const TARGET_GROUPS: &str = "/v1/target-groups";

pub fn group_path(group: &str) -> String {
    format!("{TARGET_GROUPS}/{group}")
}

pub fn targets_path(group: &str) -> String {
    format!("{TARGET_GROUPS}/{group}/targets")
}

/// `DELETE` path of one target, as the user named it (`address` or `address:port`).
pub fn target_path(group: &str, target: &str) -> String {
    format!("{TARGET_GROUPS}/{group}/targets/{target}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_request_round_trips_and_checks_its_target() {
        let t: TargetRef = "198.18.3.2:8081".parse().unwrap();
        let r = RegisterRequest::new(t, Some(2));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"address":"198.18.3.2","port":8081,"weight":2}"#);
        let back: RegisterRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.target(), Ok(t));
        // The address may carry the port, as the documented curl example does not.
        let r: RegisterRequest = serde_json::from_str(r#"{"address": "198.18.3.2:81"}"#).unwrap();
        assert_eq!(r.target().unwrap().port, Some(81));
        let r: RegisterRequest = serde_json::from_str(r#"{"address": "web-3"}"#).unwrap();
        assert_eq!(r.target(), Err(ModelError::NotAnAddress("web-3".into())));
    }
}
