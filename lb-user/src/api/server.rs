//! The control API's server: axum on the Unix socket. Handlers only translate HTTP: each
//! request goes to the agent's single owner loop as a [`Request`], which serialises every
//! change, and its [`Reply`] becomes the HTTP answer.
use std::{
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
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{
    ApplyReport, DrainRequest, ErrorBody, GroupStatus, ListenerStatus, Message, RegisterRequest,
    RuleRequest, Status,
};
use crate::model::TargetRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Listeners,
    Health {
        group: Option<String>,
    },
    Register {
        group: String,
        target: TargetRef,
        weight: Option<u32>,
    },
    Deregister {
        group: String,
        target: TargetRef,
    },
    AddRule {
        listener: String,
        rule: crate::state::SourceRule,
    },
    RemoveRule {
        listener: String,
        rule: crate::state::SourceRule,
    },
    Reload,
    /// `xlb node drain`: withdraw every VIP; with `stop_after_s`, stop the agent that much
    /// later.
    Drain {
        stop_after_s: Option<u32>,
    },
    /// `xlb node resume`: announce again what is healthy.
    Resume,
    /// `xlb explain`.
    Explain(super::ExplainRequest),
    /// A Prometheus scrape: the status, and the connection tables' occupancy.
    Metrics,
}

/// The agent's answer, before it becomes HTTP.
#[derive(Debug)]
pub enum Reply {
    Status(Box<Status>),
    Listeners(Vec<ListenerStatus>),
    Health(Vec<GroupStatus>),
    Done(Message),
    Reloaded(ApplyReport),
    Explained(Box<super::Explanation>),
    /// The status and (table, entries, capacity) of each connection table.
    Metrics(Box<Status>, Vec<(String, u64, u32)>),
    Error(Failure),
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
    /// A body over `MAX_BODY_BYTES`.
    TooLarge,
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

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Status(s) => Json(s).into_response(),
            Reply::Listeners(l) => Json(l).into_response(),
            Reply::Health(h) => Json(h).into_response(),
            Reply::Done(m) => Json(m).into_response(),
            Reply::Reloaded(r) => Json(r).into_response(),
            Reply::Explained(x) => Json(x).into_response(),
            Reply::Metrics(s, _) => Json(s).into_response(),
            Reply::Error(f) => {
                let code = match f.kind {
                    FailureKind::BadRequest => StatusCode::BAD_REQUEST,
                    FailureKind::NotFound => StatusCode::NOT_FOUND,
                    FailureKind::Conflict => StatusCode::CONFLICT,
                    FailureKind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
                    FailureKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
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
    let bound = lb_sys::bind_private(path).and_then(|l| {
        l.set_nonblocking(true)?;
        UnixListener::from_std(l)
    });
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

fn bad(message: String) -> Reply {
    Reply::Error(Failure::new(FailureKind::BadRequest, message))
}

/// A body axum could not read as JSON: 413 when it is too large, 400 otherwise.
fn bad_body(e: &axum::extract::rejection::JsonRejection) -> Reply {
    let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        FailureKind::TooLarge
    } else {
        FailureKind::BadRequest
    };
    Reply::Error(Failure::new(kind, format!("bad request body: {e}")))
}

pub fn router(agent: Agent) -> Router {
    Router::new()
        .route(super::STATUS, get(|State(a): State<Agent>| async move { ask(&a, Request::Status).await }))
        .route(super::LISTENERS, get(|State(a): State<Agent>| async move { ask(&a, Request::Listeners).await }))
        .route(super::RELOAD, post(|State(a): State<Agent>| async move { ask(&a, Request::Reload).await }))
        .route(
            super::NODE_DRAIN,
            post(|State(a): State<Agent>, body: Result<Json<DrainRequest>, axum::extract::rejection::JsonRejection>| async move {
                match body {
                    Err(e) => bad_body(&e),
                    Ok(Json(b)) => ask(&a, Request::Drain { stop_after_s: b.stop_after_s }).await,
                }
            }),
        )
        .route(super::NODE_RESUME, post(|State(a): State<Agent>| async move { ask(&a, Request::Resume).await }))
        .route(
            super::EXPLAIN,
            post(|State(a): State<Agent>, body: Result<Json<super::ExplainRequest>, axum::extract::rejection::JsonRejection>| async move {
                match body {
                    Err(e) => bad_body(&e),
                    Ok(Json(b)) => ask(&a, Request::Explain(b)).await,
                }
            }),
        )
        .route(
            super::TARGET_GROUPS,
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
            post(|State(a): State<Agent>, UrlPath(group): UrlPath<String>, body: Result<Json<RegisterRequest>, axum::extract::rejection::JsonRejection>| async move {
                let Json(body) = match body {
                    Ok(b) => b,
                    Err(e) => return bad_body(&e),
                };
                match body.target() {
                    Err(e) => bad(e.to_string()),
                    Ok(target) => ask(&a, Request::Register { group, target, weight: body.weight }).await,
                }
            }),
        )
        .route(
            "/v1/target-groups/{group}/targets/{target}",
            delete(|State(a): State<Agent>, UrlPath((group, target)): UrlPath<(String, String)>| async move {
                match target.parse::<TargetRef>() {
                    Err(e) => bad(e.to_string()),
                    Ok(target) => ask(&a, Request::Deregister { group, target }).await,
                }
            }),
        )
        .route(
            "/v1/listeners/{listener}/rules",
            post(|State(a): State<Agent>, UrlPath(listener): UrlPath<String>, body: Result<Json<RuleRequest>, axum::extract::rejection::JsonRejection>| async move {
                match body {
                    Err(e) => bad_body(&e),
                    Ok(Json(b)) => match b.rule() {
                        Err(e) => bad(e),
                        Ok(rule) => ask(&a, Request::AddRule { listener, rule }).await,
                    },
                }
            })
            .delete(|State(a): State<Agent>, UrlPath(listener): UrlPath<String>, body: Result<Json<RuleRequest>, axum::extract::rejection::JsonRejection>| async move {
                match body {
                    Err(e) => bad_body(&e),
                    Ok(Json(b)) => match b.rule() {
                        Err(e) => bad(e),
                        Ok(rule) => ask(&a, Request::RemoveRule { listener, rule }).await,
                    },
                }
            }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(ErrorBody {
                    error: "no such route (see `xlb --help` and the API table in the README)".into(),
                }),
            )
        })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody {
                    error: "method not allowed on this route".into(),
                }),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(super::MAX_BODY_BYTES))
        .with_state(agent)
}

/// Serve the API until the task is dropped.
/// `GET /metrics` (Prometheus) on the `metrics` address: the status, as metrics.
pub fn metrics_router(agent: Agent) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |State(a): State<Agent>, headers: axum::http::HeaderMap| async move {
                    match ask(&a, Request::Metrics).await {
                        Reply::Metrics(s, tables) => {
                            let accept = headers
                                .get(axum::http::header::ACCEPT)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            let (kind, body) = crate::metrics::negotiate(accept, &s, &tables);
                            (
                                StatusCode::OK,
                                [(axum::http::header::CONTENT_TYPE, kind)],
                                body,
                            )
                                .into_response()
                        }
                        other => other.into_response(),
                    }
                },
            ),
        )
        .with_state(agent)
}

/// Serve [`metrics_router`] on `listener` until the task is aborted.
pub async fn serve_metrics(listener: tokio::net::TcpListener, agent: Agent) {
    if let Err(e) = axum::serve(listener, metrics_router(agent)).await {
        log::error!("metrics endpoint stopped: {e}");
    }
}

pub async fn serve(listener: UnixListener, agent: Agent) {
    if let Err(e) = axum::serve(listener, router(agent)).await {
        log::error!("control API stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request as HttpRequest};
    use tower::ServiceExt;

    use super::*;

    /// The router with an agent that answers every request "done" and records it.
    fn app() -> (Router, mpsc::Receiver<Request>) {
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        let (seen_tx, seen_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = seen_tx.send(req).await;
                let _ = reply.send(Reply::Done(Message {
                    message: "done".into(),
                }));
            }
        });
        (router(tx), seen_rx)
    }

    async fn call(app: Router, method: &str, uri: &str, body: &str) -> (u16, String) {
        let req = HttpRequest::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let code = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_missing_socket_directory_is_created_0700_and_the_socket_0600() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("xlb-sockdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let path = root.join("run").join("xlb.sock");
        let l = bind(&path).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700, "directory");
        assert_eq!(mode(&path), 0o600, "socket");
        drop(l);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn bad_requests_get_a_clear_4xx_and_never_reach_the_agent() {
        let big = format!(
            "{{\"address\": \"{}\"}}",
            "1".repeat(super::super::MAX_BODY_BYTES)
        );
        let cases: [(&str, &str, &str, u16, &str); 8] = [
            (
                "POST",
                "/v1/target-groups/web/targets",
                "{not json",
                400,
                "bad request body",
            ),
            (
                "POST",
                "/v1/target-groups/web/targets",
                r#"{"address": 7}"#,
                400,
                "bad request body",
            ),
            (
                "POST",
                "/v1/target-groups/web/targets",
                r#"{"address": "198.18.1.2", "wieght": 2}"#,
                400,
                "unknown field",
            ),
            (
                "POST",
                "/v1/target-groups/web/targets",
                &big,
                413,
                "length limit exceeded",
            ),
            (
                "POST",
                "/v1/listeners/web/rules",
                r#"{"kind": "deny", "source": "198.18.0.5/24"}"#,
                400,
                "host bits",
            ),
            (
                "POST",
                "/v1/listeners/web/rules",
                r#"{"kind": "deny"}"#,
                400,
                "missing field",
            ),
            ("GET", "/v1/nothing-here", "", 404, "no such route"),
            ("PUT", "/v1/status", "", 405, "method not allowed"),
        ];
        for (method, uri, body, want, needle) in cases {
            let (app, mut seen) = app();
            let (code, text) = call(app, method, uri, body).await;
            assert_eq!(code, want, "{method} {uri} {body:.60}: {text}");
            assert!(text.contains(needle), "{method} {uri}: {text}");
            assert!(seen.try_recv().is_err(), "{method} {uri} reached the agent");
        }
        // A good request does reach it.
        let (app, mut seen) = app();
        let (code, _) = call(
            app,
            "POST",
            "/v1/listeners/web/rules",
            r#"{"kind": "deny", "source": "198.18.0.0/24"}"#,
        )
        .await;
        assert_eq!(code, 200);
        assert!(matches!(seen.recv().await, Some(Request::AddRule { .. })));
    }
}
