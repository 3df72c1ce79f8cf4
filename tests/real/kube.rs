//! A real Kubernetes API server for tests: `etcd` and `kube-apiserver`
//! built by `tests/real/setup` (pinned versions: see tests/real/README.md),
//! on 127.0.0.1 free ports, with a test CA, static bearer tokens and RBAC.
//! No other Kubernetes component runs: there are no controllers, so nothing
//! but the tests creates or changes objects.
//!
//! Include it next to the real-program support module, which it uses for
//! the bin dir and the patience:
//!
//! ```ignore
//! #[path = "real/support.rs"]
//! mod support;
//! #[path = "real/kube.rs"]
//! mod kube;
//! ```
//!
//! Call `support::isolate` first: then etcd and kube-apiserver live in the
//! test's private network namespace and cannot collide with anything else.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::support::{PATIENCE, free_port};

/// How long kube-apiserver may take to become ready. Its start (etcd
/// connection, storage setup, post-start hooks, RBAC bootstrap) takes a few
/// seconds alone and much longer on a loaded 2-core machine: a safety net
/// against hangs, never a timing assertion.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(240);

/// The pod's service account, as containerboot's RBAC docs name it.
pub const SERVICE_ACCOUNT: &str = "containerboot";

/// Where in-cluster clients find their credentials, under a root.
pub const SA_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// Verbs whose SSAR answer [`RealKube::grant`] waits for to settle.
const SETTLE_VERBS: [&str; 5] = ["get", "update", "patch", "create", "delete"];

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).expect("create log file");
        die_with_parent(cmd);
        let child = cmd
            .env_clear()
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc { name, child, log }
    }

    /// Panics with the log tail if the process has exited.
    fn check(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                tail(&self.log, 60)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Makes the child get SIGKILL when the thread that spawned it exits, so a
/// test process killed before its Drop runs (a timeout, Ctrl-C) leaves no
/// server behind. The signal survives exec.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure makes one prctl system call: no allocation, no
    // lock, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An HTTPS client for the API server: trusts only the test CA, sends one
/// bearer token, and returns every status as a value (no status is an error).
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

/// A response: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }
}

impl Client {
    pub fn new(host: &str, port: u16, ca_pem: &[u8], token: &str) -> Client {
        let ca = ureq::tls::Certificate::from_pem(ca_pem).expect("CA PEM");
        // ureq is built without a default provider (as in the product): ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Client {
            agent,
            base: format!("https://{host}:{port}"),
            token: token.to_string(),
        }
    }

    /// The in-cluster convention, and nothing else: the server from
    /// `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT_HTTPS` in `env`,
    /// CA and token from the service-account files under `root`.
    pub fn in_cluster(root: &Path, env: &[(String, String)]) -> Client {
        let var = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{k} not in {env:?}"))
        };
        let sa = root.join(SA_DIR);
        let ca = std::fs::read(sa.join("ca.crt")).expect("read ca.crt");
        let token = std::fs::read_to_string(sa.join("token")).expect("read token");
        let port = var("KUBERNETES_SERVICE_PORT_HTTPS").parse().expect("port");
        Client::new(&var("KUBERNETES_SERVICE_HOST"), port, &ca, token.trim())
    }

    /// The same server and CA with another bearer token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            agent: self.agent.clone(),
            base: self.base.clone(),
            token: token.to_string(),
        }
    }

    /// One request. `path` starts with `/`. Panics if there is no answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        self.try_request(method, path, content_type, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// One request; Err when no HTTP answer came (connection, TLS, I/O).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> Result<Reply, String> {
        let url = format!("{}{path}", self.base);
        let b = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", "application/json");
        let b = match content_type {
            Some(ct) => b.header("Content-Type", ct),
            None => b,
        };
        let res = match body {
            Some(body) => self.agent.run(b.body(body.to_string()).unwrap()),
            None => self.agent.run(b.body(()).unwrap()),
        };
        let mut res = res.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = res.status().as_u16();
        let body = res
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
        Ok(Reply { status, body })
    }

    /// A SelfSubjectAccessReview for `verb` on the secret `name` in `ns`,
    /// exactly as containerboot sends it. Returns the whole reply.
    pub fn ssar(&self, ns: &str, verb: &str, name: &str) -> Reply {
        let body = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "namespace": ns, "verb": verb, "resource": "secrets", "name": name
            }}
        });
        self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some("application/json"),
            Some(&body.to_string()),
        )
    }

    /// `status.allowed` of an SSAR; panics unless the server answered 201.
    pub fn allowed(&self, ns: &str, verb: &str, name: &str) -> bool {
        let r = self.ssar(ns, verb, name);
        assert_eq!(r.status, 201, "SSAR {verb} {name}: {}", r.body);
        r.json()["status"]["allowed"]
            .as_bool()
            .unwrap_or_else(|| panic!("SSAR without status.allowed: {}", r.body))
    }
}

/// etcd and kube-apiserver on 127.0.0.1, with the service-account files of
/// a pod written under a test root. Dropping it stops both (kube-apiserver
/// first) and removes their temporary directory.
pub struct RealKube {
    // Field order is drop order: the API server stops before etcd, and the
    // directory goes last.
    apiserver: Proc,
    etcd: Proc,
    dir: tempfile::TempDir,
    port: u16,
    ca_pem: String,
    admin_token: String,
    pod_token: String,
    namespace: String,
    admin: Client,
}

impl RealKube {
    /// Starts etcd (loopback, temp data dir, free ports) and kube-apiserver
    /// (secure port on 127.0.0.1, free port) with a test CA and serving
    /// certificate, RBAC, static tokens (an admin in `system:masters`, the
    /// pod's service-account user) and the service-account signing key it
    /// requires. Waits for `/readyz`, creates the namespace `tailscale`,
    /// and writes `ca.crt`, `token` (the pod's) and `namespace` under
    /// `root/var/run/secrets/kubernetes.io/serviceaccount/`.
    pub fn start(root: &Path) -> RealKube {
        let etcd_bin = program("etcd");
        let apiserver_bin = program("kube-apiserver");
        let dir = tempfile::Builder::new()
            .prefix("realkube.")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let namespace = "tailscale".to_string();

        // A CA, and a serving certificate it signed for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "containerboot-rs test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let srv_key = rcgen::KeyPair::generate().unwrap();
        let mut srv_params = rcgen::CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .unwrap();
        srv_params.distinguished_name = rcgen::DistinguishedName::new();
        srv_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        srv_params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        srv_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let srv_cert = srv_params.signed_by(&srv_key, &issuer).unwrap();
        let ca_pem = ca_cert.pem();
        let write = |name: &str, text: &str| {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        write("ca.crt", &ca_pem);
        let tls_cert = write("serving.crt", &srv_cert.pem());
        let tls_key = write("serving.key", &srv_key.serialize_pem());
        // The key kube-apiserver signs service-account tokens with, and its
        // public half to verify them (it refuses to start without them).
        let sa = rcgen::KeyPair::generate().unwrap();
        let sa_key = write("sa.key", &sa.serialize_pem());
        let sa_pub = write("sa.pub", &sa.public_key_pem());

        let admin_token = random_token();
        let pod_token = random_token();
        let tokens = write(
            "tokens.csv",
            &format!(
                "{admin_token},test-admin,test-admin-uid,\"system:masters\"\n\
                 {pod_token},system:serviceaccount:{namespace}:{SERVICE_ACCOUNT},pod-uid,\
                 \"system:serviceaccounts,system:serviceaccounts:{namespace},system:authenticated\"\n"
            ),
        );

        // etcd: one member, loopback only, its own data directory.
        let (client_port, peer_port) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Proc::spawn(
            "etcd",
            Command::new(&etcd_bin)
                .arg("--name=test")
                .arg(format!("--data-dir={}", d.join("etcd").display()))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=test={peer_url}"))
                .arg("--listen-metrics-urls=")
                .arg("--unsafe-no-fsync=true")
                .env("HOME", d),
            d.join("etcd.log"),
        );

        let port = free_port();
        let mut apiserver = Proc::spawn(
            "kube-apiserver",
            Command::new(&apiserver_bin)
                .arg(format!("--etcd-servers={client_url}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                // The "kubernetes" Service's endpoints would have to be a
                // non-loopback address; nothing here uses that Service.
                .arg("--endpoint-reconciler-type=none")
                .arg(format!("--secure-port={port}"))
                .arg(format!("--cert-dir={}", d.join("certs").display()))
                .arg(format!("--tls-cert-file={}", tls_cert.display()))
                .arg(format!("--tls-private-key-file={}", tls_key.display()))
                .arg(format!("--token-auth-file={}", tokens.display()))
                .arg("--authorization-mode=RBAC")
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg(format!("--service-account-key-file={}", sa_pub.display()))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    sa_key.display()
                ))
                .arg("--service-cluster-ip-range=10.96.0.0/24")
                .arg("--profiling=false")
                .env("HOME", d),
            d.join("kube-apiserver.log"),
        );

        let admin = Client::new("127.0.0.1", port, ca_pem.as_bytes(), &admin_token);
        let deadline = Instant::now() + STARTUP_PATIENCE;
        loop {
            etcd.check();
            apiserver.check();
            // Connection errors are expected until the port is open.
            let last = match admin.try_request("GET", "/readyz", None, None) {
                Ok(r) if r.status == 200 => break,
                Ok(r) => format!("{}: {}", r.status, r.body),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "kube-apiserver not ready within {STARTUP_PATIENCE:?} (last /readyz: {last});\n\
                     kube-apiserver log tail:\n{}\netcd log tail:\n{}",
                    tail(&apiserver.log, 80),
                    tail(&etcd.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }

        let kube = RealKube {
            apiserver,
            etcd,
            dir,
            port,
            ca_pem,
            admin_token,
            pod_token,
            namespace,
            admin,
        };
        let r = kube.admin(
            "POST",
            "/api/v1/namespaces",
            Some("application/json"),
            Some(
                &json!({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": kube.namespace}})
                .to_string(),
            ),
        );
        assert_eq!(r.0, 201, "create namespace: {}", r.1);
        kube.write_service_account(root);
        kube
    }

    /// Writes `ca.crt`, `token` (the pod's) and `namespace` under
    /// `root/var/run/secrets/kubernetes.io/serviceaccount/`.
    pub fn write_service_account(&self, root: &Path) {
        let sa = root.join(SA_DIR);
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("ca.crt"), &self.ca_pem).unwrap();
        std::fs::write(sa.join("token"), &self.pod_token).unwrap();
        std::fs::write(sa.join("namespace"), &self.namespace).unwrap();
    }

    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT_HTTPS` (and
    /// `KUBERNETES_SERVICE_PORT`, which a kubelet sets too).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".into(),
                self.port.to_string(),
            ),
            ("KUBERNETES_SERVICE_PORT".into(), self.port.to_string()),
        ]
    }

    /// The namespace created for the test, the pod's namespace.
    pub fn namespace(&self) -> String {
        self.namespace.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The pod's bearer token (also in the `token` file).
    pub fn pod_token(&self) -> &str {
        &self.pod_token
    }

    /// The pod's user name.
    pub fn pod_user(&self) -> String {
        format!("system:serviceaccount:{}:{SERVICE_ACCOUNT}", self.namespace)
    }

    /// A client with the pod's token.
    pub fn pod_client(&self) -> Client {
        self.admin.with_token(&self.pod_token)
    }

    /// A client with the admin token (group `system:masters`).
    pub fn admin_client(&self) -> Client {
        self.admin.with_token(&self.admin_token)
    }

    /// The temporary directory of etcd's data, the certificates, the token
    /// file and the logs (removed on drop).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The process ids of kube-apiserver and etcd.
    pub fn pids(&self) -> (i32, i32) {
        (
            self.apiserver.child.id() as i32,
            self.etcd.child.id() as i32,
        )
    }

    /// The kube-apiserver log so far.
    pub fn apiserver_log(&self) -> String {
        std::fs::read_to_string(&self.apiserver.log).unwrap_or_default()
    }

    /// Grants the pod `verbs` on the secret `secret` (and only on it, by
    /// `resourceNames`) with a Role and a RoleBinding named after the
    /// secret; calling it again replaces the verbs (an empty list leaves a
    /// Role that allows nothing). Returns once the authorizer agrees: an
    /// SSAR as the pod is allowed for each granted verb and denied for the
    /// other common ones.
    pub fn grant(&self, secret: &str, verbs: &[&str]) {
        let ns = &self.namespace;
        let name = format!("containerboot-{secret}");
        // A rule must name at least one verb: no verbs, no rule.
        let rules = if verbs.is_empty() {
            json!([])
        } else {
            json!([{"apiGroups": [""], "resources": ["secrets"],
                    "resourceNames": [secret], "verbs": verbs}])
        };
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns},
            "rules": rules
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                          "name": self.pod_user()}]
        });
        // Server-side apply creates or replaces in one request.
        for (kind, obj) in [("roles", role), ("rolebindings", binding)] {
            let (status, body) = self.admin(
                "PATCH",
                &format!(
                    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{kind}/{name}?fieldManager=containerboot-test&force=true"
                ),
                Some("application/apply-patch+yaml"),
                Some(&obj.to_string()),
            );
            assert!(
                status == 200 || status == 201,
                "apply {kind}/{name}: {status} {body}"
            );
        }
        let pod = self.pod_client();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let wrong: Vec<&str> = SETTLE_VERBS
                .iter()
                .chain(verbs.iter())
                .copied()
                .filter(|v| pod.allowed(ns, v, secret) != verbs.contains(v))
                .collect();
            if wrong.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "RBAC for {secret} did not settle to {verbs:?}: still wrong for {wrong:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates or replaces the secret `name` (as admin) with these keys,
    /// given as plain text and stored base64 as Secret `data` is.
    pub fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let ns = &self.namespace;
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(B64.encode(v))))
            .collect();
        let mut obj = json!({"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": name, "namespace": ns}});
        if !data.is_empty() {
            obj["data"] = Value::Object(data);
        }
        let path = format!("/api/v1/namespaces/{ns}/secrets/{name}");
        let (status, body) = self.admin(
            "PUT",
            &path,
            Some("application/json"),
            Some(&obj.to_string()),
        );
        // PUT replaces an existing secret; a missing one is created by POST.
        if status == 404 {
            let (status, body) = self.admin(
                "POST",
                &format!("/api/v1/namespaces/{ns}/secrets"),
                Some("application/json"),
                Some(&obj.to_string()),
            );
            assert_eq!(status, 201, "create secret {name}: {body}");
        } else {
            assert_eq!(status, 200, "replace secret {name}: {body}");
        }
    }

    /// The secret's `data`, base64-decoded (values must be UTF-8), or None
    /// when there is no such secret. A secret without `data` gives an empty
    /// map.
    pub fn secret(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let obj = self.secret_object(name)?;
        Some(decode_data(&obj))
    }

    /// The whole secret object as admin reads it, or None on 404.
    pub fn secret_object(&self, name: &str) -> Option<Value> {
        let ns = &self.namespace;
        let (status, body) = self.admin(
            "GET",
            &format!("/api/v1/namespaces/{ns}/secrets/{name}"),
            None,
            None,
        );
        match status {
            200 => Some(serde_json::from_str(&body).expect("secret JSON")),
            404 => None,
            _ => panic!("GET secret {name}: {status} {body}"),
        }
    }

    /// Deletes the secret (as admin); a missing one is fine.
    pub fn delete_secret(&self, name: &str) {
        let ns = &self.namespace;
        let (status, body) = self.admin(
            "DELETE",
            &format!("/api/v1/namespaces/{ns}/secrets/{name}"),
            None,
            None,
        );
        assert!(
            status == 200 || status == 404,
            "DELETE secret {name}: {status} {body}"
        );
    }

    /// Any request as admin: (status, body).
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let r = self.admin.request(method, path, content_type, body);
        (r.status, r.body)
    }
}

impl Drop for RealKube {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kube-apiserver log tail:\n{}\netcd log tail:\n{}",
                tail(&self.apiserver.log, 40),
                tail(&self.etcd.log, 10)
            );
        }
        // The fields then drop in order: kube-apiserver, etcd, the directory.
    }
}

/// A command that runs `program` in a private mount namespace where
/// `root/var/run` is bind-mounted over `/var/run` (which is `/run` on
/// Debian), so the program finds the pod's service-account files at the
/// fixed in-cluster path `/var/run/secrets/kubernetes.io/serviceaccount`
/// (the real tailscaled reads them only there). Nothing changes outside that
/// namespace; the host's `/run` is hidden from the program. The process
/// spawned is `program` itself (`unshare` and `sh` exec into it). Needs
/// root and util-linux `unshare`. Append the program's arguments and env.
/// The program is killed if the spawning thread exits (`die_with_parent`).
pub fn with_pod_mounts(root: &Path, program: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--"])
        .args(["sh", "-ec", r#"mount --bind "$0" /var/run; exec "$@""#])
        .arg(root.join("var/run"))
        .arg(program);
    die_with_parent(&mut c);
    c
}

/// A Secret's `data`, base64-decoded; empty when it has none.
pub fn decode_data(secret: &Value) -> BTreeMap<String, String> {
    secret["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let bytes = B64
                        .decode(v.as_str().expect("data value is a string"))
                        .unwrap_or_else(|e| panic!("data[{k}] is not base64: {e}"));
                    (
                        k.clone(),
                        String::from_utf8(bytes)
                            .unwrap_or_else(|e| panic!("data[{k}] is not UTF-8: {e}")),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A program from the bin dir, or from the override variable; panics with
/// the way to get it.
fn program(name: &str) -> PathBuf {
    crate::harness::real_program(name)
        .unwrap_or_else(|e| panic!("{e}; run tests/real/setup (it builds the pinned {name})"))
}

/// 32 random bytes as hex, from the kernel.
fn random_token() -> String {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
