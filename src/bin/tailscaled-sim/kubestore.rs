//! `--state=kube:NAME`: the simulated daemon keeps its login in the
//! Kubernetes secret, as the real tailscaled's kube store does (keys
//! `_machinekey`, `_current-profile`, `_profiles`, `profile-…`; the profile
//! holds the prefs JSON). Found against tailscaled 1.102.5 on a real
//! kube-apiserver (tests/real/README.md).
//!
//! Differences kept on purpose: the real store reads the service-account
//! files only at `/var/run/secrets/kubernetes.io/serviceaccount` and needs
//! `TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV=true` to use
//! `KUBERNETES_SERVICE_HOST`; the simulator reads them under
//! `TS_TEST_ONLY_ROOT` and always uses the env, so tests need no mount
//! namespace. It writes with GET + PUT (update), as the real store does
//! without `patch` permission.
//!
//! It has a client of its own (ureq over rustls, trusting only the service
//! account's `ca.crt`, the token read afresh for each request):
//! containerboot's client reads and writes nothing but the auth key and the
//! device info, and must not learn to. Only its TLS is containerboot's
//! (`exec::kube::tls`), since the real store, in Go, trusts `ca.crt` the
//! same way: a server certificate that is itself in `ca.crt` included. The
//! prefs are whatever serialisable type the daemon hands over, stored as
//! JSON, so this module does not depend on the daemon.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use containerboot::exec::kube::tls;
use containerboot::settings::kube::{SERVICE_ACCOUNT_DIR, is_dns_name, server_url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The profile the simulator writes (one login, one profile).
const PROFILE: &str = "profile-5151";
/// A fixed, obviously simulated machine key.
const MACHINE_KEY: &str =
    "privkey:5151515151515151515151515151515151515151515151515151515151515151";
/// Per request.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a write is tried (again after each 409 conflict).
const ATTEMPTS: usize = 5;
/// The most of an error body quoted in a message.
const QUOTE_LIMIT: usize = 300;

/// A connected store for one secret.
pub(crate) struct KubeStore {
    agent: ureq::Agent,
    /// The secret's URL.
    url: String,
    /// `secret "NAME" in namespace "NS"`, for messages.
    what: String,
    token_path: PathBuf,
}

/// What was saved: whether logged in, and the prefs.
pub(crate) struct Saved<P> {
    pub logged_in: bool,
    pub prefs: Option<P>,
}

impl KubeStore {
    /// Connects like the real store would, from the environment; `Err`
    /// says why the daemon falls back to memory.
    pub fn from_env(secret: &str) -> Result<KubeStore, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = var("KUBERNETES_SERVICE_HOST").ok_or("KUBERNETES_SERVICE_HOST is not set")?;
        let port = var("KUBERNETES_SERVICE_PORT_HTTPS")
            .or_else(|| var("KUBERNETES_SERVICE_PORT"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        let root = PathBuf::from(var("TS_TEST_ONLY_ROOT").unwrap_or_else(|| "/".into()));
        let dir = root.join(SERVICE_ACCOUNT_DIR);

        let ca_path = dir.join("ca.crt");
        let pem = std::fs::read(&ca_path)
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
            return Err(format!("{} holds no PEM certificate", ca_path.display()));
        }

        let ns_path = dir.join("namespace");
        let namespace = std::fs::read_to_string(&ns_path)
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
        read_token(&token_path)?;

        // Only ca.crt is trusted: no web or system roots.
        use ureq::unversioned::transport::{Connector, TcpConnector};
        let tls = tls::client_config(tls::CaBundle::new(&ca_path, roots))?;
        let connector = ().chain(TcpConnector::default()).chain(tls::ApiServerTls::new(tls));
        let config = ureq::Agent::config_builder()
            .https_only(true)
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
            .max_redirects(0)
            .user_agent(concat!("tailscaled-sim/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            connector,
            ureq::unversioned::resolver::DefaultResolver::default(),
        );
        Ok(KubeStore {
            agent,
            url: format!(
                "{}/api/v1/namespaces/{namespace}/secrets/{secret}",
                server_url(&host, port)
            ),
            what: format!("secret {secret:?} in namespace {namespace:?}"),
            token_path,
        })
    }

    /// What the secret remembers (nothing when it has no login).
    pub fn load<P: DeserializeOwned>(&self) -> Result<Saved<P>, String> {
        let data = match self.read()? {
            Some(obj) => self.decode(&obj)?,
            None => BTreeMap::new(),
        };
        let prefs = data
            .get("_current-profile")
            .and_then(|p| data.get(p))
            .and_then(|json| serde_json::from_str::<P>(json).ok());
        Ok(Saved {
            logged_in: data.contains_key("_machinekey") && prefs.is_some(),
            prefs,
        })
    }

    /// Stores a login with these prefs: GET, then PUT (update) with the
    /// resourceVersion read, again on a 409 conflict.
    pub fn save(&self, prefs: &impl Serialize) -> Result<(), String> {
        let id = PROFILE.trim_start_matches("profile-");
        let profiles = serde_json::json!({ id: { "ID": id, "Key": PROFILE } });
        let prefs = serde_json::to_string(prefs).map_err(|e| e.to_string())?;
        let set = BTreeMap::from([
            ("_machinekey".to_string(), MACHINE_KEY.to_string()),
            ("_current-profile".to_string(), PROFILE.to_string()),
            ("_profiles".to_string(), profiles.to_string()),
            (PROFILE.to_string(), prefs),
        ]);
        let what = format!("PUT {}", self.what);
        for _ in 0..ATTEMPTS {
            let Some(mut obj) = self.read()? else {
                return Err(format!("{what}: the secret does not exist"));
            };
            let data = obj
                .as_object_mut()
                .ok_or_else(|| format!("{what}: the secret is not an object"))?
                .entry("data")
                .or_insert_with(|| serde_json::json!({}));
            if !data.is_object() {
                *data = serde_json::json!({});
            }
            for (k, v) in &set {
                data[k] = Value::String(B64.encode(v));
            }
            let (code, body) = self.send("PUT", Some(&obj))?;
            match code {
                200..=299 => return Ok(()),
                409 => continue,
                _ => return Err(format!("{what}: {code} {}", status_message(&body))),
            }
        }
        Err(format!("{what}: conflicts kept coming (409)"))
    }

    /// The secret object; `None` when there is no such secret.
    fn read(&self) -> Result<Option<Value>, String> {
        let what = format!("GET {}", self.what);
        let (code, body) = self.send("GET", None)?;
        match code {
            200..=299 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| format!("{what}: malformed response: {e}")),
            404 => Ok(None),
            _ => Err(format!("{what}: {code} {}", status_message(&body))),
        }
    }

    /// The object's data, decoded as text.
    fn decode(&self, obj: &Value) -> Result<BTreeMap<String, String>, String> {
        let mut data = BTreeMap::new();
        if let Some(map) = obj.get("data").and_then(|d| d.as_object()) {
            for (k, v) in map {
                let bytes = v
                    .as_str()
                    .and_then(|v| B64.decode(v).ok())
                    .ok_or_else(|| format!("GET {}: data.{k} is not base64", self.what))?;
                data.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        Ok(data)
    }

    /// One request to the secret's URL: the status and the body.
    fn send(&self, method: &str, body: Option<&Value>) -> Result<(u16, String), String> {
        let what = format!("{method} {}", self.what);
        let bearer = format!("Bearer {}", read_token(&self.token_path)?);
        let result = match body {
            None => self
                .agent
                .get(&self.url)
                .header("Authorization", &bearer)
                .header("Accept", "application/json")
                .call(),
            Some(body) => {
                let bytes = serde_json::to_vec(body).map_err(|e| format!("{what}: {e}"))?;
                self.agent
                    .put(&self.url)
                    .header("Authorization", &bearer)
                    .header("Accept", "application/json")
                    .content_type("application/json")
                    .send(&bytes[..])
            }
        };
        let mut response = result.map_err(|e| format!("{what}: {e}"))?;
        let code = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{what}: {e}"))?;
        Ok((code, body))
    }
}

/// The service-account token, read afresh (bound tokens rotate).
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the service-account token {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "the service-account token {} is empty",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// The `message` of a `Status` body, or the start of the body itself.
fn status_message(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(String::from))
        .filter(|m| !m.is_empty());
    message.unwrap_or_else(|| {
        let quoted: String = body.trim().chars().take(QUOTE_LIMIT).collect();
        if quoted.is_empty() {
            "(empty body)".into()
        } else {
            quoted
        }
    })
}
