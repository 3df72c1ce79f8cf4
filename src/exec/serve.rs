//! The serve-config executor: replaces tailscaled's serve config through
//! the LocalAPI (docs/protocols.md §3). GET `/localapi/v0/serve-config` for
//! the ETag, POST the new config with `If-Match`; a 412 (someone changed
//! it in between) means read again and retry, a few times. It decides
//! nothing else: the outcome goes back as `Event::ServeConfigSet`, and the
//! core retries failures with its backoff.
//!
//! A minimal HTTP/1.1 client over the unix socket of its own (executors
//! and sources do not share code; `sources/localapi.rs` is the bus's).

use crate::machine::Event;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use smol::Task;
use smol::channel::Sender;
use smol::net::unix::UnixStream;
use smol_hyper::rt::FuturesIo;
use std::path::{Path, PathBuf};

/// The Host header tailscaled's LocalAPI expects.
const HOST: &str = "local-tailscaled.sock";
/// The capability version sent in `Tailscale-Cap`.
const CAPABILITY_VERSION: u32 = 85;
/// The path of the serve config.
pub const SERVE_CONFIG_PATH: &str = "/localapi/v0/serve-config";
/// How many times a 412 is answered by reading again before giving up
/// (the core then retries after its backoff).
pub const PRECONDITION_ATTEMPTS: u32 = 4;

/// Runs one `SetServeConfig` at a time (the core sends no second before
/// the first's answer).
pub struct ServeExecutor {
    tx: Sender<Event>,
    task: Option<Task<()>>,
}

impl ServeExecutor {
    /// An executor reporting on `tx`.
    pub fn new(tx: Sender<Event>) -> Self {
        ServeExecutor { tx, task: None }
    }

    /// Sets `config` on the tailscaled at `socket`; reports `ServeConfigSet`.
    pub fn set(&mut self, socket: PathBuf, config: serde_json::Value) {
        let tx = self.tx.clone();
        self.task = Some(smol::spawn(async move {
            let error = set_serve_config(&socket, &config).await.err();
            let _ = tx.send(Event::ServeConfigSet { error }).await;
        }));
    }
}

/// GET for the ETag, POST with `If-Match`; again on 412.
pub async fn set_serve_config(socket: &Path, config: &serde_json::Value) -> Result<(), String> {
    let body = config.to_string().into_bytes();
    for _ in 0..PRECONDITION_ATTEMPTS {
        let (status, headers, text) = request(socket, Method::GET, None, Vec::new()).await?;
        if status != StatusCode::OK {
            return Err(format!(
                "GET {SERVE_CONFIG_PATH}: tailscaled answered {}: {}",
                status.as_u16(),
                text.trim()
            ));
        }
        let etag = headers
            .get(hyper::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (status, _, text) =
            request(socket, Method::POST, etag.as_deref(), body.clone()).await?;
        match status {
            StatusCode::OK | StatusCode::NO_CONTENT => return Ok(()),
            StatusCode::PRECONDITION_FAILED => continue,
            other => {
                return Err(format!(
                    "POST {SERVE_CONFIG_PATH}: tailscaled answered {}: {}",
                    other.as_u16(),
                    text.trim()
                ));
            }
        }
    }
    Err(format!(
        "POST {SERVE_CONFIG_PATH}: the config changed under us {PRECONDITION_ATTEMPTS} times in a row (412 Precondition Failed)"
    ))
}

async fn request(
    socket: &Path,
    method: Method,
    if_match: Option<&str>,
    body: Vec<u8>,
) -> Result<(StatusCode, hyper::HeaderMap, String), String> {
    let what = format!("{method} {SERVE_CONFIG_PATH}");
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{what}: connecting to tailscaled: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let _conn = smol::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(SERVE_CONFIG_PATH)
        .header(hyper::header::HOST, HOST)
        .header("Tailscale-Cap", CAPABILITY_VERSION.to_string());
    if !body.is_empty() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    if let Some(tag) = if_match {
        req = req.header(hyper::header::IF_MATCH, tag);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{what}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{what}: talking to tailscaled: {e}"))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{what}: reading the answer: {e}"))?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}
