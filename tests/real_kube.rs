//! The real Kubernetes API server (`kube-apiserver` + `etcd`, pinned in
//! `tests/real/setup`, see tests/real/README.md) as containerboot uses it.
//!
//! The harness (`tests/real/kube.rs`) is proved here, and so is every
//! behaviour of the server containerboot depends on (docs: docs/protocols.md
//! §4), asked the way the product asks: as the pod's service account, over
//! HTTPS to `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT_HTTPS`,
//! trusting only the `ca.crt` and sending only the `token` found under
//! `<root>/var/run/secrets/kubernetes.io/serviceaccount/`.
//!
//! Every test runs in its own network namespace (`support::isolate`): it
//! needs root and the real programs built (`tests/real/setup`, or
//! `CONTAINERBOOT_REAL_BIN`); without them it is reported ignored with the
//! reason, and fails when CI is set (`tests/support/harness.rs`).

#[path = "support/harness.rs"]
mod harness;
#[path = "real/kube.rs"]
mod kube;
#[path = "real/support.rs"]
mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use harness::Need;
use kube::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The secret containerboot is told to use (TS_KUBE_SECRET's default).
const SECRET: &str = "tailscale";

/// The real programs this suite runs.
const REAL_PROGRAMS: &[&str] = &[
    "tailscaled",
    "tailscale",
    "headscale",
    "etcd",
    "kube-apiserver",
];

/// A started server, the pod's root with its service-account files, and a
/// client that knows only what a pod knows (the env and those files).
struct Pod {
    // Dropped first: the pod's files, then the servers.
    root: tempfile::TempDir,
    kube: RealKube,
    client: Client,
}

impl Pod {
    fn ns(&self) -> String {
        self.kube.namespace()
    }

    fn secret_path(&self, name: &str) -> String {
        format!("/api/v1/namespaces/{}/secrets/{name}", self.ns())
    }

    fn get(&self, name: &str) -> Reply {
        self.client
            .request("GET", &self.secret_path(name), None, None)
    }

    fn json_patch(&self, name: &str, patch: &str) -> Reply {
        self.client.request(
            "PATCH",
            &self.secret_path(name),
            Some("application/json-patch+json"),
            Some(patch),
        )
    }

    fn merge_patch(&self, name: &str, patch: &Value) -> Reply {
        self.client.request(
            "PATCH",
            &format!(
                "{}?fieldManager=tailscale-container",
                self.secret_path(name)
            ),
            Some("application/strategic-merge-patch+json"),
            Some(&patch.to_string()),
        )
    }
}

/// Isolates this test's thread in a network namespace and starts the
/// server there (the harness has checked root and the real programs).
fn pod() -> Pod {
    support::real_bin();
    support::isolate();
    let root = tempfile::tempdir().expect("tempdir");
    let kube = RealKube::start(root.path());
    let client = Client::in_cluster(root.path(), &kube.env());
    Pod { root, kube, client }
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

/// The `Status` object the server sends for an error, as JSON.
fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn forbidden(p: &Pod, verb: &str, name: &str) -> Value {
    status(
        403,
        "Forbidden",
        &format!(
            "secrets \"{name}\" is forbidden: User \"{}\" cannot {verb} resource \"secrets\" \
             in API group \"\" in the namespace \"{}\"",
            p.kube.pod_user(),
            p.ns()
        ),
        Some(json!({"name": name, "kind": "secrets"})),
    )
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn the_harness_serves_the_pod_and_cleans_up() {
    let p = pod();
    // The pod's files.
    let sa = p.root.path().join(SA_DIR);
    let read = |f: &str| std::fs::read_to_string(sa.join(f)).unwrap();
    assert!(
        read("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"),
        "{}",
        read("ca.crt")
    );
    assert_eq!(read("token"), p.kube.pod_token());
    assert_eq!(read("namespace"), "tailscale");
    let env = p.kube.env();
    assert!(env.contains(&("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into())));
    assert!(env.contains(&(
        "KUBERNETES_SERVICE_PORT_HTTPS".into(),
        p.kube.port().to_string()
    )));

    // The server is the pinned release, ready, and knows the pod's token
    // as the service account's user with the service-account groups.
    let v = p.client.request("GET", "/version", None, None);
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.json()["gitVersion"], "v1.37.2", "{}", v.body);
    let r = p.client.request("GET", "/readyz", None, None);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let who = p.client.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some("application/json"),
        Some(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#),
    );
    assert_eq!(who.status, 201, "{}", who.body);
    let user = &who.json()["status"]["userInfo"];
    assert_eq!(
        user["username"], "system:serviceaccount:tailscale:containerboot",
        "{user}"
    );
    assert_eq!(
        user["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:tailscale",
            "system:authenticated"
        ]),
        "{user}"
    );

    // put/secret/delete as admin.
    p.kube.put_secret("s", &[("a", "1"), ("b", "two")]);
    assert_eq!(p.kube.secret("s"), Some(map(&[("a", "1"), ("b", "two")])));
    p.kube.put_secret("s", &[("c", "3")]);
    assert_eq!(p.kube.secret("s"), Some(map(&[("c", "3")])));
    p.kube.delete_secret("s");
    assert_eq!(p.kube.secret("s"), None);
    p.kube.delete_secret("s");

    // Dropping stops both servers and removes their directory.
    let (apiserver, etcd) = p.kube.pids();
    let dir = p.kube.dir();
    assert!(support::alive(apiserver) && support::alive(etcd));
    drop(p);
    assert!(
        !support::alive(apiserver),
        "kube-apiserver {apiserver} still runs"
    );
    assert!(!support::alive(etcd), "etcd {etcd} still runs");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

fn servers_die_with_the_thread_that_started_them() {
    let p = pod();
    // A second server started by a thread (in this thread's network
    // namespace) that ends without dropping it, as a killed test would.
    let root = p.root.path().join("other");
    let (pids, dir) = std::thread::spawn(move || {
        let k = RealKube::start(&root);
        let out = (k.pids(), k.dir());
        std::mem::forget(k);
        out
    })
    .join()
    .unwrap();
    support::eventually("the forgotten servers to be killed", || {
        (!support::alive(pids.0) && !support::alive(pids.1)).then_some(())
    });
    std::fs::remove_dir_all(dir).unwrap();
    // Reap them: they are this process's children.
    for pid in [pids.0, pids.1] {
        let _ = rustix::process::waitpid(
            rustix::process::Pid::from_raw(pid),
            rustix::process::WaitOptions::empty(),
        );
    }
}

fn ssar_is_201_with_allowed_per_granted_verb() {
    let p = pod();
    let ns = p.ns();
    p.kube.grant(SECRET, &["get", "update"]);
    for (verb, allowed) in [
        ("get", true),
        ("update", true),
        ("patch", false),
        ("create", false),
    ] {
        let r = p.client.ssar(&ns, verb, SECRET);
        assert_eq!(r.status, 201, "{verb}: {}", r.body);
        let v = r.json();
        assert_eq!(v["kind"], "SelfSubjectAccessReview", "{v}");
        assert_eq!(v["apiVersion"], "authorization.k8s.io/v1", "{v}");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": ns, "verb": verb, "resource": "secrets", "name": SECRET}),
            "{v}"
        );
        assert_eq!(v["status"]["allowed"], allowed, "{verb}: {v}");
        // An allowed review says why; a denied one (no rule matched) has
        // neither a reason nor `denied`.
        if allowed {
            assert_eq!(
                v["status"]["reason"],
                format!(
                    "RBAC: allowed by RoleBinding \"containerboot-{SECRET}/{ns}\" of Role \
                     \"containerboot-{SECRET}\" to User \"{}\"",
                    p.kube.pod_user()
                ),
                "{v}"
            );
        } else {
            assert_eq!(v["status"], json!({"allowed": false}), "{v}");
        }
    }
    // Only the named secret: resourceNames is honoured.
    assert!(!p.client.allowed(&ns, "get", "another-secret"));
    // Granting again replaces the verbs.
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    assert!(p.client.allowed(&ns, "patch", SECRET));
    p.kube.grant(SECRET, &["get"]);
    assert!(p.client.allowed(&ns, "get", SECRET));
    assert!(!p.client.allowed(&ns, "update", SECRET));
    assert!(!p.client.allowed(&ns, "patch", SECRET));
    p.kube.grant(SECRET, &[]);
    assert!(!p.client.allowed(&ns, "get", SECRET));
    // A review does not look at whether the secret exists.
    assert_eq!(p.kube.secret(SECRET), None);
}

fn get_secret_gives_base64_data_and_no_data_member_when_empty() {
    let p = pod();
    p.kube
        .put_secret(SECRET, &[("authkey", "tskey-auth-xyz"), ("other", "x")]);
    p.kube.grant(SECRET, &["get", "update"]);
    let r = p.get(SECRET);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        v["data"],
        json!({"authkey": b64("tskey-auth-xyz"), "other": b64("x")}),
        "{v}"
    );
    // The rest containerboot ignores.
    assert_eq!(v["kind"], "Secret");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["type"], "Opaque");
    assert_eq!(v["metadata"]["name"], SECRET);
    assert_eq!(v["metadata"]["namespace"], p.ns());

    // A secret created without keys, and one created with `"data": {}`:
    // neither has a `data` member.
    p.kube.put_secret("empty", &[]);
    let (st, body) = p.kube.admin(
        "POST",
        &format!("/api/v1/namespaces/{}/secrets", p.ns()),
        Some("application/json"),
        Some(r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"empty-map"},"data":{}}"#),
    );
    assert_eq!(st, 201, "{body}");
    for name in ["empty", "empty-map"] {
        p.kube.grant(name, &["get"]);
        let r = p.get(name);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert!(v.get("data").is_none(), "{name} has a data member: {v}");
        assert_eq!(v["type"], "Opaque", "{v}");
    }
}

fn a_missing_secret_is_a_404_status_or_403_without_get() {
    let p = pod();
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    let not_found = status(
        404,
        "NotFound",
        &format!("secrets \"{SECRET}\" not found"),
        Some(json!({"name": SECRET, "kind": "secrets"})),
    );
    let r = p.get(SECRET);
    assert_eq!((r.status, r.json()), (404, not_found.clone()));
    // PATCH of a missing secret: the same 404 (not 422).
    let r = p.json_patch(SECRET, r#"[{"op":"remove","path":"/data/authkey"}]"#);
    assert_eq!((r.status, r.json()), (404, not_found.clone()));
    let r = p.merge_patch(SECRET, &json!({"data": {"device_id": b64("x")}}));
    assert_eq!((r.status, r.json()), (404, not_found));
    assert_eq!(p.kube.secret(SECRET), None, "a PATCH created the secret");
    // Without `get` the answer is 403, whether the secret exists or not:
    // authorization comes first.
    let r = p.get("elsewhere");
    assert_eq!(
        (r.status, r.json()),
        (403, forbidden(&p, "get", "elsewhere"))
    );
    p.kube.put_secret("elsewhere", &[("k", "v")]);
    let r = p.get("elsewhere");
    assert_eq!(
        (r.status, r.json()),
        (403, forbidden(&p, "get", "elsewhere"))
    );
}

fn json_patch_remove_of_a_missing_key_is_422() {
    let p = pod();
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    let remove_authkey = r#"[{"op":"remove","path":"/data/authkey"}]"#;
    // What the server answers when the key is not there. The message and
    // details say nothing about the key.
    let invalid = status(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
        Some(json!({})),
    );
    p.kube.put_secret(SECRET, &[("device_id", "n1")]);
    let r = p.json_patch(SECRET, remove_authkey);
    assert_eq!((r.status, r.json()), (422, invalid.clone()), "{}", r.body);
    assert_eq!(p.kube.secret(SECRET), Some(map(&[("device_id", "n1")])));
    // The same when the secret has no `data` member at all.
    p.kube.put_secret(SECRET, &[]);
    let r = p.json_patch(SECRET, remove_authkey);
    assert_eq!((r.status, r.json()), (422, invalid), "{}", r.body);

    // A present key: 200 with the patched secret, other keys kept.
    p.kube
        .put_secret(SECRET, &[("authkey", "tskey-1"), ("device_id", "n1")]);
    let r = p.json_patch(SECRET, remove_authkey);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"], json!({"device_id": b64("n1")}));
    assert_eq!(p.kube.secret(SECRET), Some(map(&[("device_id", "n1")])));
    // Removing the last key leaves a secret without a `data` member.
    let r = p.json_patch(SECRET, r#"[{"op":"remove","path":"/data/device_id"}]"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json().get("data").is_none(), "{}", r.body);
    assert!(p.kube.secret_object(SECRET).unwrap().get("data").is_none());
}

fn strategic_merge_patch_merges_data_under_the_field_manager() {
    let p = pod();
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    p.kube.put_secret(SECRET, &[("authkey", "tskey-1")]);
    let ips = r#"["100.64.0.1","fd7a:115c:a1e0::1"]"#;
    let r = p.merge_patch(
        SECRET,
        &json!({"data": {
            "device_id": b64("nStable1"),
            "device_fqdn": b64("alpha.tail.ts.net."),
            "device_ips": b64(ips),
        }}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let want = map(&[
        ("authkey", "tskey-1"),
        ("device_id", "nStable1"),
        ("device_fqdn", "alpha.tail.ts.net."),
        ("device_ips", ips),
    ]);
    assert_eq!(decode_data(&v), want, "{v}");
    assert_eq!(p.kube.secret(SECRET), Some(want));

    // metadata.managedFields names the manager and the keys it set.
    let managers = v["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields");
    let ours: Vec<&Value> = managers
        .iter()
        .filter(|m| m["manager"] == "tailscale-container")
        .collect();
    assert_eq!(ours.len(), 1, "{managers:#?}");
    let m = ours[0];
    assert_eq!(m["operation"], "Update", "{m}");
    assert_eq!(m["apiVersion"], "v1", "{m}");
    assert_eq!(m["fieldsType"], "FieldsV1", "{m}");
    let fields = &m["fieldsV1"]["f:data"];
    for k in ["f:device_id", "f:device_fqdn", "f:device_ips"] {
        assert_eq!(fields[k], json!({}), "{k} not in {m}");
    }
    assert!(fields.get("f:authkey").is_none(), "{m}");

    // A second patch replaces only the keys it names; null deletes a key.
    let r = p.merge_patch(
        SECRET,
        &json!({"data": {"device_fqdn": b64("beta.tail.ts.net."), "authkey": null}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        p.kube.secret(SECRET),
        Some(map(&[
            ("device_id", "nStable1"),
            ("device_fqdn", "beta.tail.ts.net."),
            ("device_ips", ips),
        ]))
    );

    // null on a key that is not there (https_endpoint removed before it
    // was ever written): 200, nothing changes.
    let r = p.merge_patch(SECRET, &json!({"data": {"https_endpoint": null}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        p.kube.secret(SECRET),
        Some(map(&[
            ("device_id", "nStable1"),
            ("device_fqdn", "beta.tail.ts.net."),
            ("device_ips", ips),
        ]))
    );

    // A secret without data gets one.
    p.kube.put_secret("bare", &[]);
    p.kube.grant("bare", &["get", "patch"]);
    let r = p.merge_patch("bare", &json!({"data": {"device_id": b64("n2")}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(p.kube.secret("bare"), Some(map(&[("device_id", "n2")])));
}

fn patch_without_patch_permission_is_403() {
    let p = pod();
    p.kube.grant(SECRET, &["get", "update"]);
    p.kube.put_secret(SECRET, &[("authkey", "tskey-1")]);
    let r = p.json_patch(SECRET, r#"[{"op":"remove","path":"/data/authkey"}]"#);
    assert_eq!((r.status, r.json()), (403, forbidden(&p, "patch", SECRET)));
    let r = p.merge_patch(SECRET, &json!({"data": {"device_id": b64("n1")}}));
    assert_eq!((r.status, r.json()), (403, forbidden(&p, "patch", SECRET)));
    assert_eq!(p.kube.secret(SECRET), Some(map(&[("authkey", "tskey-1")])));
    // `update` (PUT of the whole object) is what is left.
    let mut obj = p.get(SECRET).json();
    obj["data"]["device_id"] = json!(b64("n1"));
    let r = p.client.request(
        "PUT",
        &p.secret_path(SECRET),
        Some("application/json"),
        Some(&obj.to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        p.kube.secret(SECRET),
        Some(map(&[("authkey", "tskey-1"), ("device_id", "n1")]))
    );
}

fn a_bad_token_is_401_and_no_token_is_anonymous() {
    let p = pod();
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    p.kube.put_secret(SECRET, &[("authkey", "tskey-1")]);
    let bad = p.client.with_token("not-a-token");
    // No `details` member in this Status.
    let unauthorized = status(401, "Unauthorized", "Unauthorized", None);
    let r = bad.request("GET", &p.secret_path(SECRET), None, None);
    assert_eq!((r.status, r.json()), (401, unauthorized.clone()));
    let r = bad.ssar(&p.ns(), "get", SECRET);
    assert_eq!((r.status, r.json()), (401, unauthorized));
    // An empty bearer token is no credential at all: the request is
    // anonymous (kube-apiserver's default --anonymous-auth=true) and RBAC
    // forbids it.
    let none = p.client.with_token("");
    let r = none.request("GET", &p.secret_path(SECRET), None, None);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        r.json()["message"],
        format!(
            "secrets \"{SECRET}\" is forbidden: User \"system:anonymous\" cannot get resource \
             \"secrets\" in API group \"\" in the namespace \"{}\"",
            p.ns()
        )
    );
}

/// A real tailscaled with `--state=kube:SECRET` that finds the pod's
/// service-account files at the in-cluster path (see `with_pod_mounts`).
/// Stopped (SIGTERM, then SIGKILL) when dropped.
struct Tailscaled {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Tailscaled {
    /// `from_env`: set `TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV=true`
    /// (without it tailscaled 1.102.5 dials https://kubernetes.default.svc).
    fn start(p: &Pod, dir: &std::path::Path, from_env: bool) -> Tailscaled {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tailscaled.log"))
            .unwrap();
        let mut c = with_pod_mounts(p.root.path(), &support::real_bin().join("tailscaled"));
        c.arg(format!("--state=kube:{SECRET}"))
            .arg(format!("--statedir={}", dir.join("state").display()))
            .arg(format!("--socket={}", dir.join("ts.sock").display()))
            .arg("--tun=userspace-networking")
            .arg("--no-logs-no-support")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", dir)
            .env("TS_LOGS_DIR", dir)
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            .env("TS_DISABLE_PORTMAPPER", "1")
            .envs(p.kube.env())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if from_env {
            c.env("TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV", "true");
        }
        Tailscaled {
            child: c.spawn().expect("spawn unshare … tailscaled"),
            dir: dir.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tailscaled.log")).unwrap_or_default()
    }

    fn wait_log(&mut self, needle: &str) {
        support::eventually(&format!("tailscaled to log {needle:?}"), || {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("tailscaled exited ({st}); log:\n{}", self.log());
            }
            self.log().contains(needle).then_some(())
        });
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(support::real_bin().join("tailscale"))
            .arg(format!("--socket={}", self.dir.join("ts.sock").display()))
            .args(args)
            .env_clear()
            .env("HOME", &self.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tailscale")
    }

    fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "tailscale status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// SIGTERM and wait for the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.child.wait().expect("wait tailscaled")
    }
}

impl Drop for Tailscaled {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn real_tailscaled_keeps_its_state_in_the_secret() {
    let p = pod();
    let hs = support::Headscale::start();
    let key = hs.auth_key("kube");
    // What the kube store needs: get and update (checked by SSAR at start),
    // patch (else it GETs and PUTs the whole secret), and the secret itself
    // (creating one needs `create`, which resourceNames cannot grant).
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    p.kube.put_secret(SECRET, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut ts = Tailscaled::start(&p, dir.path(), true);
    ts.wait_log("got LocalBackend");
    // Started, logged out: nothing written yet.
    assert_eq!(p.kube.secret(SECRET), Some(BTreeMap::new()));

    let up = ts.cli(&[
        "up",
        &format!("--login-server={}", hs.url),
        &format!("--authkey={key}"),
        "--hostname=kubenode",
    ]);
    assert!(up.status.success(), "tailscale up: {up:?}\n{}", ts.log());
    let data = support::eventually("the state keys in the secret", || {
        let d = p.kube.secret(SECRET)?;
        let profile = d.get("_current-profile")?;
        (d.contains_key(profile) && d.contains_key("_profiles") && d.contains_key("_machinekey"))
            .then_some(d)
    });
    let profile = data["_current-profile"].clone();
    assert!(profile.starts_with("profile-"), "{profile}");
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "_current-profile",
            "_machinekey",
            "_profiles",
            profile.as_str()
        ],
        "{data:#?}"
    );
    assert!(data["_machinekey"].starts_with("privkey:"), "{data:#?}");
    let prefs: Value = serde_json::from_str(&data[&profile]).expect("profile JSON");
    assert_eq!(prefs["ControlURL"], hs.url, "{prefs:#}");
    assert_eq!(prefs["Hostname"], "kubenode", "{prefs:#}");
    assert_eq!(prefs["WantRunning"], true, "{prefs:#}");
    // It patches without a fieldManager, so the server names the manager
    // after its User-Agent.
    let obj = p.kube.secret_object(SECRET).unwrap();
    let managers = obj["metadata"]["managedFields"].as_array().unwrap();
    let go = managers
        .iter()
        .find(|m| m["manager"] == "Go-http-client")
        .unwrap_or_else(|| panic!("{managers:#?}"));
    assert_eq!(go["fieldsV1"]["f:data"]["f:_machinekey"], json!({}), "{go}");
    assert_eq!(ts.status()["BackendState"], "Running");
    assert_eq!(ts.stop().code(), Some(0));

    // A new tailscaled (no auth key, no local state) logs in again from the
    // secret alone: the same machine, the same headscale node.
    let node_id = hs.nodes()[0]["id"].clone();
    let dir = tempfile::tempdir().unwrap();
    let mut ts = Tailscaled::start(&p, dir.path(), true);
    ts.wait_log("got LocalBackend");
    support::eventually("Running from the stored state", || {
        (ts.status()["BackendState"] == "Running").then_some(())
    });
    assert!(
        ts.log()
            .contains(&format!("pm: using backend prefs for \"{profile}\"")),
        "{}",
        ts.log()
    );
    let nodes = hs.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    assert_eq!(nodes[0]["id"], node_id);
    assert_eq!(
        p.kube.secret(SECRET).unwrap()["_machinekey"],
        data["_machinekey"]
    );
    assert_eq!(ts.stop().code(), Some(0));
}

fn real_tailscaled_falls_back_to_memory_without_update_or_the_env_knob() {
    let p = pod();
    p.kube.put_secret(SECRET, &[]);

    // get and patch, but no update: the store refuses to start, and
    // tailscaled 1.102.5 runs on with an in-memory store and a health
    // warning (it does not exit).
    p.kube.grant(SECRET, &["get", "patch"]);
    let dir = tempfile::tempdir().unwrap();
    let mut ts = Tailscaled::start(&p, dir.path(), true);
    let missing = "store.New failed: missing update permission on secret \"tailscale\"; \
                   starting with in-memory store with a health warning";
    ts.wait_log(missing);
    ts.wait_log("got LocalBackend");
    let health = ts.status()["Health"].clone();
    assert!(
        health.as_array().into_iter().flatten().any(|h| h
            .as_str()
            .is_some_and(|h| h.contains("missing update permission"))),
        "{health:#}"
    );
    assert_eq!(ts.stop().code(), Some(0));

    // All verbs, but no TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV: it
    // asks https://kubernetes.default.svc, which does not resolve here.
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    let dir = tempfile::tempdir().unwrap();
    let mut ts = Tailscaled::start(&p, dir.path(), false);
    ts.wait_log("store.New failed: error loading state from kube Secret: Get \"https://kubernetes.default.svc/api/v1/namespaces/tailscale/secrets/tailscale\"");
    ts.wait_log("got LocalBackend");
    assert!(
        ts.log().contains("error checking get permission on secret tailscale: Post \"https://kubernetes.default.svc/apis/authorization.k8s.io/v1/selfsubjectaccessreviews\""),
        "{}",
        ts.log()
    );
    assert_eq!(ts.stop().code(), Some(0));
    assert_eq!(p.kube.secret(SECRET), Some(BTreeMap::new()));
}

// --- containerboot against the real API server ------------------------------
//
// containerboot and the real tailscaled it starts run with the pod's
// service-account files bound at the in-cluster path (`with_pod_mounts`),
// so both use this API server: containerboot for its checks and writes,
// tailscaled for its state (`--state=kube:tailscale`), under a real Role.

/// A containerboot node running the real tailscaled as this pod.
fn kube_node(p: &Pod, hs: &support::Headscale, hostname: &str) -> support::Node {
    kube_node_of(support::Node::real(), p, hs, hostname)
}

fn kube_node_of(
    mut n: support::Node,
    p: &Pod,
    hs: &support::Headscale,
    hostname: &str,
) -> support::Node {
    p.kube.write_service_account(&n.root);
    for (k, v) in p.kube.env() {
        n.var(&k, &v);
    }
    // tailscale v1.102's kube store talks to kubernetes.default.svc
    // unless told to use the env (tests/real/README.md).
    n.var("TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV", "true")
        .var("TS_HOSTNAME", hostname)
        .var("TS_EXTRA_ARGS", &format!("--login-server={}", hs.url));
    n
}

fn boot(n: &support::Node) -> support::Boot {
    n.start_as(with_pod_mounts(&n.root, &support::containerboot()))
}

/// The node's addresses as `tailscale status --json` reports them, sorted.
fn status_ips(n: &support::Node) -> Vec<String> {
    let mut ips: Vec<String> = n.status()["Self"]["TailscaleIPs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips
}

fn managers(p: &Pod) -> Vec<String> {
    p.kube.secret_object(SECRET).unwrap()["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["manager"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn containerboot_takes_the_key_from_the_secret_stores_device_info_and_removes_the_key() {
    let p = pod();
    let hs = support::Headscale::start();
    let key = hs.auth_key("kube");
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    p.kube.put_secret(SECRET, &[("authkey", &key)]);
    let mut n = kube_node(&p, &hs, "kubeboot");
    n.var("TS_AUTH_ONCE", "true");

    let mut cb = boot(&n);
    cb.wait_for("Using authkey found in kube secret");
    cb.wait_for("Deleting authkey from kube secret");
    cb.wait_for(support::STARTUP);
    let st = n.status();
    let data = p.kube.secret(SECRET).unwrap();
    assert!(!data.contains_key("authkey"), "{data:#?}");
    assert_eq!(data["device_id"], st["Self"]["ID"].as_str().unwrap());
    assert_eq!(data["device_fqdn"], st["Self"]["DNSName"].as_str().unwrap());
    assert!(data["device_fqdn"].starts_with("kubeboot."), "{data:#?}");
    let mut stored: Vec<String> = serde_json::from_str(&data["device_ips"]).unwrap();
    stored.sort();
    assert_eq!(stored, status_ips(&n));
    // tailscaled keeps its state in the same secret.
    assert!(data["_machinekey"].starts_with("privkey:"), "{data:#?}");
    assert!(
        managers(&p).contains(&"tailscale-container".to_string()),
        "{:#?}",
        managers(&p)
    );
    let nodes = hs.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    assert_eq!(nodes[0]["given_name"], "kubeboot", "{nodes:#?}");
    let done = cb.terminate();
    assert_eq!(done.code, Some(0), "{}", done.dump());
    assert!(!done.has(&key), "the auth key leaked:\n{}", done.dump());
    assert!(!done.has(p.kube.pod_token()), "the token leaked");

    // A restarted pod logs in from the state in the secret: no new node,
    // no `tailscale up`, only `set`; the key is gone already (422 = fine).
    let mut cb = boot(&n);
    cb.wait_for(support::STARTUP);
    assert_eq!(hs.nodes().len(), 1, "{:#?}", hs.nodes());
    let done = cb.terminate();
    assert_eq!(done.code, Some(0), "{}", done.dump());
    assert!(done.has("Running 'tailscale set'"), "{}", done.dump());
    assert!(!done.has("Running 'tailscale up'"), "{}", done.dump());
    let data = p.kube.secret(SECRET).unwrap();
    assert_eq!(data["device_id"], st["Self"]["ID"].as_str().unwrap());
}

fn containerboot_without_patch_permission_never_writes_the_secret() {
    let p = pod();
    let hs = support::Headscale::start();
    let key = hs.auth_key("kube");
    p.kube.grant(SECRET, &["get", "update"]);
    p.kube.put_secret(SECRET, &[]);
    let mut n = kube_node(&p, &hs, "nopatch");
    n.var("TS_AUTHKEY", &key);
    let mut cb = boot(&n);
    cb.wait_for(support::STARTUP);
    assert_eq!(n.status()["BackendState"], "Running");
    let data = p.kube.secret(SECRET).unwrap();
    // tailscaled (get + update) stored its state; containerboot wrote nothing.
    assert!(data.contains_key("_machinekey"), "{data:#?}");
    for k in ["device_id", "device_fqdn", "device_ips"] {
        assert!(!data.contains_key(k), "{data:#?}");
    }
    assert!(!managers(&p).contains(&"tailscale-container".to_string()));
    assert_eq!(cb.terminate().code, Some(0));
}

fn containerboot_names_a_missing_verb_of_a_real_role() {
    let p = pod();
    let hs = support::Headscale::start();
    p.kube.grant(SECRET, &["get", "patch"]);
    p.kube.put_secret(SECRET, &[]);
    let n = kube_node(&p, &hs, "noupdate");
    let done = boot(&n).wait();
    assert_eq!(done.code, Some(1), "{}", done.dump());
    let want = format!(
        "Some Kubernetes permissions are missing, please check your RBAC configuration: missing update permission on secret \"{SECRET}\" in namespace \"{}\"",
        p.ns()
    );
    assert!(done.has(&want), "{}", done.dump());
    assert!(!done.has("Starting tailscaled"), "{}", done.dump());
}

fn containerboot_explains_a_missing_secret() {
    let p = pod();
    let hs = support::Headscale::start();
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    let n = kube_node(&p, &hs, "nosecret");
    let done = boot(&n).wait();
    assert_eq!(done.code, Some(1), "{}", done.dump());
    let want = format!(
        "Getting authkey from kube secret: secret \"{SECRET}\" not found in namespace \"{}\": create it",
        p.ns()
    );
    assert!(done.has(&want), "{}", done.dump());
    assert!(!done.has("Starting tailscaled"), "{}", done.dump());
}

fn the_simulator_keeps_its_state_in_the_secret_like_the_real_tailscaled() {
    let p = pod();
    let hs = support::Headscale::start();
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    let mut shapes = Vec::new();
    for (name, node) in [
        ("real", support::Node::real()),
        ("simulated", support::Node::simulated()),
    ] {
        p.kube.put_secret(SECRET, &[]);
        let mut n = kube_node_of(node, &p, &hs, &format!("shape-{name}"));
        n.var("TS_AUTHKEY", &hs.auth_key(&format!("kube-{name}")))
            .var("TS_AUTH_ONCE", "true");
        let mut cb = boot(&n);
        cb.wait_for(support::STARTUP);
        let data = p.kube.secret(SECRET).unwrap();
        // The keys, with the profile's name generalised.
        let profile = data
            .get("_current-profile")
            .unwrap_or_else(|| panic!("{name}: no _current-profile in {data:#?}"))
            .clone();
        assert!(profile.starts_with("profile-"), "{name}: {profile}");
        let mut keys: Vec<String> = data
            .keys()
            .map(|k| {
                if *k == profile {
                    "profile-*".to_string()
                } else {
                    k.clone()
                }
            })
            .collect();
        keys.sort();
        assert!(
            data["_machinekey"].starts_with("privkey:"),
            "{name}: {data:#?}"
        );
        let prefs: Value = serde_json::from_str(&data[&profile]).expect("profile JSON");
        assert_eq!(prefs["WantRunning"], true, "{name}: {prefs:#}");
        shapes.push((name, keys));
        assert_eq!(cb.terminate().code, Some(0));
        // A restart logs in from the secret alone, without `tailscale up`.
        n.var("TS_AUTHKEY", "");
        let mut cb = boot(&n);
        cb.wait_for(support::STARTUP);
        let done = cb.terminate();
        assert_eq!(done.code, Some(0), "{name}: {}", done.dump());
        assert!(
            !done.has("Running 'tailscale up'"),
            "{name}: {}",
            done.dump()
        );
        p.kube.delete_secret(SECRET);
    }
    assert_eq!(shapes[0].1, shapes[1].1, "{shapes:#?}");
}

/// Polls the secret until `pred` holds for its data (60 s at most).
fn wait_for_secret(
    p: &Pod,
    what: &str,
    pred: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let data = p.kube.secret(SECRET).unwrap_or_default();
        if pred(&data) {
            return data;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within 60 s: {data:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn containerboot_keeps_https_endpoint_in_the_real_secret_for_its_serve_config() {
    let p = pod();
    let hs = support::Headscale::start();
    let key = hs.auth_key("kube");
    p.kube.grant(SECRET, &["get", "update", "patch"]);
    // A value an earlier run left.
    p.kube.put_secret(
        SECRET,
        &[("authkey", &key), ("https_endpoint", "stale.example")],
    );
    let mut n = kube_node(&p, &hs, "kubeserve");
    let file = n.root.join("serve/serve.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let https = json!({
        "TCP": {"443": {"HTTPS": true}},
        "Web": {"${TS_CERT_DOMAIN}:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}}}
    });
    std::fs::write(&file, https.to_string()).unwrap();
    n.var("TS_SERVE_CONFIG", &file.display().to_string());

    let mut cb = boot(&n);
    cb.wait_for(support::STARTUP);
    // Upstream's value: the cert domain, or no-https when the tailnet has
    // none (what this headscale's netmap says decides which).
    let expected = n.status()["CertDomains"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| "no-https".to_string());
    wait_for_secret(&p, "https_endpoint", |d| {
        d.get("https_endpoint") == Some(&expected)
    });
    // A config serving no HTTPS: the key goes.
    std::fs::write(
        &file,
        json!({"TCP": {"2222": {"TCPForward": "127.0.0.1:22"}}}).to_string(),
    )
    .unwrap();
    cb.wait_for("Applied serve config from");
    let data = wait_for_secret(&p, "https_endpoint removed", |d| {
        !d.contains_key("https_endpoint")
    });
    assert!(data.contains_key("device_id"), "{data:#?}");
    let done = cb.terminate();
    assert_eq!(done.code, Some(0), "{}", done.dump());
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [Need::Root, Need::Program("ip"), Need::RealPrograms(REAL_PROGRAMS)],
        tests: [
            the_harness_serves_the_pod_and_cleans_up,
            servers_die_with_the_thread_that_started_them,
            ssar_is_201_with_allowed_per_granted_verb,
            get_secret_gives_base64_data_and_no_data_member_when_empty,
            a_missing_secret_is_a_404_status_or_403_without_get,
            json_patch_remove_of_a_missing_key_is_422,
            strategic_merge_patch_merges_data_under_the_field_manager,
            patch_without_patch_permission_is_403,
            a_bad_token_is_401_and_no_token_is_anonymous,
            real_tailscaled_keeps_its_state_in_the_secret,
            real_tailscaled_falls_back_to_memory_without_update_or_the_env_knob,
            containerboot_takes_the_key_from_the_secret_stores_device_info_and_removes_the_key,
            containerboot_without_patch_permission_never_writes_the_secret,
            containerboot_names_a_missing_verb_of_a_real_role,
            containerboot_explains_a_missing_secret,
            the_simulator_keeps_its_state_in_the_secret_like_the_real_tailscaled,
            containerboot_keeps_https_endpoint_in_the_real_secret_for_its_serve_config,
        ],
    })
}
