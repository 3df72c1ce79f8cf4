//! The serve-config executor: replaces tailscaled's serve config through
//! the LocalAPI (docs/protocols.md §3), and asks tailscaled to reload its
//! config file (`POST /localapi/v0/reload-config`). GET `/localapi/v0/serve-config` for
//! the ETag, POST the new config with `If-Match`; a 412 (someone changed
//! it in between) means read again and retry, a few times. It decides
//! nothing else: the outcome goes back as `Event::ServeConfigSet`, and the
//! core retries failures with its backoff.
//!
//! A minimal HTTP/1.1 client over the unix socket of its own (executors
//! and sources do not share code; `sources/localapi.rs` is the bus's).

use crate::machine::Event;
use crate::machine::config_reload::ReloadOutcome;
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
/// The path of tailscaled's DNS config (`tailcfg.DNSConfig`).
pub const DNS_CONFIG_PATH: &str = "/localapi/v0/dns-config";
/// The path of the config-file reload (tailscaled v1.80 and later).
pub const RELOAD_CONFIG_PATH: &str = "/localapi/v0/reload-config";
/// How many times a 412 is answered by reading again before giving up
/// (the core then retries after its backoff).
pub const PRECONDITION_ATTEMPTS: u32 = 4;

/// Runs one `SetServeConfig` at a time (the core sends no second before
/// the first's answer).
pub struct ServeExecutor {
    tx: Sender<Event>,
    task: Option<Task<()>>,
    reload: Option<Task<()>>,
    dns: Option<Task<()>>,
}

impl ServeExecutor {
    /// An executor reporting on `tx`.
    pub fn new(tx: Sender<Event>) -> Self {
        ServeExecutor {
            tx,
            task: None,
            reload: None,
            dns: None,
        }
    }

    /// Sets `config` on the tailscaled at `socket`; reports `ServeConfigSet`.
    pub fn set(&mut self, socket: PathBuf, config: serde_json::Value) {
        let tx = self.tx.clone();
        self.task = Some(smol::spawn(async move {
            let error = set_serve_config(&socket, &config).await.err();
            let _ = tx.send(Event::ServeConfigSet { error }).await;
        }));
    }

    /// Reads the DNS config of the tailscaled at `socket`; reports
    /// `DnsConfigFetched` (the core sends one at a time).
    pub fn fetch_dns_config(&mut self, socket: PathBuf) {
        let tx = self.tx.clone();
        self.dns = Some(smol::spawn(async move {
            let event = match cert_domain(&socket).await {
                Ok(cert_domain) => Event::DnsConfigFetched {
                    cert_domain,
                    error: None,
                },
                Err(e) => Event::DnsConfigFetched {
                    cert_domain: None,
                    error: Some(e),
                },
            };
            let _ = tx.send(event).await;
        }));
    }

    /// Asks the tailscaled at `socket` to reload its config file; reports
    /// `ConfigReloaded` (the core sends one at a time).
    pub fn reload_config(&mut self, socket: PathBuf) {
        let tx = self.tx.clone();
        self.reload = Some(smol::spawn(async move {
            let outcome = reload_config(&socket).await;
            let _ = tx.send(Event::ConfigReloaded { outcome }).await;
        }));
    }
}

/// `GET /localapi/v0/dns-config`: the first of its `CertDomains`.
pub async fn cert_domain(socket: &Path) -> Result<Option<String>, String> {
    let (status, _, text) = request(socket, Method::GET, DNS_CONFIG_PATH, None, Vec::new()).await?;
    if status != StatusCode::OK {
        return Err(format!(
            "GET {DNS_CONFIG_PATH}: tailscaled answered {}: {}",
            status.as_u16(),
            text.trim()
        ));
    }
    serde_json::from_str::<crate::ipn::DnsConfig>(&text)
        .map(|dns| dns.cert_domains.into_iter().next())
        .map_err(|e| format!("GET {DNS_CONFIG_PATH}: not a DNS config ({e})"))
}

/// The answer of `reload-config`: `{"Reloaded":bool,"Err":string}`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReloadAnswer {
    #[serde(default)]
    reloaded: bool,
    #[serde(default)]
    err: String,
}

/// `POST /localapi/v0/reload-config`, its answer classified.
pub async fn reload_config(socket: &Path) -> ReloadOutcome {
    let (status, _, text) =
        match request(socket, Method::POST, RELOAD_CONFIG_PATH, None, Vec::new()).await {
            Ok(answer) => answer,
            Err(error) => return ReloadOutcome::Unreachable { error },
        };
    match status {
        StatusCode::NOT_FOUND => ReloadOutcome::NotSupported,
        StatusCode::OK if text.trim().is_empty() => ReloadOutcome::Refused {
            // tailscaled's handler returns without writing its answer
            // when loading the file failed: its own log says why.
            error: "tailscaled answered with an empty body, which it does when loading the file fails (its log says why)".into(),
        },
        StatusCode::OK => match serde_json::from_str::<ReloadAnswer>(&text) {
            Ok(a) if !a.err.is_empty() => ReloadOutcome::Refused { error: a.err },
            Ok(a) if a.reloaded => ReloadOutcome::Reloaded,
            Ok(_) => ReloadOutcome::NotReloaded,
            Err(e) => ReloadOutcome::Refused {
                error: format!("POST {RELOAD_CONFIG_PATH}: the answer is not what was expected ({e}): {}", text.trim()),
            },
        },
        other => ReloadOutcome::Refused {
            error: format!(
                "POST {RELOAD_CONFIG_PATH}: tailscaled answered {}: {}",
                other.as_u16(),
                text.trim()
            ),
        },
    }
}

/// GET for the ETag, POST with `If-Match`; again on 412.
pub async fn set_serve_config(socket: &Path, config: &serde_json::Value) -> Result<(), String> {
    let body = config.to_string().into_bytes();
    for _ in 0..PRECONDITION_ATTEMPTS {
        let (status, headers, text) =
            request(socket, Method::GET, SERVE_CONFIG_PATH, None, Vec::new()).await?;
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
        let (status, _, text) = request(
            socket,
            Method::POST,
            SERVE_CONFIG_PATH,
            etag.as_deref(),
            body.clone(),
        )
        .await?;
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
    path: &str,
    if_match: Option<&str>,
    body: Vec<u8>,
) -> Result<(StatusCode, hyper::HeaderMap, String), String> {
    let what = format!("{method} {path}");
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
        .uri(path)
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
