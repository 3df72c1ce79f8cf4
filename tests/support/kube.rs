//! A fake Kubernetes API server for integration tests.
//!
//! Real parts only: TCP on 127.0.0.1, TLS by rustls (ring, the provider
//! `ureq` already uses) with a CA and server certificate made by `rcgen` at
//! start, HTTP/1.1 by hyper, JSON by serde_json, base64 by `base64`, RFC 6902
//! and RFC 7386 patches by `json-patch`. It answers the endpoints containerboot
//! uses (docs/protocols.md §4) the way kube-apiserver v1.3x does:
//!
//! - authentication: `Authorization: Bearer <token>` on every request, 401
//!   `Status` otherwise;
//! - authorization: the pod's service account (`system:serviceaccount:NS:tailscale`)
//!   holds a Role on secrets in its own namespace with the verbs of the allow
//!   table; anything else (other namespaces, other verbs) is 403 `Forbidden`,
//!   checked before existence, as RBAC does;
//! - `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: 201 with
//!   the review echoed and `status.allowed` from the same table;
//! - secrets in the fake's namespace: get, create, update (PUT), patch
//!   (JSON patch, merge patch, strategic merge patch), delete and list;
//! - every error is a `Status` object served as `application/json`.
//!
//! The service-account directory is written the way the kubelet writes a
//! projected volume: the files live in a timestamped directory, `..data`
//! points at it, and `token`, `ca.crt` and `namespace` are symlinks through
//! `..data`; a rotation swaps `..data` atomically.
//!
//! The server runs on its own thread (one `LocalExecutor`), so tests stay
//! synchronous. Each request is handled to completion even when the client
//! goes away (a `Delay`ed PATCH still lands), except under `Fault::Drop`,
//! which closes the connection without handling the request at all.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_rustls::TlsAcceptor;
use futures_rustls::rustls;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use smol::LocalExecutor;
use smol::channel::Sender;
use smol_hyper::rt::FuturesIo;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The service-account directory, relative to the root.
pub const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";
/// The token written at start.
pub const INITIAL_TOKEN: &str = "token-1";
/// The pod's service account (in the fake's namespace).
pub const SERVICE_ACCOUNT: &str = "tailscale";
/// How long `wait_for_requests` waits before panicking: a safety net, never
/// an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(60);

const SSAR_PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
/// Media types kube-apiserver accepts for a PATCH of a built-in resource.
const PATCH_TYPES: [&str; 4] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];
/// Media types kube-apiserver reads and writes for built-in resources.
const BODY_TYPES: [&str; 3] = [
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

/// A failure injected into the next matching requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a proper `Status` object body (500
    /// InternalError, 429 TooManyRequests with `Retry-After: 1`, 503
    /// ServiceUnavailable, ...).
    Status(u16),
    /// Sleep this long, then handle the request normally (use it to exceed
    /// the client's timeout; the request still takes effect).
    Delay(Duration),
    /// Close the TCP connection without any response, after reading the
    /// request; the request has no effect.
    Drop,
    /// Answer 401 Unauthorized even if the token is good.
    Unauthorized,
    /// 200, `Content-Type: application/json`, and a body that is not JSON
    /// (a truncated object).
    Garbage,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Without the query.
    pub path: String,
    /// The raw query string, e.g. `fieldManager=tailscale-container`.
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    /// The `User-Agent` (containerboot's vs the simulated tailscaled's).
    pub user_agent: Option<String>,
    /// The bearer token presented (parsed as kube-apiserver does).
    pub token: Option<String>,
    pub body: String,
    /// What the fake answered (0 for `Fault::Drop`).
    pub status: u16,
}

/// The fake API server. Dropping it stops the server.
pub struct FakeKube {
    port: u16,
    namespace: String,
    sa_dir: PathBuf,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    sa_generation: Mutex<u64>,
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKube {
    /// Starts the server and writes the service-account files under
    /// `root/var/run/secrets/kubernetes.io/serviceaccount/`: `ca.crt` (PEM of
    /// the CA), `token` ("token-1"), `namespace` ("default").
    pub fn start(root: &Path) -> FakeKube {
        FakeKube::start_in(root, "default")
    }

    /// [`FakeKube::start`] with the pod in `namespace`.
    pub fn start_in(root: &Path, namespace: &str) -> FakeKube {
        FakeKube::start_with(root, namespace, Certificates::Chain)
    }

    /// [`FakeKube::start_in`] presenting `certificates`.
    pub fn start_with(root: &Path, namespace: &str, certificates: Certificates) -> FakeKube {
        let (ca_pem, tls) = certificates.make();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fake kube: bind");
        let port = listener.local_addr().expect("fake kube: local addr").port();
        let state = Arc::new(Mutex::new(State::new(namespace)));
        let mut fake = FakeKube {
            port,
            namespace: namespace.to_string(),
            sa_dir: root.join(SERVICE_ACCOUNT_DIR),
            ca_pem,
            state: state.clone(),
            sa_generation: Mutex::new(0),
            stop: None,
            thread: None,
        };
        fake.write_service_account(INITIAL_TOKEN);
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let thread = std::thread::Builder::new()
            .name("fake-kube".into())
            .spawn(move || {
                let ex = Rc::new(LocalExecutor::new());
                let weak = Rc::downgrade(&ex);
                smol::block_on(ex.run(smol::future::or(
                    async move {
                        let _ = stopped.recv().await;
                    },
                    accept_loop(listener, acceptor, state, weak),
                )));
                // Dropping `ex` here cancels every connection.
            })
            .expect("fake kube: spawn server thread");
        fake.stop = Some(stop);
        fake.thread = Some(thread);
        fake
    }

    /// The variables that point an in-cluster client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                self.port.to_string(),
            ),
        ]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn namespace(&self) -> String {
        self.namespace.clone()
    }

    /// The PEM in `ca.crt` (the CA that signed the server certificate,
    /// unless started with other [`Certificates`]).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The service-account directory.
    pub fn service_account_dir(&self) -> PathBuf {
        self.sa_dir.clone()
    }

    /// Creates or replaces a secret in the fake's namespace; values are plain
    /// text (served base64 in `data`). An empty slice makes a secret without
    /// `data`. Bumps the resourceVersion.
    pub fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut st = self.lock();
        let rv = st.next_revision();
        if let Some(s) = st.secrets.get_mut(name) {
            s.data = data;
            s.resource_version = rv;
            return;
        }
        let s = Secret::new(name, &mut st, data, rv);
        st.secrets.insert(name.to_string(), s);
    }

    pub fn delete_secret(&self, name: &str) {
        self.lock().secrets.remove(name);
    }

    /// The secret's data decoded to text (None if absent).
    pub fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.lock().secrets.get(name).map(|s| {
            s.data
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        })
    }

    /// The secret exactly as a GET would serve it (None if absent).
    pub fn secret_object(&self, name: &str) -> Option<Value> {
        let st = self.lock();
        st.secrets
            .get(name)
            .map(|s| serde_json::to_value(s.wire(&st.namespace, true)).expect("secret to JSON"))
    }

    /// What SelfSubjectAccessReviews answer for `verb` on secrets in the
    /// fake's namespace, and whether requests needing `verb` are let through
    /// (default: get, update, patch allowed; others denied).
    pub fn allow(&self, verb: &str, allowed: bool) {
        self.lock().allowed.insert(verb.to_string(), allowed);
    }

    /// Writes `new` to the token file and makes it the only accepted token
    /// (the old one now gets 401).
    pub fn rotate_token(&self, new: &str) {
        self.write_service_account(new);
        let mut st = self.lock();
        st.tokens.clear();
        st.tokens.insert(new.to_string());
    }

    /// Accepts an additional token without touching the file.
    pub fn also_accept(&self, token: &str) {
        self.lock().tokens.insert(token.to_string());
    }

    /// Queues `fault` for the next `times` requests whose method is `method`
    /// (or any, with "*") and whose path starts with `path_prefix`. Faults
    /// are consulted before authentication; the first queued rule that
    /// matches is used.
    pub fn inject(&self, method: &str, path_prefix: &str, fault: Fault, times: usize) {
        if let Fault::Status(code) = fault {
            assert!(
                (400..=599).contains(&code),
                "Fault::Status({code}): only error statuses (400..=599) can be injected"
            );
        }
        if times == 0 {
            return;
        }
        self.lock().faults.push(Rule {
            method: method.to_string(),
            prefix: path_prefix.to_string(),
            fault,
            remaining: times,
        });
    }

    /// Every request received, in the order they were answered (a
    /// `Delay`ed request appears once its answer is made; by then its effect
    /// on the secrets is visible), including faulted ones.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Blocks until `pred` holds for the request list and returns that list;
    /// panics, naming `what` and listing the requests, after 60 s.
    pub fn wait_for_requests(
        &self,
        what: &str,
        pred: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let requests = self.requests();
            if pred(&requests) {
                return requests;
            }
            if Instant::now() > deadline {
                panic!("fake kube: no {what} within {PATIENCE:?}; requests:\n{requests:#?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes all three files into a new timestamped directory and swaps
    /// `..data` to it, as the kubelet's atomic writer does.
    fn write_service_account(&self, token: &str) {
        let mut generation = self.sa_generation.lock().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        let dir = &self.sa_dir;
        let files = [
            ("ca.crt", self.ca_pem.as_str()),
            ("namespace", self.namespace.as_str()),
            ("token", token),
        ];
        let fail = |what: &str, e: std::io::Error| -> ! {
            panic!("fake kube: {what} in {}: {e}", dir.display())
        };
        std::fs::create_dir_all(dir).unwrap_or_else(|e| fail("creating the directory", e));
        // `..2006_01_02_15_04_05.<unique>`, as the kubelet names them.
        let (stamp, fresh) = loop {
            let now = jiff::Timestamp::now();
            let stamp = format!(
                "..{}.{}{:09}",
                now.strftime("%Y_%m_%d_%H_%M_%S"),
                *generation,
                now.subsec_nanosecond()
            );
            let fresh = dir.join(&stamp);
            match std::fs::create_dir(&fresh) {
                Ok(()) => break (stamp, fresh),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => fail("creating the data directory", e),
            }
        };
        for (name, content) in files {
            std::fs::write(fresh.join(name), content).unwrap_or_else(|e| fail(name, e));
        }
        let old = std::fs::read_link(dir.join("..data")).ok();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap_or_else(|e| fail("..data_tmp", e));
        std::fs::rename(&tmp, dir.join("..data")).unwrap_or_else(|e| fail("..data", e));
        for (name, _) in files {
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link)
                    .unwrap_or_else(|e| fail(name, e));
            }
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the server presents and what `ca.crt` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Certificates {
    /// A server certificate signed by a CA; `ca.crt` is that CA (as a
    /// cluster's).
    Chain,
    /// One self-signed CA certificate that is also the server's, and
    /// `ca.crt` is that very certificate (as Go's `httptest.NewTLSServer`,
    /// and clusters whose API server serves a self-signed certificate).
    SelfSigned,
    /// A server certificate signed by a CA, but `ca.crt` holds another CA
    /// of the same name (as after the cluster's CA was replaced).
    CaReplaced,
}

impl Certificates {
    /// The PEM for `ca.crt` and the TLS configuration of the server.
    fn make(self) -> (String, rustls::ServerConfig) {
        match self {
            Certificates::Chain => certificates(),
            Certificates::CaReplaced => {
                let (other_ca_pem, _) = certificates();
                let (_, tls) = certificates();
                (other_ca_pem, tls)
            }
            Certificates::SelfSigned => self_signed_ca(),
        }
    }
}

/// The in-cluster names and addresses of the API server.
const SERVER_NAMES: [&str; 6] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// A TLS server configuration serving `chain` with `key`.
fn serving(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> rustls::ServerConfig {
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("TLS server config");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls
}

/// A self-signed CA certificate for the in-cluster names that is also the
/// server certificate, made as Go's test certificate is (CA, certificate
/// signing, server auth).
fn self_signed_ca() -> (String, rustls::ServerConfig) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let key = KeyPair::generate().expect("key");
    let names: Vec<String> = SERVER_NAMES.into_iter().map(String::from).collect();
    let mut p = CertificateParams::new(names).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "fake-kube-self-signed");
    p.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.self_signed(&key).expect("self-signed certificate");
    (cert.pem(), serving(vec![cert.der().clone()], &key))
}

/// A CA and a server certificate for 127.0.0.1, localhost and the in-cluster
/// names, and the TLS configuration serving the latter.
fn certificates() -> (String, rustls::ServerConfig) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fake-kube-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);

    let names: Vec<String> = SERVER_NAMES.into_iter().map(String::from).collect();
    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(names).expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .expect("server certificate");

    let tls = serving(
        vec![server_cert.der().clone(), ca_cert.der().clone()],
        &server_key,
    );
    (ca_cert.pem(), tls)
}

// ---------------------------------------------------------------------------
// Serving

async fn accept_loop(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
    ex: Weak<LocalExecutor<'static>>,
) {
    let listener = smol::net::TcpListener::try_from(listener).expect("fake kube: async listener");
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                smol::Timer::after(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(exec) = ex.upgrade() else { return };
        exec.spawn(connection(tcp, acceptor.clone(), state.clone(), ex.clone()))
            .detach();
    }
}

/// One TLS connection, HTTP/1.1 with keep-alive. `Fault::Drop` ends it by
/// dropping the connection future, which closes the socket unanswered.
async fn connection(
    tcp: smol::net::TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
    ex: Weak<LocalExecutor<'static>>,
) {
    let Ok(stream) = acceptor.accept(tcp).await else {
        return;
    };
    let (drop_tx, drop_rx) = smol::channel::bounded::<()>(1);
    let service = hyper::service::service_fn(move |req| {
        let (state, ex, drop_tx) = (state.clone(), ex.clone(), drop_tx.clone());
        async move { Ok::<_, Infallible>(exchange(req, state, ex, drop_tx).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(FuturesIo::new(stream), service);
    smol::future::or(
        async {
            let _ = conn.await;
        },
        async {
            let _ = drop_rx.recv().await;
        },
    )
    .await;
}

/// Reads the request, then hands it to a detached task so it completes
/// even if the client goes away.
async fn exchange(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    ex: Weak<LocalExecutor<'static>>,
    drop_conn: Sender<()>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut record = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        content_type: header(hyper::header::CONTENT_TYPE),
        accept: header(hyper::header::ACCEPT),
        user_agent: header(hyper::header::USER_AGENT),
        token: bearer(&parts.headers),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
    };
    let fault = lock(&state).take_fault(&record.method, &record.path);
    if fault == Some(Fault::Drop) {
        lock(&state).requests.push(record);
        let _ = drop_conn.try_send(());
        return std::future::pending().await;
    }
    let (tx, rx) = smol::channel::bounded::<Reply>(1);
    let job = async move {
        if let Some(Fault::Delay(d)) = fault {
            smol::Timer::after(d).await;
        }
        let reply = {
            let mut st = lock(&state);
            let reply = answer(
                &mut st,
                &parts.method,
                &parts.uri,
                &parts.headers,
                &body,
                fault,
            );
            record.status = reply.code;
            st.requests.push(record);
            reply
        };
        let _ = tx.send(reply).await;
    };
    let Some(exec) = ex.upgrade() else {
        return std::future::pending().await;
    };
    exec.spawn(job).detach();
    drop(exec);
    match rx.recv().await {
        Ok(reply) => reply.into_response(),
        Err(_) => std::future::pending().await,
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bearer token, parsed as kube-apiserver's bearer-token authenticator
/// does: `<scheme> <token>[ <anything>]`, scheme case-insensitive.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let mut parts = value.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// An answer, as plain data (it crosses from the handling task to hyper).
struct Reply {
    code: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(code: u16, value: &impl Serialize) -> Reply {
        Reply {
            code,
            headers: Vec::new(),
            body: serde_json::to_vec(value).expect("serializing a reply"),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut b = Response::builder()
            .status(self.code)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::CACHE_CONTROL, "no-cache, private");
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.body(Full::new(Bytes::from(self.body)))
            .expect("building a response")
    }
}

// ---------------------------------------------------------------------------
// Status objects

/// A failure, answered as a `Status` object.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Box<Value>>,
    retry_after: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusWire<'a> {
    kind: &'static str,
    api_version: &'static str,
    metadata: Value,
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
    code: u16,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(Box::new(details));
        self
    }

    /// `apierrors.NewUnauthorized("Unauthorized")`.
    fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `apierrors.NewNotFound` for a secret.
    fn not_found(name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("secrets {name:?} not found"))
            .with_details(json!({"name": name, "kind": "secrets"}))
    }

    /// The apiserver's answer for a path nothing serves.
    fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    /// RBAC's denial for the fake's service account.
    fn forbidden(user_ns: &str, verb: &str, ns: &str, name: Option<&str>) -> ApiError {
        let user = format!("system:serviceaccount:{user_ns}:{SERVICE_ACCOUNT}");
        let what = match name {
            Some(n) => format!("secrets {n:?}"),
            None => "secrets".to_string(),
        };
        let mut details = json!({"kind": "secrets"});
        if let Some(n) = name {
            details["name"] = json!(n);
        }
        ApiError::new(
            403,
            "Forbidden",
            format!(
                "{what} is forbidden: User {user:?} cannot {verb} resource \"secrets\" in API group \"\" in the namespace {ns:?}"
            ),
        )
        .with_details(details)
    }

    fn unsupported_media(accepted: &[&str]) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    fn not_acceptable() -> ApiError {
        ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                BODY_TYPES.join(", ")
            ),
        )
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// What a JSON patch that does not apply gets (the cause is dropped, as
    /// `NewGenericServerResponse(422, ...)` does).
    fn patch_rejected() -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        )
        .with_details(json!({}))
    }

    /// `apierrors.NewInvalid`: field errors on a named object.
    fn invalid(kind: &str, name: &str, errors: &[FieldError]) -> ApiError {
        let list: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        let aggregate = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        let mut details = json!({"causes": causes});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        if !kind.is_empty() {
            details["kind"] = json!(kind);
        }
        ApiError::new(
            422,
            "Invalid",
            format!("{kind} {name:?} is invalid: {aggregate}"),
        )
        .with_details(details)
    }

    fn conflict(name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on secrets {name:?}: the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(json!({"name": name, "kind": "secrets"}))
    }

    fn already_exists(name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("secrets {name:?} already exists"),
        )
        .with_details(json!({"name": name, "kind": "secrets"}))
    }

    fn internal(cause: &str) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {cause}"),
        )
        .with_details(json!({"causes": [{"message": cause}]}))
    }

    /// The `Status` an injected `Fault::Status(code)` answers with.
    fn injected(code: u16) -> ApiError {
        match code {
            400 => ApiError::bad_request("the server rejected our request for an unknown reason"),
            401 => ApiError::unauthorized(),
            403 => ApiError::new(403, "Forbidden", "forbidden: injected fault"),
            404 => ApiError::no_route(),
            405 => ApiError::method_not_allowed(),
            409 => ApiError::new(409, "Conflict", "the server reported a conflict")
                .with_details(json!({})),
            422 => ApiError::patch_rejected(),
            429 => {
                let mut e = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                )
                .with_details(json!({"retryAfterSeconds": 1}));
                e.retry_after = Some(1);
                e
            }
            500 => ApiError::internal("injected fault"),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => ApiError::new(
                504,
                "Timeout",
                "Timeout: request did not complete within the allotted timeout",
            )
            .with_details(json!({})),
            c if c >= 500 => ApiError::new(
                c,
                "InternalError",
                "an error on the server (\"injected fault\") has prevented the request from succeeding",
            ),
            c => ApiError::new(
                c,
                "",
                format!(
                    "the server responded with the status code {c} but did not return more information"
                ),
            ),
        }
    }

    fn reply(&self) -> Reply {
        let mut reply = Reply::json(
            self.code,
            &StatusWire {
                kind: "Status",
                api_version: "v1",
                metadata: json!({}),
                status: "Failure",
                message: &self.message,
                reason: self.reason,
                details: self.details.as_deref(),
                code: self.code,
            },
        );
        if let Some(s) = self.retry_after {
            reply.headers.push(("retry-after", s.to_string()));
        }
        reply
    }
}

/// One entry of a field.ErrorList.
struct FieldError {
    field: String,
    reason: &'static str,
    message: String,
}

impl FieldError {
    fn invalid(field: impl Into<String>, value: &str, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {detail}"),
        }
    }

    fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
        }
    }

    fn required(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueRequired",
            message: format!("Required value: {detail}"),
        }
    }
}

// ---------------------------------------------------------------------------
// State and secrets

struct Rule {
    method: String,
    prefix: String,
    fault: Fault,
    remaining: usize,
}

struct State {
    namespace: String,
    secrets: BTreeMap<String, Secret>,
    /// The etcd revision: every write takes the next one as resourceVersion.
    revision: u64,
    uids: u64,
    /// Varies uids between fakes.
    salt: u64,
    allowed: BTreeMap<String, bool>,
    tokens: BTreeSet<String>,
    faults: Vec<Rule>,
    requests: Vec<Recorded>,
}

impl State {
    fn new(namespace: &str) -> State {
        State {
            namespace: namespace.to_string(),
            secrets: BTreeMap::new(),
            revision: 1000,
            uids: 0,
            salt: u64::from(jiff::Timestamp::now().subsec_nanosecond().unsigned_abs()) & 0xfff,
            allowed: ["get", "update", "patch"]
                .into_iter()
                .map(|v| (v.to_string(), true))
                .collect(),
            tokens: [INITIAL_TOKEN.to_string()].into(),
            faults: Vec::new(),
            requests: Vec::new(),
        }
    }

    fn next_revision(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!(
            "6b1f0c9e-{:04x}-4{:03x}-8000-{:012x}",
            std::process::id() & 0xffff,
            self.salt,
            self.uids
        )
    }

    fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let i = self.faults.iter().position(|r| {
            r.remaining > 0
                && (r.method == "*" || r.method.eq_ignore_ascii_case(method))
                && path.starts_with(&r.prefix)
        })?;
        let rule = &mut self.faults[i];
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        if rule.remaining == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }

    /// Whether the service account's Role grants `verb` on secrets in `ns`.
    fn permits(&self, verb: &str, ns: &str) -> bool {
        ns == self.namespace && self.allowed.get(verb).copied().unwrap_or(false)
    }

    fn authorize(&self, verb: &str, ns: &str, name: Option<&str>) -> Result<(), ApiError> {
        if self.permits(verb, ns) {
            Ok(())
        } else {
            Err(ApiError::forbidden(&self.namespace, verb, ns, name))
        }
    }
}

#[derive(Clone, PartialEq)]
struct Secret {
    name: String,
    uid: String,
    resource_version: String,
    created: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    type_: String,
    immutable: Option<bool>,
    data: BTreeMap<String, Vec<u8>>,
}

impl Secret {
    fn new(name: &str, st: &mut State, data: BTreeMap<String, Vec<u8>>, rv: String) -> Secret {
        Secret {
            name: name.to_string(),
            uid: st.next_uid(),
            resource_version: rv,
            created: jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            type_: "Opaque".to_string(),
            immutable: None,
            data,
        }
    }

    /// The object as served; `typed` adds kind and apiVersion (list items
    /// carry neither).
    fn wire(&self, namespace: &str, typed: bool) -> Wire {
        let non_empty = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| m.clone());
        Wire {
            kind: typed.then(|| "Secret".to_string()),
            api_version: typed.then(|| "v1".to_string()),
            metadata: Meta {
                name: Some(self.name.clone()),
                namespace: Some(namespace.to_string()),
                uid: Some(self.uid.clone()),
                resource_version: Some(self.resource_version.clone()),
                creation_timestamp: Some(self.created.clone()),
                labels: non_empty(&self.labels),
                annotations: non_empty(&self.annotations),
            },
            immutable: self.immutable,
            // Go's omitempty: a secret without keys has no `data` at all.
            data: (!self.data.is_empty()).then(|| {
                self.data
                    .iter()
                    .map(|(k, v)| (k.clone(), B64.encode(v)))
                    .collect()
            }),
            string_data: None,
            type_: Some(self.type_.clone()),
        }
    }
}

/// A Secret as JSON, in the field order of the Go types.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(default)]
    metadata: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    immutable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    string_data: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    type_: Option<String>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

/// A Secret read from a request (or from a patched object).
struct Decoded {
    name: String,
    namespace: String,
    resource_version: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    type_: String,
    immutable: Option<bool>,
    data: BTreeMap<String, Vec<u8>>,
}

impl Decoded {
    /// Decodes `data` (base64, as Go decodes `[]byte`) and folds in the
    /// write-only `stringData`. The error reads like Go's.
    fn from_json(value: Value) -> Result<Decoded, String> {
        let w: Wire = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let mut data = BTreeMap::new();
        for (k, v) in w.data.unwrap_or_default() {
            let bytes = B64.decode(v.as_bytes()).map_err(|e| {
                let at = match e {
                    base64::DecodeError::InvalidByte(at, _) => at,
                    base64::DecodeError::InvalidLength(at) => at,
                    base64::DecodeError::InvalidLastSymbol { offset, .. } => offset,
                    base64::DecodeError::InvalidPadding => v.len(),
                };
                format!("illegal base64 data at input byte {at}")
            })?;
            data.insert(k, bytes);
        }
        for (k, v) in w.string_data.unwrap_or_default() {
            data.insert(k, v.into_bytes());
        }
        let m = w.metadata;
        Ok(Decoded {
            name: m.name.unwrap_or_default(),
            namespace: m.namespace.unwrap_or_default(),
            resource_version: m.resource_version.unwrap_or_default(),
            labels: m.labels.unwrap_or_default(),
            annotations: m.annotations.unwrap_or_default(),
            type_: w
                .type_
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "Opaque".to_string()),
            immutable: w.immutable,
            data,
        })
    }

    /// `checkName`: the object must name what the URL names.
    fn check_name(&self, name: &str, namespace: &str) -> Result<(), ApiError> {
        if !self.name.is_empty() && self.name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                self.name
            )));
        }
        if !self.namespace.is_empty() && self.namespace != namespace {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(())
    }
}

/// `IsConfigMapKey` on every data key.
fn key_errors(data: &BTreeMap<String, Vec<u8>>) -> Vec<FieldError> {
    const REGEX_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
    let mut errors = Vec::new();
    for key in data.keys() {
        let mut why = Vec::new();
        if key.len() > 253 {
            why.push("must be no more than 253 characters".to_string());
        }
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            why.push(REGEX_MSG.to_string());
        }
        if key == "." {
            why.push("must not be '.'".to_string());
        } else if key == ".." {
            why.push("must not be '..'".to_string());
        } else if key.starts_with("..") {
            why.push("must not start with '..'".to_string());
        }
        if !why.is_empty() {
            errors.push(FieldError::invalid(
                format!("data[{key}]"),
                key,
                &why.join("; "),
            ));
        }
    }
    errors
}

// ---------------------------------------------------------------------------
// Routing and handlers

enum Route<'a> {
    Ssar,
    Secrets { ns: &'a str },
    Secret { ns: &'a str, name: &'a str },
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if path == SSAR_PATH {
        return Route::Ssar;
    }
    let Some(rest) = path.strip_prefix("/api/v1/namespaces/") else {
        return Route::Unknown;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [ns, "secrets"] if !ns.is_empty() => Route::Secrets { ns },
        [ns, "secrets", name] if !ns.is_empty() && !name.is_empty() => Route::Secret { ns, name },
        _ => Route::Unknown,
    }
}

/// The media type of a `Content-Type`, lower-cased, without parameters.
fn media_type(value: Option<&str>) -> Option<String> {
    value.map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

/// Whether `Accept` admits JSON (absent admits everything).
fn accepts_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return true };
    accept.split(',').any(|range| {
        matches!(
            media_type(Some(range)).as_deref(),
            Some("application/json" | "application/*" | "*/*")
        )
    })
}

/// 415 unless the body is declared as something the apiserver decodes.
fn check_body_type(content_type: Option<&str>) -> Result<(), ApiError> {
    match media_type(content_type) {
        Some(t) if !BODY_TYPES.contains(&t.as_str()) => {
            Err(ApiError::unsupported_media(&BODY_TYPES))
        }
        _ => Ok(()),
    }
}

fn answer(
    st: &mut State,
    method: &Method,
    uri: &hyper::Uri,
    headers: &HeaderMap,
    body: &[u8],
    fault: Option<Fault>,
) -> Reply {
    match fault {
        Some(Fault::Status(code)) => return ApiError::injected(code).reply(),
        Some(Fault::Unauthorized) => return ApiError::unauthorized().reply(),
        Some(Fault::Garbage) => {
            return Reply {
                code: 200,
                headers: Vec::new(),
                body: br#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"#.to_vec(),
            };
        }
        _ => {}
    }
    match bearer(headers) {
        Some(t) if st.tokens.contains(&t) => {}
        _ => return ApiError::unauthorized().reply(),
    }
    let text = |name: hyper::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = text(hyper::header::CONTENT_TYPE);
    let accept = text(hyper::header::ACCEPT);
    let query = uri.query().unwrap_or("");
    let result = match route(uri.path()) {
        Route::Ssar if method == Method::POST => ssar(st, accept, content_type, body),
        Route::Secret { ns, name } => {
            let verb = match *method {
                Method::GET => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => return ApiError::method_not_allowed().reply(),
            };
            st.authorize(verb, ns, Some(name)).and_then(|()| {
                if !accepts_json(accept) {
                    return Err(ApiError::not_acceptable());
                }
                match verb {
                    "get" => get(st, name),
                    "update" => update(st, name, content_type, body),
                    "patch" => patch(st, name, query, content_type, body),
                    _ => delete(st, name),
                }
            })
        }
        Route::Secrets { ns } => {
            let verb = match *method {
                Method::GET => "list",
                Method::POST => "create",
                _ => return ApiError::method_not_allowed().reply(),
            };
            st.authorize(verb, ns, None).and_then(|()| {
                if !accepts_json(accept) {
                    return Err(ApiError::not_acceptable());
                }
                if verb == "list" {
                    list(st, query)
                } else {
                    create(st, content_type, body)
                }
            })
        }
        Route::Ssar => Err(ApiError::method_not_allowed()),
        Route::Unknown => Err(ApiError::no_route()),
    };
    result.unwrap_or_else(|e| e.reply())
}

/// SelfSubjectAccessReview: 201 with the review echoed and its status set.
fn ssar(
    st: &State,
    accept: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    if !accepts_json(accept) {
        return Err(ApiError::not_acceptable());
    }
    check_body_type(content_type)?;
    let mut review: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    let Some(obj) = review.as_object_mut() else {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: json: cannot unmarshal non-object into Go value of type struct { APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }",
        ));
    };
    for (field, want) in [
        ("apiVersion", "authorization.k8s.io/v1"),
        ("kind", "SelfSubjectAccessReview"),
    ] {
        match obj.get(field).and_then(Value::as_str) {
            None | Some("") => {}
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({got}) does not match the expected {field} ({want})"
                )));
            }
        }
    }
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let attrs = |key: &str| spec.get(key).filter(|v| v.is_object()).cloned();
    let (resource, non_resource) = (attrs("resourceAttributes"), attrs("nonResourceAttributes"));
    if resource.is_some() == non_resource.is_some() {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview.authorization.k8s.io",
            "",
            &[FieldError::invalid(
                "spec.resourceAttributes",
                "null",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    }
    let allowed = resource.is_some_and(|ra| {
        let field = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        field("resource") == "secrets"
            && field("group").is_empty()
            && field("subresource").is_empty()
            && st.permits(&field("verb"), &field("namespace"))
    });
    let ns = &st.namespace;
    let status = if allowed {
        json!({
            "allowed": true,
            "reason": format!(
                "RBAC: allowed by RoleBinding \"{SERVICE_ACCOUNT}/{ns}\" of Role \"{SERVICE_ACCOUNT}\" to ServiceAccount \"{SERVICE_ACCOUNT}/{ns}\""
            ),
        })
    } else {
        json!({"allowed": false})
    };
    obj.insert("kind".into(), json!("SelfSubjectAccessReview"));
    obj.insert("apiVersion".into(), json!("authorization.k8s.io/v1"));
    obj.entry("metadata").or_insert_with(|| json!({}));
    obj.insert("status".into(), status);
    Ok(Reply::json(201, &review))
}

fn get(st: &State, name: &str) -> Result<Reply, ApiError> {
    let secret = st
        .secrets
        .get(name)
        .ok_or_else(|| ApiError::not_found(name))?;
    Ok(Reply::json(200, &secret.wire(&st.namespace, true)))
}

fn list(st: &State, query: &str) -> Result<Reply, ApiError> {
    if query
        .split('&')
        .any(|kv| matches!(kv, "watch=true" | "watch=1"))
    {
        return Err(ApiError::internal(
            "the fake kube-apiserver does not implement watch",
        ));
    }
    let items: Vec<Wire> = st
        .secrets
        .values()
        .map(|s| s.wire(&st.namespace, false))
        .collect();
    Ok(Reply::json(
        200,
        &json!({
            "kind": "SecretList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": st.revision.to_string()},
            "items": items,
        }),
    ))
}

fn decode_body(content_type: Option<&str>, body: &[u8]) -> Result<Decoded, ApiError> {
    check_body_type(content_type)?;
    let cannot = |e: String| {
        ApiError::bad_request(format!(
            "Secret in version \"v1\" cannot be handled as a Secret: {e}"
        ))
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| cannot(e.to_string()))?;
    Decoded::from_json(value).map_err(cannot)
}

fn create(st: &mut State, content_type: Option<&str>, body: &[u8]) -> Result<Reply, ApiError> {
    let d = decode_body(content_type, body)?;
    let ns = st.namespace.clone();
    // The name comes from the body; only the namespace can disagree.
    d.check_name(&d.name, &ns)?;
    if d.name.is_empty() {
        return Err(ApiError::invalid(
            "Secret",
            "",
            &[FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )],
        ));
    }
    let errors = key_errors(&d.data);
    if !errors.is_empty() {
        return Err(ApiError::invalid("Secret", &d.name, &errors));
    }
    if st.secrets.contains_key(&d.name) {
        return Err(ApiError::already_exists(&d.name));
    }
    let rv = st.next_revision();
    let mut s = Secret::new(&d.name, st, d.data, rv);
    s.labels = d.labels;
    s.annotations = d.annotations;
    s.type_ = d.type_;
    s.immutable = d.immutable;
    let reply = Reply::json(201, &s.wire(&ns, true));
    st.secrets.insert(d.name, s);
    Ok(reply)
}

fn update(
    st: &mut State,
    name: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let d = decode_body(content_type, body)?;
    store(st, name, d)
}

/// The common end of update and patch: checks, then writes if anything
/// changed (a no-op keeps the resourceVersion, as the real server does).
fn store(st: &mut State, name: &str, d: Decoded) -> Result<Reply, ApiError> {
    d.check_name(name, &st.namespace)?;
    let current = st
        .secrets
        .get(name)
        .ok_or_else(|| ApiError::not_found(name))?;
    if !d.resource_version.is_empty() && d.resource_version != current.resource_version {
        return Err(ApiError::conflict(name));
    }
    let mut errors = key_errors(&d.data);
    if d.type_ != current.type_ {
        errors.push(FieldError::invalid("type", &d.type_, "field is immutable"));
    }
    if current.immutable == Some(true) {
        if d.data != current.data {
            errors.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        if d.immutable != Some(true) {
            errors.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("Secret", name, &errors));
    }
    let mut next = current.clone();
    next.labels = d.labels;
    next.annotations = d.annotations;
    next.immutable = d.immutable;
    next.data = d.data;
    if next != *current {
        next.resource_version = st.next_revision();
    }
    let reply = Reply::json(200, &next.wire(&st.namespace, true));
    st.secrets.insert(name.to_string(), next);
    Ok(reply)
}

enum PatchKind {
    Json,
    Merge,
    Strategic,
}

fn patch(
    st: &mut State,
    name: &str,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    // Like the apiserver: cut at ';' and compare exactly.
    let base = content_type.map(|c| c.split(';').next().unwrap_or(""));
    let kind = match base {
        Some("application/json-patch+json") => PatchKind::Json,
        Some("application/merge-patch+json") => PatchKind::Merge,
        Some("application/strategic-merge-patch+json") => PatchKind::Strategic,
        Some("application/apply-patch+yaml") => {
            return Err(ApiError::internal(
                "the fake kube-apiserver does not implement server-side apply",
            ));
        }
        _ => return Err(ApiError::unsupported_media(&PATCH_TYPES)),
    };
    for kv in query.split('&') {
        if let Some(manager) = kv.strip_prefix("fieldManager=")
            && manager.len() > 128
        {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io",
                "",
                &[FieldError {
                    field: "fieldManager".into(),
                    reason: "FieldValueTooLong",
                    message: "Too long: may not be more than 128 bytes".into(),
                }],
            ));
        }
    }
    let current = st
        .secrets
        .get(name)
        .ok_or_else(|| ApiError::not_found(name))?;
    let mut doc = serde_json::to_value(current.wire(&st.namespace, true)).expect("secret JSON");
    let patch: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    match kind {
        PatchKind::Json => {
            if !patch.is_array() {
                return Err(ApiError::bad_request(
                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                ));
            }
            let ops: json_patch::Patch =
                serde_json::from_value(patch).map_err(|_| ApiError::patch_rejected())?;
            json_patch::patch(&mut doc, &ops).map_err(|_| ApiError::patch_rejected())?;
        }
        PatchKind::Strategic if !patch.is_object() => {
            return Err(ApiError::bad_request("invalid JSON document"));
        }
        PatchKind::Merge | PatchKind::Strategic => json_patch::merge(&mut doc, &patch),
    }
    let patched = doc.to_string();
    let d = Decoded::from_json(doc)
        .map_err(|e| ApiError::invalid("", "", &[FieldError::invalid("patch", &patched, &e)]))?;
    store(st, name, d)
}

fn delete(st: &mut State, name: &str) -> Result<Reply, ApiError> {
    let gone = st
        .secrets
        .remove(name)
        .ok_or_else(|| ApiError::not_found(name))?;
    st.next_revision();
    Ok(Reply::json(
        200,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "kind": "secrets", "uid": gone.uid},
        }),
    ))
}
