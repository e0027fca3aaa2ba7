//! The control API: HTTP+JSON on a Unix socket that only root may open (mode 0600 in a 0700
//! directory), so `curl --unix-socket /run/xlb/xlb.sock http://xlb/v1/status` works.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | /v1/status | everything `xlb status` shows |
//! | GET | /v1/listeners | listeners and their counters |
//! | GET | /v1/target-groups | every group's targets, states and reasons |
//! | GET | /v1/target-groups/{group} | one group |
//! | POST | /v1/target-groups/{group}/targets | register `{"address": "…", "port": 8080, "weight": 1}` |
//! | DELETE | /v1/target-groups/{group}/targets/{address[:port]} | deregister (drain) |
//! | POST | /v1/reload | re-read the config file |
//!
//! Handlers only translate HTTP: each request goes to the agent's single owner loop, which
//! serialises every change.
use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{
    balancer::ApplyReport,
    status::{GroupStatus, ListenerStatus, Status},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Listeners,
    Health {
        group: Option<String>,
    },
    Register {
        group: String,
        address: Ipv4Addr,
        port: Option<u16>,
        weight: Option<u32>,
    },
    Deregister {
        group: String,
        address: Ipv4Addr,
        port: Option<u16>,
    },
    Reload,
}

/// The agent's answer, before it becomes HTTP.
#[derive(Debug)]
pub enum Reply {
    Status(Box<Status>),
    Listeners(Vec<ListenerStatus>),
    Health(Vec<GroupStatus>),
    Done(Message),
    Reloaded(ApplyReport),
    Error(Failure),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

/// An error with the HTTP status it maps to.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    BadRequest,
    NotFound,
    Conflict,
    Rejected,
    Internal,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Status(s) => Json(s).into_response(),
            Reply::Listeners(l) => Json(l).into_response(),
            Reply::Health(h) => Json(h).into_response(),
            Reply::Done(m) => Json(m).into_response(),
            Reply::Reloaded(r) => Json(r).into_response(),
            Reply::Error(f) => {
                let code = match f.kind {
                    FailureKind::BadRequest => StatusCode::BAD_REQUEST,
                    FailureKind::NotFound => StatusCode::NOT_FOUND,
                    FailureKind::Conflict => StatusCode::CONFLICT,
                    FailureKind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
                    FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (code, Json(ErrorBody { error: f.message })).into_response()
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another xlb agent is already serving {0}")]
    InUse(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A request waiting for the agent's answer.
pub type Pending = (Request, oneshot::Sender<Reply>);

/// Bind the socket (replacing a stale file left by a dead agent) with root-only permissions.
/// A missing directory is created 0700; an existing one is left as it is (it may be /tmp).
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    // The socket is created 0600 from the start: no window in which others could connect.
    // SAFETY: umask only swaps the process's file-mode mask; it is restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

type Agent = mpsc::Sender<Pending>;

async fn ask(agent: &Agent, req: Request) -> Reply {
    let (tx, rx) = oneshot::channel();
    if agent.send((req, tx)).await.is_err() {
        return Reply::Error(Failure::new(
            FailureKind::Internal,
            "the agent is shutting down",
        ));
    }
    rx.await.unwrap_or_else(|_| {
        Reply::Error(Failure::new(
            FailureKind::Internal,
            "the agent dropped the request",
        ))
    })
}

/// `address` or `address:port`.
pub fn parse_target(s: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    let (a, p) = match s.rsplit_once(':') {
        Some((a, p)) => {
            let port: u16 = p.parse().map_err(|_| format!("bad port in {s:?}"))?;
            if port == 0 {
                return Err(format!("bad port in {s:?}"));
            }
            (a, Some(port))
        }
        None => (s, None),
    };
    let address = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    Ok((address, p))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterBody {
    pub address: String,
    pub port: Option<u16>,
    pub weight: Option<u32>,
}

fn bad(message: String) -> Reply {
    Reply::Error(Failure::new(FailureKind::BadRequest, message))
}

pub fn router(agent: Agent) -> Router {
    Router::new()
        .route("/v1/status", get(|State(a): State<Agent>| async move { ask(&a, Request::Status).await }))
        .route("/v1/listeners", get(|State(a): State<Agent>| async move { ask(&a, Request::Listeners).await }))
        .route("/v1/reload", post(|State(a): State<Agent>| async move { ask(&a, Request::Reload).await }))
        .route(
            "/v1/target-groups",
            get(|State(a): State<Agent>| async move { ask(&a, Request::Health { group: None }).await }),
        )
        .route(
            "/v1/target-groups/{group}",
            get(|State(a): State<Agent>, UrlPath(group): UrlPath<String>| async move {
                ask(&a, Request::Health { group: Some(group) }).await
            }),
        )
        .route(
            "/v1/target-groups/{group}/targets",
            post(|State(a): State<Agent>, UrlPath(group): UrlPath<String>, body: Result<Json<RegisterBody>, axum::extract::rejection::JsonRejection>| async move {
                let Json(body) = match body {
                    Ok(b) => b,
                    Err(e) => return bad(format!("bad request body: {e}")),
                };
                match parse_target(&body.address) {
                    Err(e) => bad(e),
                    Ok((address, port)) => {
                        let port = body.port.or(port);
                        ask(&a, Request::Register { group, address, port, weight: body.weight }).await
                    }
                }
            }),
        )
        .route(
            "/v1/target-groups/{group}/targets/{target}",
            delete(|State(a): State<Agent>, UrlPath((group, target)): UrlPath<(String, String)>| async move {
                match parse_target(&target) {
                    Err(e) => bad(e),
                    Ok((address, port)) => ask(&a, Request::Deregister { group, address, port }).await,
                }
            }),
        )
        .with_state(agent)
}

/// Serve the API until the task is dropped.
pub async fn serve(listener: UnixListener, agent: Agent) {
    if let Err(e) = axum::serve(listener, router(agent)).await {
        log::error!("control API stopped: {e}");
    }
}

/// Client side: one HTTP request to the agent; the status code and the JSON body.
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use anyhow::Context as _;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the xlb agent at {} (is `xlb run` running, and are you root?)",
            socket.display()
        )
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "xlb")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let json = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "bad response from the agent: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    Ok((status, json))
}
