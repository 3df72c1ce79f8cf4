//! The fake Kubernetes API server (tests/support/kube.rs) driven through
//! ureq, the product's HTTP client, trusting only the fake's `ca.crt`. Each
//! behaviour the product relies on is asserted here, so a fake that drifts
//! from kube-apiserver fails these tests rather than passing a wrong client.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::kube::{FakeKube, Fault, Recorded};

const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const SECRET: &str = "/api/v1/namespaces/default/secrets/tailscale";
const SSAR: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
const JSON_PATCH: &str = "application/json-patch+json";
const SMP: &str = "application/strategic-merge-patch+json";
const MERGE: &str = "application/merge-patch+json";

/// A fake plus a client set up the way an in-cluster client is: address
/// from `env()`, CA and token from the service-account files.
struct Api {
    fake: FakeKube,
    agent: ureq::Agent,
    base: String,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: u16,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts a `Status` failure object served as JSON and returns it.
    fn status_object(&self, code: u16, reason: &str) -> Value {
        assert_eq!(self.status, code, "body: {}", self.body);
        assert_eq!(self.content_type.as_deref(), Some("application/json"));
        let v = self.json();
        assert_eq!(v["kind"], "Status", "{v}");
        assert_eq!(v["apiVersion"], "v1", "{v}");
        assert_eq!(v["metadata"], json!({}), "{v}");
        assert_eq!(v["status"], "Failure", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["reason"], reason, "{v}");
        v
    }
}

fn agent(fake: &FakeKube, timeout: Option<Duration>) -> ureq::Agent {
    let pem = std::fs::read(fake.service_account_dir().join("ca.crt")).expect("ca.crt");
    let ca = ureq::tls::Certificate::from_pem(&pem).expect("ca.crt is PEM");
    // ureq is built without a default provider (as in the product): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(timeout)
        .build()
        .into()
}

fn api_in(namespace: Option<&str>) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = match namespace {
        Some(ns) => FakeKube::start_in(dir.path(), ns),
        None => FakeKube::start(dir.path()),
    };
    let env = fake.env();
    let var = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("env() lacks {k}: {env:?}"))
    };
    let base = format!(
        "https://{}:{}",
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT_HTTPS")
    );
    Api {
        agent: agent(&fake, Some(Duration::from_secs(30))),
        fake,
        base,
        _dir: dir,
    }
}

fn api() -> Api {
    api_in(None)
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn map(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Api {
    /// The token in the file, as a client reads it.
    fn token(&self) -> String {
        std::fs::read_to_string(self.fake.service_account_dir().join("token")).expect("token")
    }

    fn try_send_with(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> Result<Answer, ureq::Error> {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(t) = token {
            b = b.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            b = b.header("Content-Type", ct);
        }
        let mut resp = match body {
            Some(body) => agent.run(b.body(body.to_string()).unwrap())?,
            None => agent.run(b.body(()).unwrap())?,
        };
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (content_type, retry_after) = (header("content-type"), header("retry-after"));
        Ok(Answer {
            status: resp.status().as_u16(),
            content_type,
            retry_after,
            body: resp.body_mut().read_to_string()?,
        })
    }

    fn try_send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> Result<Answer, ureq::Error> {
        let token = self.token();
        self.try_send_with(&self.agent, method, path, Some(&token), content_type, body)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        self.try_send(method, path, content_type, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None, None)
    }

    fn patch(&self, path: &str, content_type: &str, body: &str) -> Answer {
        self.send("PATCH", path, Some(content_type), Some(body))
    }

    fn review(&self, attributes: Value) -> Answer {
        let body = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        });
        self.send(
            "POST",
            SSAR,
            Some("application/json"),
            Some(&body.to_string()),
        )
    }

    fn resource_version(&self) -> String {
        let v = self.get(SECRET).json();
        v["metadata"]["resourceVersion"]
            .as_str()
            .expect("resourceVersion")
            .to_string()
    }
}

#[test]
fn service_account_files_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start_in(dir.path(), "tailnet");
    let sa = dir
        .path()
        .join("var/run/secrets/kubernetes.io/serviceaccount");
    assert_eq!(sa, fake.service_account_dir());
    assert_eq!(
        std::fs::read_to_string(sa.join("token")).unwrap(),
        "token-1"
    );
    assert_eq!(
        std::fs::read_to_string(sa.join("namespace")).unwrap(),
        "tailnet"
    );
    let ca = std::fs::read_to_string(sa.join("ca.crt")).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(ca, fake.ca_pem());
    // The kubelet's layout: files are symlinks through `..data`.
    for f in ["token", "namespace", "ca.crt"] {
        assert_eq!(
            std::fs::read_link(sa.join(f)).unwrap(),
            std::path::PathBuf::from(format!("..data/{f}"))
        );
    }
    assert_eq!(fake.namespace(), "tailnet");
    assert_eq!(
        fake.env(),
        vec![
            (
                "KUBERNETES_SERVICE_HOST".to_string(),
                "127.0.0.1".to_string()
            ),
            (
                "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
                fake.port().to_string()
            ),
        ]
    );
    assert_eq!(
        FakeKube::start(dir.path()).namespace(),
        "default",
        "start() uses the default namespace"
    );
}

#[test]
fn tls_is_real() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    // The name `localhost` is in the certificate too.
    let url = format!("https://localhost:{}{SECRET}", api.fake.port());
    let resp = api
        .agent
        .get(&url)
        .header("Authorization", format!("Bearer {}", api.token()))
        .call()
        .expect("GET via localhost");
    assert_eq!(resp.status().as_u16(), 200);
    // A client trusting another CA refuses the fake's certificate.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_pem = other.self_signed(&other_key).unwrap().pem();
    let other_ca = ureq::tls::Certificate::from_pem(other_pem.as_bytes()).unwrap();
    let stranger: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[other_ca]))
                .build(),
        )
        .http_status_as_error(false)
        .build()
        .into();
    let err = stranger
        .get(format!("{}{SECRET}", api.base))
        .call()
        .expect_err("the fake's CA is not trusted");
    assert!(
        matches!(&err, ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
            && err.to_string().contains("UnknownIssuer"),
        "expected an unknown-issuer TLS failure, got {err:?}"
    );
}

#[test]
fn missing_or_unknown_token_is_401() {
    let api = api();
    api.fake.put_secret("tailscale", &[("authkey", "tskey-1")]);
    let want = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401});
    for token in [None, Some("nope"), Some("")] {
        let a = api
            .try_send_with(&api.agent, "GET", SECRET, token, None, None)
            .unwrap();
        a.status_object(401, "Unauthorized");
        assert_eq!(a.json(), want, "token {token:?}");
    }
    let a = api
        .try_send_with(
            &api.agent,
            "POST",
            SSAR,
            None,
            Some("application/json"),
            Some("{}"),
        )
        .unwrap();
    assert_eq!(a.json(), want);
    let recorded: Vec<Option<String>> = api.fake.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(recorded, vec![None, Some("nope".to_string()), None, None]);
    assert!(api.fake.requests().iter().all(|r| r.status == 401));
}

#[test]
fn self_subject_access_reviews_answer_per_verb() {
    let api = api();
    let attrs = |verb: &str| json!({"namespace": "default", "verb": verb, "resource": "secrets", "name": "tailscale"});
    for verb in ["get", "update", "patch"] {
        let a = api.review(attrs(verb));
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.content_type.as_deref(), Some("application/json"));
        let v = a.json();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(v["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(v["spec"]["resourceAttributes"], attrs(verb), "echoed");
        assert_eq!(v["status"]["allowed"], true, "{verb}: {v}");
        assert!(
            v["status"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
    for verb in ["create", "delete", "list", "watch"] {
        let v = api.review(attrs(verb)).json();
        assert_eq!(v["status"], json!({"allowed": false}), "{verb}");
    }
    api.fake.allow("patch", false);
    api.fake.allow("create", true);
    assert_eq!(
        api.review(attrs("patch")).json()["status"]["allowed"],
        false
    );
    assert_eq!(
        api.review(attrs("create")).json()["status"]["allowed"],
        true
    );
    // Other resources and other namespaces are outside the Role.
    let configmaps = json!({"namespace": "default", "verb": "get", "resource": "configmaps"});
    assert_eq!(api.review(configmaps).json()["status"]["allowed"], false);
    let elsewhere = json!({"namespace": "kube-system", "verb": "get", "resource": "secrets"});
    assert_eq!(api.review(elsewhere).json()["status"]["allowed"], false);
    // A review without attributes is invalid.
    let a = api.send(
        "POST",
        SSAR,
        Some("application/json"),
        Some(r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{}}"#),
    );
    a.status_object(422, "Invalid");
    api.send("GET", SSAR, None, None)
        .status_object(405, "MethodNotAllowed");
}

#[test]
fn get_serves_base64_data_and_metadata() {
    let api = api();
    api.fake.put_secret(
        "tailscale",
        &[("authkey", "tskey-abc"), ("device_id", "nid")],
    );
    let a = api.get(SECRET);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.content_type.as_deref(), Some("application/json"));
    let v = a.json();
    assert_eq!(v["kind"], "Secret");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["type"], "Opaque");
    assert_eq!(
        v["data"],
        json!({"authkey": b64("tskey-abc"), "device_id": b64("nid")})
    );
    let meta = &v["metadata"];
    assert_eq!(meta["name"], "tailscale");
    assert_eq!(meta["namespace"], "default");
    for field in ["resourceVersion", "uid", "creationTimestamp"] {
        assert!(
            meta[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} in {meta}"
        );
    }
    assert_eq!(api.fake.secret_object("tailscale").unwrap(), v);
    assert_eq!(
        api.fake.secret("tailscale"),
        Some(map(&[("authkey", "tskey-abc"), ("device_id", "nid")]))
    );
    let r = &api.fake.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", SECRET));
    assert_eq!(r.token.as_deref(), Some("token-1"));
    assert_eq!(r.accept.as_deref(), Some("application/json"));
    assert_eq!(r.status, 200);
}

#[test]
fn a_secret_without_keys_has_no_data_member() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    let v = api.get(SECRET).json();
    assert!(v.get("data").is_none(), "{v}");
    assert_eq!(api.fake.secret("tailscale"), Some(map(&[])));
    // Removing the last key leaves no `data` member either.
    api.fake.put_secret("tailscale", &[("authkey", "k")]);
    let a = api.patch(
        SECRET,
        JSON_PATCH,
        r#"[{"op":"remove","path":"/data/authkey"}]"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.json().get("data").is_none(), "{}", a.body);
    assert!(api.get(SECRET).json().get("data").is_none());
}

#[test]
fn absent_secrets_are_404_status() {
    let api = api();
    let v = api
        .get("/api/v1/namespaces/default/secrets/nope")
        .status_object(404, "NotFound");
    assert_eq!(v["message"], r#"secrets "nope" not found"#);
    assert_eq!(v["details"], json!({"name": "nope", "kind": "secrets"}));
    api.fake.put_secret("tailscale", &[("a", "b")]);
    assert_eq!(api.get(SECRET).status, 200);
    api.fake.delete_secret("tailscale");
    assert_eq!(api.fake.secret("tailscale"), None);
    api.get(SECRET).status_object(404, "NotFound");
    let a = api.patch(SECRET, SMP, r#"{"data":{"a":null}}"#);
    assert_eq!(
        a.status_object(404, "NotFound")["message"],
        r#"secrets "tailscale" not found"#
    );
    let a = api.patch(SECRET, JSON_PATCH, r#"[{"op":"remove","path":"/data/a"}]"#);
    a.status_object(404, "NotFound");
    // A path nothing serves.
    let v = api
        .get("/api/v1/namespaces/default/widgets")
        .status_object(404, "NotFound");
    assert_eq!(
        v["message"],
        "the server could not find the requested resource"
    );
}

#[test]
fn json_patch_removes_and_rejects_a_missing_key_with_422() {
    let api = api();
    api.fake
        .put_secret("tailscale", &[("authkey", "tskey-1"), ("device_id", "n1")]);
    let rv = api.resource_version();
    let remove = r#"[{"op":"remove","path":"/data/authkey"}]"#;
    let a = api.patch(SECRET, JSON_PATCH, remove);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["data"], json!({"device_id": b64("n1")}));
    assert_eq!(
        api.fake.secret("tailscale"),
        Some(map(&[("device_id", "n1")]))
    );
    let rv2 = api.resource_version();
    assert_ne!(rv, rv2, "a change bumps resourceVersion");

    let v = api
        .patch(SECRET, JSON_PATCH, remove)
        .status_object(422, "Invalid");
    assert_eq!(
        v["message"],
        "the server rejected our request due to an error in our request"
    );
    assert_eq!(
        api.fake.secret("tailscale"),
        Some(map(&[("device_id", "n1")]))
    );
    assert_eq!(
        api.resource_version(),
        rv2,
        "a failed patch changes nothing"
    );

    // add and replace on /data/KEY.
    let ops = json!([
        {"op": "add", "path": "/data/authkey", "value": b64("tskey-2")},
        {"op": "replace", "path": "/data/device_id", "value": b64("n2")},
    ]);
    let a = api.patch(SECRET, JSON_PATCH, &ops.to_string());
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        api.fake.secret("tailscale"),
        Some(map(&[("authkey", "tskey-2"), ("device_id", "n2")]))
    );
    // Replacing a missing key fails too, and so does adding under a secret
    // without `data`.
    let replace = r#"[{"op":"replace","path":"/data/nope","value":"eA=="}]"#;
    api.patch(SECRET, JSON_PATCH, replace)
        .status_object(422, "Invalid");
    api.fake.put_secret("tailscale", &[]);
    let add = r#"[{"op":"add","path":"/data/authkey","value":"eA=="}]"#;
    api.patch(SECRET, JSON_PATCH, add)
        .status_object(422, "Invalid");
    // Not a patch at all.
    api.patch(SECRET, JSON_PATCH, r#"{"op":"remove"}"#)
        .status_object(400, "BadRequest");
}

#[test]
fn strategic_merge_patch_merges_data_and_records_the_field_manager() {
    let api = api();
    api.fake
        .put_secret("tailscale", &[("authkey", "tskey-1"), ("keep", "me")]);
    let rv = api.resource_version();
    let path = format!("{SECRET}?fieldManager=tailscale-container");
    let body = json!({"data": {
        "device_id": b64("nid"),
        "device_fqdn": b64("host.tailnet.ts.net."),
        "device_ips": b64(r#"["100.64.0.1"]"#),
        "authkey": null,
    }});
    let a = api.patch(&path, SMP, &body.to_string());
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        api.fake.secret("tailscale"),
        Some(map(&[
            ("device_fqdn", "host.tailnet.ts.net."),
            ("device_id", "nid"),
            ("device_ips", r#"["100.64.0.1"]"#),
            ("keep", "me"),
        ]))
    );
    assert_ne!(api.resource_version(), rv);
    let r = api
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(r.path, SECRET);
    assert_eq!(r.query.as_deref(), Some("fieldManager=tailscale-container"));
    assert_eq!(r.content_type.as_deref(), Some(SMP));
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), body);

    // The same patch again changes nothing: resourceVersion stays.
    let rv = api.resource_version();
    assert_eq!(api.patch(&path, SMP, &body.to_string()).status, 200);
    assert_eq!(api.resource_version(), rv);
    // A key that is not there set to null (https_endpoint removed when it
    // was never written): 200, nothing changes.
    let a = api.patch(&path, SMP, r#"{"data":{"https_endpoint":null}}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(api.resource_version(), rv);

    // merge-patch+json does the same for data; parameters on the type are fine.
    let a = api.patch(
        SECRET,
        &format!("{MERGE}; charset=utf-8"),
        r#"{"data":{"keep":null}}"#,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!api.fake.secret("tailscale").unwrap().contains_key("keep"));
    // Values must be base64.
    let a = api.patch(SECRET, SMP, r#"{"data":{"x":"not base64!"}}"#);
    a.status_object(422, "Invalid");
    // Keys must be valid config keys.
    let a = api.patch(SECRET, SMP, &json!({"data": {"a/b": b64("x")}}).to_string());
    let v = a.status_object(422, "Invalid");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with(r#"Secret "tailscale" is invalid: data[a/b]"#),
        "{v}"
    );
}

#[test]
fn other_patch_types_are_415() {
    let api = api();
    api.fake.put_secret("tailscale", &[("authkey", "k")]);
    for ct in ["application/json", "text/plain"] {
        let v = api
            .patch(SECRET, ct, r#"{"data":{"authkey":null}}"#)
            .status_object(415, "UnsupportedMediaType");
        assert_eq!(
            v["message"],
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
        );
    }
    assert_eq!(api.fake.secret("tailscale"), Some(map(&[("authkey", "k")])));
}

#[test]
fn denied_verbs_and_other_namespaces_are_403() {
    let api = api();
    api.fake.put_secret("tailscale", &[("authkey", "k")]);
    api.fake.allow("patch", false);
    let v = api
        .patch(SECRET, SMP, r#"{"data":{"authkey":null}}"#)
        .status_object(403, "Forbidden");
    assert_eq!(
        v["message"],
        r#"secrets "tailscale" is forbidden: User "system:serviceaccount:default:tailscale" cannot patch resource "secrets" in API group "" in the namespace "default""#
    );
    assert_eq!(api.fake.secret("tailscale"), Some(map(&[("authkey", "k")])));
    api.get("/api/v1/namespaces/kube-system/secrets/tailscale")
        .status_object(403, "Forbidden");
    api.fake.allow("get", false);
    api.get(SECRET).status_object(403, "Forbidden");
}

#[test]
fn update_replaces_and_checks_resource_version() {
    let api = api();
    api.fake.put_secret("tailscale", &[("authkey", "k")]);
    let mut obj = api.get(SECRET).json();
    obj["data"] = json!({"new": b64("v")});
    let a = api.send(
        "PUT",
        SECRET,
        Some("application/json"),
        Some(&obj.to_string()),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(api.fake.secret("tailscale"), Some(map(&[("new", "v")])));
    // The old resourceVersion is stale now.
    let v = api
        .send(
            "PUT",
            SECRET,
            Some("application/json"),
            Some(&obj.to_string()),
        )
        .status_object(409, "Conflict");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified")
    );
    // Create and delete need their verbs.
    let new = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other"}});
    api.send(
        "POST",
        SECRETS,
        Some("application/json"),
        Some(&new.to_string()),
    )
    .status_object(403, "Forbidden");
    api.fake.allow("create", true);
    let a = api.send(
        "POST",
        SECRETS,
        Some("application/json"),
        Some(&new.to_string()),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(api.fake.secret("other"), Some(map(&[])));
    api.send(
        "POST",
        SECRETS,
        Some("application/json"),
        Some(&new.to_string()),
    )
    .status_object(409, "AlreadyExists");
    api.send("POST", SECRET, Some("application/json"), Some("{}"))
        .status_object(405, "MethodNotAllowed");
}

#[test]
fn token_rotation_invalidates_the_old_token() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    assert_eq!(api.get(SECRET).status, 200);
    api.fake.rotate_token("token-2");
    assert_eq!(api.token(), "token-2");
    let old = api
        .try_send_with(&api.agent, "GET", SECRET, Some("token-1"), None, None)
        .unwrap();
    old.status_object(401, "Unauthorized");
    let new = api
        .try_send_with(&api.agent, "GET", SECRET, Some("token-2"), None, None)
        .unwrap();
    assert_eq!(new.status, 200, "{}", new.body);
    // Still the kubelet's layout after the swap.
    let sa = api.fake.service_account_dir();
    assert_eq!(
        std::fs::read_link(sa.join("token")).unwrap(),
        std::path::PathBuf::from("..data/token")
    );
    assert_eq!(
        std::fs::read_to_string(sa.join("namespace")).unwrap(),
        "default"
    );
    api.fake.also_accept("side-token");
    assert_eq!(api.token(), "token-2", "also_accept leaves the file alone");
    for t in ["side-token", "token-2"] {
        let a = api
            .try_send_with(&api.agent, "GET", SECRET, Some(t), None, None)
            .unwrap();
        assert_eq!(a.status, 200, "{t}");
    }
}

#[test]
fn fault_status_then_success() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    api.fake.inject("GET", SECRET, Fault::Status(500), 2);
    for _ in 0..2 {
        let v = api.get(SECRET).status_object(500, "InternalError");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("Internal error occurred")
        );
    }
    assert_eq!(api.get(SECRET).status, 200);
    let statuses: Vec<u16> = api.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);

    // Only matching requests take the fault: method and path prefix.
    api.fake.inject("PATCH", "/api/", Fault::Status(429), 1);
    assert_eq!(api.get(SECRET).status, 200);
    let a = api.patch(SECRET, SMP, r#"{"data":{}}"#);
    a.status_object(429, "TooManyRequests");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    api.fake
        .inject("*", "/apis/authorization.k8s.io", Fault::Status(503), 1);
    api.review(json!({"namespace": "default", "verb": "get", "resource": "secrets"}))
        .status_object(503, "ServiceUnavailable");
    assert_eq!(
        api.review(json!({"namespace": "default", "verb": "get", "resource": "secrets"}))
            .status,
        201
    );
}

#[test]
fn fault_unauthorized_despite_a_good_token() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    api.fake.inject("GET", SECRET, Fault::Unauthorized, 1);
    api.get(SECRET).status_object(401, "Unauthorized");
    assert_eq!(api.get(SECRET).status, 200);
    let r = api.fake.requests();
    assert_eq!(r[0].token.as_deref(), Some("token-1"));
    assert_eq!(r[0].status, 401);
}

#[test]
fn fault_delay_beyond_the_client_timeout_is_a_timeout_and_still_lands() {
    let api = api();
    api.fake.put_secret("tailscale", &[("authkey", "k")]);
    api.fake.inject(
        "PATCH",
        SECRET,
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let impatient = agent(&api.fake, Some(Duration::from_millis(300)));
    let start = Instant::now();
    let token = api.token();
    let err = api
        .try_send_with(
            &impatient,
            "PATCH",
            SECRET,
            Some(&token),
            Some(SMP),
            Some(r#"{"data":{"authkey":null}}"#),
        )
        .err()
        .expect("the delayed PATCH times out");
    assert!(matches!(err, ureq::Error::Timeout(_)), "got {err:?}");
    assert!(start.elapsed() < Duration::from_millis(1500));
    // The server finishes the request anyway, as the real one may.
    let r = api.fake.wait_for_requests("the delayed PATCH", |r| {
        r.iter().any(|r| r.method == "PATCH")
    });
    assert_eq!(r.last().unwrap().status, 200);
    assert_eq!(api.fake.secret("tailscale"), Some(map(&[])));
    // Without a fault the same client is fast enough.
    let ok = api
        .try_send_with(&impatient, "GET", SECRET, Some(&token), None, None)
        .unwrap();
    assert_eq!(ok.status, 200);
}

#[test]
fn fault_drop_is_a_connection_error_and_changes_nothing() {
    let api = api();
    api.fake.put_secret("tailscale", &[("authkey", "k")]);
    api.fake.inject("*", SECRET, Fault::Drop, 1);
    let err = api
        .try_send(
            "PATCH",
            SECRET,
            Some(SMP),
            Some(r#"{"data":{"authkey":null}}"#),
        )
        .err()
        .expect("a dropped connection is an error");
    // rustls reports the unannounced close as an unexpected EOF.
    assert!(
        matches!(&err, ureq::Error::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        )),
        "expected a connection error, got {err:?}"
    );
    let r: Vec<Recorded> = api.fake.requests();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].method.as_str(), r[0].status), ("PATCH", 0));
    assert_eq!(api.fake.secret("tailscale"), Some(map(&[("authkey", "k")])));
    assert_eq!(api.get(SECRET).status, 200, "the next request is served");
}

#[test]
fn fault_garbage_is_not_json() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    api.fake.inject("GET", "/", Fault::Garbage, 1);
    let a = api.get(SECRET);
    assert_eq!(a.status, 200);
    assert!(
        serde_json::from_str::<Value>(&a.body).is_err(),
        "{}",
        a.body
    );
    assert!(serde_json::from_str::<Value>(&api.get(SECRET).body).is_ok());
}

#[test]
fn requests_are_recorded_and_can_be_awaited_and_cleared() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    let fake = &api.fake;
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            api.get(SECRET);
        });
        let r = fake.wait_for_requests("a GET", |r| r.iter().any(|r| r.method == "GET"));
        assert_eq!(r.len(), 1);
    });
    fake.clear_requests();
    assert!(fake.requests().is_empty());
    api.get(SECRET);
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn dropping_the_fake_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start(dir.path());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], fake.port()));
    // An idle connection stays open while the fake lives...
    let idle = std::net::TcpStream::connect(addr).expect("the fake listens");
    drop(fake);
    // ...and is closed with it; nothing listens any more.
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut &idle, &mut buf);
    assert!(matches!(n, Ok(0) | Err(_)), "still open: {n:?}");
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn accept_must_admit_json() {
    let api = api();
    api.fake.put_secret("tailscale", &[]);
    let get = |accept: &str| {
        let mut resp = api
            .agent
            .get(format!("{}{SECRET}", api.base))
            .header("Authorization", format!("Bearer {}", api.token()))
            .header("Accept", accept)
            .call()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    };
    for ok in ["*/*", "application/json, */*", "application/*;q=0.5"] {
        assert_eq!(get(ok).0, 200, "{ok}");
    }
    let (status, body) = get("text/html");
    assert_eq!(status, 406, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "NotAcceptable");
}
