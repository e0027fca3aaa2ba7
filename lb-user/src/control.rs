//! The control channel: one JSON request line, one JSON response line, over a Unix socket that
//! only root may open (mode 0600 in a 0700 directory).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{balancer::ApplyReport, status::Status};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest accepted request line.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Reload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Status(Box<Status>),
    Reloaded(ApplyReport),
    Error { message: String },
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
pub type Pending = (Request, oneshot::Sender<Response>);

/// Bind the socket (replacing a stale file left by a dead agent) with root-only permissions.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Accept connections forever, forwarding each request to the agent's single owner loop.
pub async fn serve(listener: UnixListener, to_agent: mpsc::Sender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let to_agent = to_agent.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, to_agent).await {
                log::debug!("control connection: {e}");
            }
        });
    }
}

async fn handle(stream: UnixStream, to_agent: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST_BYTES);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line)).await;
    let response = match read {
        Err(_) => Response::Error {
            message: "timed out waiting for the request".into(),
        },
        Ok(Err(e)) => Response::Error {
            message: format!("reading the request: {e}"),
        },
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::Error {
                message: format!("bad request {:?}: {e}", line.trim()),
            },
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if to_agent.send((req, tx)).await.is_err() {
                    Response::Error {
                        message: "the agent is shutting down".into(),
                    }
                } else {
                    rx.await.unwrap_or(Response::Error {
                        message: "the agent dropped the request".into(),
                    })
                }
            }
        },
    };
    let mut out = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    out.push('\n');
    wr.write_all(out.as_bytes()).await?;
    wr.shutdown().await
}

/// Client side: send one request, wait for the response.
pub async fn call(path: &Path, req: &Request) -> anyhow::Result<Response> {
    use anyhow::Context as _;
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the xlb agent at {} (is `xlb run` running, and are you root?)",
            path.display()
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    wr.write_all(line.as_bytes()).await?;
    let mut resp = String::new();
    BufReader::new(rd).read_line(&mut resp).await?;
    serde_json::from_str(resp.trim())
        .with_context(|| format!("bad response from the agent: {resp:?}"))
}
