//! The Kubernetes executor and its API client (docs/protocols.md §4): blocking
//! `ureq` over rustls, trusting only the service account's `ca.crt` (and a
//! server certificate that is itself in `ca.crt`, as Go does: [`tls`]). The
//! executor runs the calls off the shell's thread and hands the replies to
//! the core as events; the client decides nothing beyond what an HTTP
//! answer means.
//!
//! The bearer token is re-read when the file changes (bound tokens rotate
//! hourly), at least every [`TOKEN_MAX_AGE`], and once after a 401 before
//! the 401 is believed.

use crate::machine::Event;
use crate::machine::kube::{DeviceInfo, FailureKind, KubeCall, KubeReply, KubeTarget};
use crate::secret::Secret;
pub use crate::settings::kube::{SERVICE_ACCOUNT_DIR, is_dns_name, server_url};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use smol::channel::Sender;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, TcpConnector};

pub mod tls;

/// The longest a token read from the file is used without reading it again.
pub const TOKEN_MAX_AGE: Duration = Duration::from_secs(30 * 60);

/// The field manager of device-info patches (upstream's).
pub const FIELD_MANAGER: &str = "tailscale-container";

/// The most of an error body quoted in a message.
const QUOTE_LIMIT: usize = 300;

struct Token {
    value: Secret,
    modified: Option<SystemTime>,
    read_at: Instant,
    /// Why the last attempt to read the file again failed, if it did.
    reread_error: Option<String>,
}

/// A connected client for one secret.
pub struct KubeClient {
    agent: ureq::Agent,
    server: String,
    namespace: String,
    secret: String,
    token_path: PathBuf,
    token: Mutex<Token>,
}

fn read_token(path: &Path) -> Result<Token, String> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = super::fs::read_capped_text(path)
        .map_err(|e| format!("reading the service-account token {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!(
            "the service-account token {} is empty",
            path.display()
        ));
    }
    // It goes into an HTTP header: one line of visible ASCII.
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the service-account token {} holds {bad:?}, which a token never does: it must be the one-line token Kubernetes mounts there (check what wrote the file)",
            path.display()
        ));
    }
    Ok(Token {
        value: Secret::new(value),
        modified,
        read_at: Instant::now(),
        reread_error: None,
    })
}

#[derive(Deserialize)]
struct SecretObject {
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Review {
    status: ReviewStatus,
}

#[derive(Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    allowed: bool,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
}

/// An HTTP answer: status and body.
struct Answer {
    code: u16,
    body: String,
}

/// Where a client connects and as whom.
#[derive(Clone, Debug)]
pub struct Target {
    /// `KUBERNETES_SERVICE_HOST`.
    pub host: String,
    /// `KUBERNETES_SERVICE_PORT_HTTPS`.
    pub port: u16,
    /// The root the service-account directory is under.
    pub root: PathBuf,
    /// The secret's name.
    pub secret: String,
    /// Per request.
    pub timeout_ms: u64,
    /// The `User-Agent` (the API server names unnamed field managers after it).
    pub user_agent: String,
}

impl KubeClient {
    /// Reads the service-account files under the target's root and sets
    /// up TLS.
    pub fn connect(target: &KubeTarget) -> Result<KubeClient, String> {
        KubeClient::connect_to(&Target {
            host: target.host.clone(),
            port: target.port,
            root: target.root.clone(),
            secret: target.secret.clone(),
            timeout_ms: target.timeout_ms,
            user_agent: concat!("containerboot/", env!("CARGO_PKG_VERSION")).into(),
        })
    }

    /// As [`KubeClient::connect`], for any target.
    pub fn connect_to(target: &Target) -> Result<KubeClient, String> {
        let dir = target.root.join(SERVICE_ACCOUNT_DIR);
        let server = server_url(&target.host, target.port);

        let ca_path = dir.join("ca.crt");
        let pem = super::fs::read_capped(&ca_path)
            .map_err(|e| format!("reading the API server CA {}: {e}", ca_path.display()))?;
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => {
                    roots.push(rustls::pki_types::CertificateDer::from(c.der().to_vec()))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("reading {}: {e}", ca_path.display())),
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate; it must be the API server's CA",
                ca_path.display()
            ));
        }

        let ns_path = dir.join("namespace");
        let namespace = super::fs::read_capped_text(&ns_path)
            .map_err(|e| format!("reading the namespace {}: {e}", ns_path.display()))?
            .trim()
            .to_string();
        if !is_dns_name(&namespace) {
            return Err(format!(
                "{} holds {namespace:?}, which is not a namespace name",
                ns_path.display()
            ));
        }

        let token_path = dir.join("token");
        let token = read_token(&token_path)?;

        // Only the certificates of ca.crt are trusted: no web or system
        // roots. ureq 3 takes no rustls configuration of ours, so its
        // connector chain is ours: TCP, then rustls with our verifier (and
        // no proxy connector).
        let tls = tls::client_config(tls::CaBundle::new(&ca_path, roots))?;
        let connector = ().chain(TcpConnector::default()).chain(tls::ApiServerTls::new(tls));
        let config = ureq::Agent::config_builder()
            .https_only(true)
            // Never through the pod's HTTP(S)_PROXY: the token goes only
            // to the API server (upstream's client has no proxy either).
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(target.timeout_ms)))
            .max_redirects(0)
            .user_agent(&target.user_agent)
            .build();
        let agent = ureq::Agent::with_parts(config, connector, DefaultResolver::default());
        Ok(KubeClient {
            agent,
            server,
            namespace,
            secret: target.secret.clone(),
            token_path,
            token: Mutex::new(token),
        })
    }

    /// The namespace from the service-account files.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Carries out one call (blocking) and says what it came to.
    pub fn call(&self, call: &KubeCall) -> KubeReply {
        match self.try_call(call) {
            Ok(r) | Err(r) => r,
        }
    }

    fn secret_url(&self) -> String {
        format!(
            "{}/api/v1/namespaces/{}/secrets/{}",
            self.server, self.namespace, self.secret
        )
    }

    fn what(&self, op: &str) -> String {
        format!(
            "{op} secret {:?} in namespace {:?}",
            self.secret, self.namespace
        )
    }

    fn try_call(&self, call: &KubeCall) -> Result<KubeReply, KubeReply> {
        match call {
            KubeCall::Connect { .. } => Ok(KubeReply::Connected {
                namespace: self.namespace.clone(),
                server: self.server.clone(),
            }),
            KubeCall::CheckPermission { verb } => {
                let body = serde_json::json!({
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": {
                        "namespace": self.namespace,
                        "verb": verb.as_str(),
                        "resource": "secrets",
                        "name": self.secret,
                    }},
                });
                let what = format!(
                    "creating a SelfSubjectAccessReview ({verb} on secret {:?} in namespace {:?})",
                    self.secret, self.namespace
                );
                let url = format!(
                    "{}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                    self.server
                );
                let a = self.send(&what, "POST", &url, Some("application/json"), &body)?;
                decode_review(&what, &a)
            }
            KubeCall::ProbeSecret => {
                // Only whether the secret is ours to write matters here.
                let what = self.what("GET");
                self.send(&what, "GET", &self.secret_url(), None, &())?;
                Ok(KubeReply::Secret { authkey: None })
            }
            KubeCall::ReadAuthKey => {
                let what = self.what("GET");
                let a = self.send(&what, "GET", &self.secret_url(), None, &())?;
                decode_secret(&what, &a)
            }
            KubeCall::StoreDeviceInfo { info } => {
                let what = self.what("PATCH (strategic merge, device info)");
                let url = format!("{}?fieldManager={FIELD_MANAGER}", self.secret_url());
                let body = device_info_patch(info);
                self.send(
                    &what,
                    "PATCH",
                    &url,
                    Some("application/strategic-merge-patch+json"),
                    &body,
                )?;
                Ok(KubeReply::Done)
            }
            KubeCall::StoreHttpsEndpoint { endpoint } => {
                let what = self.what("PATCH (strategic merge, https_endpoint)");
                let url = format!("{}?fieldManager={FIELD_MANAGER}", self.secret_url());
                let body = https_endpoint_patch(endpoint.as_deref());
                self.send(
                    &what,
                    "PATCH",
                    &url,
                    Some("application/strategic-merge-patch+json"),
                    &body,
                )?;
                Ok(KubeReply::Done)
            }
            KubeCall::RemoveAuthKey => {
                let what = self.what("PATCH (JSON patch, remove authkey)");
                let body = serde_json::json!([{"op": "remove", "path": "/data/authkey"}]);
                match self.send(
                    &what,
                    "PATCH",
                    &self.secret_url(),
                    Some("application/json-patch+json"),
                    &body,
                ) {
                    // 422: the field is already gone.
                    Err(KubeReply::Status { code: 422, .. }) => Ok(KubeReply::Done),
                    Err(e) => Err(e),
                    Ok(_) => Ok(KubeReply::Done),
                }
            }
        }
    }

    /// The token to send: re-read when the file changed, when it is older
    /// than [`TOKEN_MAX_AGE`], or when `force`d (after a 401). A failed
    /// re-read keeps the token in hand.
    fn token(&self, force: bool) -> Secret {
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let modified = std::fs::metadata(&self.token_path)
            .and_then(|m| m.modified())
            .ok();
        if force || modified != t.modified || t.read_at.elapsed() >= TOKEN_MAX_AGE {
            match read_token(&self.token_path) {
                Ok(fresh) => *t = fresh,
                Err(e) => t.reread_error = Some(e),
            }
        }
        t.value.clone()
    }

    /// Sends one request; a 401 re-reads the token and tries once more.
    /// `Ok` for 2xx; otherwise the reply to give.
    fn send(
        &self,
        what: &str,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &impl serde::Serialize,
    ) -> Result<Answer, KubeReply> {
        let mut answer = self.send_once(what, method, url, content_type, body, false)?;
        if answer.code == 401 {
            answer = self.send_once(what, method, url, content_type, body, true)?;
            if answer.code == 401 {
                let reread = self
                    .token
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .reread_error
                    .clone();
                let how = match reread {
                    Some(e) => format!("and the token could not be read again ({e})"),
                    None => format!(
                        "also after re-reading the token {}",
                        self.token_path.display()
                    ),
                };
                return Err(KubeReply::Failed {
                    kind: FailureKind::Permanent,
                    error: format!(
                        "{what}: 401 Unauthorized, {how}: {}",
                        status_message(&answer.body)
                    ),
                });
            }
        }
        classify(what, answer)
    }

    fn send_once(
        &self,
        what: &str,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &impl serde::Serialize,
        force_token: bool,
    ) -> Result<Answer, KubeReply> {
        let bearer = format!("Bearer {}", self.token(force_token).expose());
        let result = match method {
            "GET" => self
                .agent
                .get(url)
                .header("Authorization", &bearer)
                .header("Accept", "application/json")
                .call(),
            _ => {
                let builder = match method {
                    "POST" => self.agent.post(url),
                    "PUT" => self.agent.put(url),
                    _ => self.agent.patch(url),
                };
                let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
                builder
                    .header("Authorization", &bearer)
                    .header("Accept", "application/json")
                    .content_type(content_type.unwrap_or("application/json"))
                    .send(&bytes[..])
            }
        };
        let mut response = result.map_err(|e| failed(what, e))?;
        let code = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| failed(what, e))?;
        Ok(Answer { code, body })
    }
}

/// The strategic-merge patch storing device info: base64 values, the
/// addresses as a compact JSON array of strings.
pub fn device_info_patch(info: &DeviceInfo) -> serde_json::Value {
    let ips: Vec<String> = info.ips.iter().map(|ip| ip.to_string()).collect();
    let ips = serde_json::to_string(&ips).expect("strings serialise");
    serde_json::json!({"data": {
        "device_id": B64.encode(&info.id),
        "device_fqdn": B64.encode(&info.fqdn),
        "device_ips": B64.encode(ips),
    }})
}

/// The strategic-merge patch of `https_endpoint`: its base64 value, or
/// `null`, which removes the key (and is no error when it is absent).
pub fn https_endpoint_patch(endpoint: Option<&str>) -> serde_json::Value {
    let value = match endpoint {
        Some(e) => serde_json::Value::String(B64.encode(e)),
        None => serde_json::Value::Null,
    };
    serde_json::json!({"data": {"https_endpoint": value}})
}

/// An answer by its status: `Ok` for 2xx; otherwise the reply to give
/// (after the token handling of a 401, in `send`).
fn classify(what: &str, answer: Answer) -> Result<Answer, KubeReply> {
    match answer.code {
        200..=299 => Ok(answer),
        429 | 500..=599 => Err(KubeReply::Failed {
            kind: FailureKind::Transient,
            error: format!("{what}: {} {}", answer.code, status_message(&answer.body)),
        }),
        code => Err(KubeReply::Status {
            code,
            message: status_message(&answer.body),
        }),
    }
}

/// A SelfSubjectAccessReview's answer.
fn decode_review(what: &str, a: &Answer) -> Result<KubeReply, KubeReply> {
    let review: Review = parse(what, a)?;
    Ok(KubeReply::Allowed {
        allowed: review.status.allowed,
    })
}

/// The state secret's answer: its auth key, if any.
fn decode_secret(what: &str, a: &Answer) -> Result<KubeReply, KubeReply> {
    let obj: SecretObject = parse(what, a)?;
    let authkey = match obj.data.unwrap_or_default().get("authkey") {
        None => None,
        Some(b64) => {
            // The decoder's error could quote part of the key.
            let bytes = B64
                .decode(b64)
                .map_err(|_| malformed(what, "data.authkey is not base64".into()))?;
            let key = String::from_utf8(bytes)
                .map_err(|_| malformed(what, "data.authkey is not UTF-8 text".into()))?;
            let key = key.trim();
            (!key.is_empty()).then(|| Secret::new(key))
        }
    };
    Ok(KubeReply::Secret { authkey })
}

/// The reply the machine gets for `call` when the API server answers `code`
/// with `body`, past the transport and the token handling (a 401 here is as
/// after the token was re-read): the decoding alone, for the fuzz target.
pub fn reply_for(call: &KubeCall, code: u16, body: String) -> KubeReply {
    let what = "the call";
    let reply = classify(what, Answer { code, body }).and_then(|a| match call {
        KubeCall::CheckPermission { .. } => decode_review(what, &a),
        KubeCall::ReadAuthKey => decode_secret(what, &a),
        KubeCall::ProbeSecret => Ok(KubeReply::Secret { authkey: None }),
        _ => Ok(KubeReply::Done),
    });
    match reply {
        Ok(r) | Err(r) => r,
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, a: &Answer) -> Result<T, KubeReply> {
    serde_json::from_str(&a.body).map_err(|e| {
        malformed(
            what,
            format!("the {} answer is not what was expected: {e}", a.code),
        )
    })
}

fn malformed(what: &str, why: String) -> KubeReply {
    KubeReply::Failed {
        kind: FailureKind::Permanent,
        error: format!("{what}: malformed response: {why}"),
    }
}

/// A transport error: transient when the network or the server may come
/// back (refused, reset, timed out, cut off), permanent otherwise (TLS,
/// certificates, a bad URL). A refused certificate is a configuration
/// problem: its message names what the server presented, what `ca.crt`
/// holds and the fix.
fn failed(what: &str, e: ureq::Error) -> KubeReply {
    if let ureq::Error::Rustls(rustls::Error::InvalidCertificate(why)) = &e {
        return KubeReply::Failed {
            kind: FailureKind::Permanent,
            error: format!("{what}: {}", tls::refusal(why)),
        };
    }
    let kind = match &e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => FailureKind::Transient,
        _ => FailureKind::Permanent,
    };
    KubeReply::Failed {
        kind,
        error: format!("{what}: {e}"),
    }
}

/// The `message` of a `Status` body, or the start of the body itself.
fn status_message(body: &str) -> String {
    match serde_json::from_str::<Status>(body) {
        Ok(s) if !s.message.is_empty() => s.message,
        _ => {
            let mut b: String = body.trim().chars().take(QUOTE_LIMIT).collect();
            if body.trim().chars().count() > QUOTE_LIMIT {
                b.push('…');
            }
            if b.is_empty() {
                "(empty body)".into()
            } else {
                b
            }
        }
    }
}

/// A client shared by the call threads.
pub type SharedClient = Arc<KubeClient>;

/// The executor of `Command::Kube`: `Connect` reads the service-account
/// files here (small, local); every API call runs on the blocking pool and
/// reports back with `Event::Kube`.
pub struct KubeExecutor {
    tx: Sender<Event>,
    client: Option<SharedClient>,
}

impl KubeExecutor {
    /// An executor reporting on `tx`; `Connect` says where to connect.
    pub fn new(tx: Sender<Event>) -> Self {
        KubeExecutor { tx, client: None }
    }

    /// Carries out one call; its reply comes back as `Event::Kube`.
    pub fn execute(&mut self, call: KubeCall) {
        if let KubeCall::Connect { target } = &call {
            let reply = match KubeClient::connect(target) {
                Ok(client) => {
                    let client = Arc::new(client);
                    self.client = Some(client.clone());
                    client.call(&call)
                }
                Err(error) => KubeReply::Failed {
                    kind: FailureKind::Permanent,
                    error,
                },
            };
            self.report(Event::Kube { call, reply });
            return;
        }
        let Some(client) = self.client.clone() else {
            self.report(Event::Kube {
                call,
                reply: KubeReply::Failed {
                    kind: FailureKind::Permanent,
                    error: "internal error: no Kubernetes client".into(),
                },
            });
            return;
        };
        let tx = self.tx.clone();
        smol::spawn(async move {
            let reply = {
                let call = call.clone();
                smol::unblock(move || client.call(&call)).await
            };
            let _ = tx.send(Event::Kube { call, reply }).await;
        })
        .detach();
    }

    fn report(&self, event: Event) {
        // Unbounded, and the receiver lives as long as the shell loop.
        let _ = self.tx.try_send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_with_a_line_break_inside_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "eyJhbGciOi\nJSUzI1NiJ9\n").unwrap();
        let Err(e) = read_token(&path) else {
            panic!("a token with a line break inside was accepted")
        };
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("'\\n'"), "{e}");
        assert!(e.contains("one-line token"), "{e}");
        // Around it, white space is trimmed as before.
        std::fs::write(&path, "  eyJhbGciOiJSUzI1NiJ9\n").unwrap();
        assert!(read_token(&path).is_ok());
    }

    #[test]
    fn answers_decoded_by_call_and_status() {
        let secret = r#"{"kind":"Secret","data":{"authkey":"IHRza2V5LWF1dGgta2V5Cg=="}}"#;
        let KubeReply::Secret { authkey: Some(k) } =
            reply_for(&KubeCall::ReadAuthKey, 200, secret.into())
        else {
            panic!("no auth key read")
        };
        assert_eq!(k.expose(), "tskey-auth-key");
        let review = r#"{"status":{"allowed":true}}"#;
        let verb = crate::machine::kube::Verb::Get;
        assert_eq!(
            reply_for(&KubeCall::CheckPermission { verb }, 201, review.into()),
            KubeReply::Allowed { allowed: true }
        );
        let status = r#"{"kind":"Status","message":"secrets \"ts\" is forbidden","code":403}"#;
        assert_eq!(
            reply_for(&KubeCall::ProbeSecret, 403, status.into()),
            KubeReply::Status {
                code: 403,
                message: "secrets \"ts\" is forbidden".into()
            }
        );
        let KubeReply::Failed {
            kind: FailureKind::Transient,
            error,
        } = reply_for(&KubeCall::RemoveAuthKey, 503, "busy".into())
        else {
            panic!("a 503 is not transient")
        };
        assert!(error.contains("503 busy"), "{error}");
        let KubeReply::Failed {
            kind: FailureKind::Permanent,
            error,
        } = reply_for(
            &KubeCall::ReadAuthKey,
            200,
            r#"{"data":{"authkey":"!!"}}"#.into(),
        )
        else {
            panic!("a bad auth key is not refused")
        };
        assert!(error.contains("data.authkey is not base64"), "{error}");
    }

    #[test]
    fn device_info_patch_is_base64_and_compact() {
        let p = device_info_patch(&DeviceInfo {
            id: "nABC".into(),
            fqdn: "node.tail.ts.net.".into(),
            ips: vec!["100.64.0.1".parse().unwrap(), "fd7a::1".parse().unwrap()],
        });
        let d = &p["data"];
        let dec = |k: &str| String::from_utf8(B64.decode(d[k].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(dec("device_id"), "nABC");
        assert_eq!(dec("device_fqdn"), "node.tail.ts.net.");
        assert_eq!(dec("device_ips"), r#"["100.64.0.1","fd7a::1"]"#);
    }

    #[test]
    fn status_messages() {
        assert_eq!(
            status_message(r#"{"kind":"Status","code":404,"message":"secrets \"x\" not found"}"#),
            "secrets \"x\" not found"
        );
        assert_eq!(status_message(""), "(empty body)");
        assert_eq!(status_message("<html>oops</html>"), "<html>oops</html>");
    }
}
