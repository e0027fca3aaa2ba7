//! The control API's client side (the CLI): one HTTP request over the Unix socket.
use std::path::Path;

use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use super::ErrorBody;

/// What the agent answered: the typed body, or the error it gave with its HTTP status.
pub enum Answer<T> {
    Ok(T),
    Refused { status: u16, error: String },
}

/// Client side: one HTTP request to the agent; the status code and the JSON body.
async fn call_json(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<String>,
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
    let payload = body.unwrap_or_default();
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

/// One typed request: `body` is sent as JSON; a 2xx answer is read as `T`.
pub async fn call<T: DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
) -> anyhow::Result<(Answer<T>, serde_json::Value)> {
    let body = body.map(|b| serde_json::to_string(b).expect("request serialises"));
    let (status, json) = call_json(socket, method, path, body).await?;
    if (200..300).contains(&status) {
        let typed = serde_json::from_value(json.clone())
            .map_err(|e| anyhow::anyhow!("unexpected answer from the agent: {e}"))?;
        return Ok((Answer::Ok(typed), json));
    }
    let error = serde_json::from_value::<ErrorBody>(json.clone())
        .map(|b| b.error)
        .unwrap_or_else(|_| json.to_string());
    Ok((Answer::Refused { status, error }, json))
}
