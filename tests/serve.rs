//! `TS_SERVE_CONFIG` end to end: containerboot as a real process, the
//! simulator as tailscaled (its serve-config endpoint with ETag and
//! If-Match, each POST recorded), the file changed in every way a deployer
//! changes it, watched with real inotify. Assertions are on the POSTs the
//! simulator recorded, in order.

mod support;

use serde_json::{Value, json};
use std::path::Path;
use support::*;

const STARTUP: &str = "Startup complete, waiting for shutdown signal";
const APPLIED: &str = "Applied serve config from";
/// The simulator's certificate domain (its self node's name).
const DOMAIN: &str = "sim-host.tailnet.ts.net";

/// One serve-config POST as the simulator recorded it.
#[derive(Debug)]
struct Post {
    status: String,
    if_match: String,
    body: Value,
}

fn posts(w: &World) -> Vec<Post> {
    w.records()
        .into_iter()
        .filter(|(prog, _)| prog == "serve-config")
        .map(|(_, a)| Post {
            status: a[0].clone(),
            if_match: a[1].clone(),
            body: serde_json::from_str(&a[2]).expect("a JSON body"),
        })
        .collect()
}

/// The bodies of the accepted POSTs, in order.
fn applied(w: &World) -> Vec<Value> {
    posts(w)
        .into_iter()
        .filter(|p| p.status == "200")
        .map(|p| p.body)
        .collect()
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// Writes `v` to a temporary file beside `path` and renames it over.
fn replace(path: &Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    write(&tmp, v);
    std::fs::rename(&tmp, path).unwrap();
}

fn https_config() -> Value {
    json!({
        "TCP": {"443": {"HTTPS": true}},
        "Web": {"${TS_CERT_DOMAIN}:443": {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}}},
        "AllowFunnel": {"${TS_CERT_DOMAIN}:443": false},
        "SomeFutureField": {"kept": ["as", "is", 1]}
    })
}

fn tcp_config(port: u16) -> Value {
    json!({"TCP": {port.to_string(): {"TCPForward": format!("127.0.0.1:{port}")}}})
}

fn world_with_file(rel: &str) -> (World, std::path::PathBuf) {
    let mut w = World::new();
    let file = w.path(rel);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    w.var("TS_SERVE_CONFIG", &file.display().to_string());
    (w, file)
}

#[test]
fn clears_then_applies_with_the_cert_domain_substituted() {
    let (w, file) = world_with_file("serve/serve.json");
    write(&file, &https_config());
    let mut r = w.start();
    r.wait_for(APPLIED);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(f.has(STARTUP), "{}", f.dump());
    let p = posts(&w);
    assert_eq!(p.len(), 2, "{p:?}\n{}", f.dump());
    assert_eq!(
        p[0].body,
        json!({}),
        "an earlier run's config is cleared first"
    );
    assert!(!p[0].if_match.is_empty(), "POSTs carry the ETag of a GET");
    assert_eq!(
        p[1].body,
        json!({
            "TCP": {"443": {"HTTPS": true}},
            "Web": {format!("{DOMAIN}:443"): {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}}},
            "AllowFunnel": {format!("{DOMAIN}:443"): false},
            "SomeFutureField": {"kept": ["as", "is", 1]}
        })
    );
}

#[test]
fn every_way_of_replacing_the_file_is_one_post_and_identical_content_none() {
    let (w, file) = world_with_file("serve/serve.json");
    write(&file, &tcp_config(1));
    let mut r = w.start();
    r.wait_for(APPLIED);

    // Rewritten in place with the same content: nothing is posted; the
    // change after it is (and it alone).
    write(&file, &tcp_config(1));
    write(&file, &tcp_config(2));
    r.wait_for(APPLIED);
    // A temporary file renamed over it.
    replace(&file, &tcp_config(3));
    r.wait_for(APPLIED);
    // Deleted (an error, the last config stays), then created again.
    std::fs::remove_file(&file).unwrap();
    r.wait_for("cannot read it");
    write(&file, &tcp_config(4));
    r.wait_for(APPLIED);

    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(
        applied(&w),
        [
            json!({}),
            tcp_config(1),
            tcp_config(2),
            tcp_config(3),
            tcp_config(4)
        ],
        "{}",
        f.dump()
    );
    assert_eq!(posts(&w).len(), 5, "every POST accepted");
}

#[test]
fn a_configmap_data_swap_is_one_post() {
    // The layout of a mounted ConfigMap: serve.json -> ..data/serve.json,
    // ..data -> ..<timestamp>; an update renames a new ..data into place.
    let (w, file) = world_with_file("cm/serve.json");
    let dir = file.parent().unwrap().to_path_buf();
    std::fs::create_dir(dir.join("..2024_01_01")).unwrap();
    write(&dir.join("..2024_01_01/serve.json"), &tcp_config(1));
    std::os::unix::fs::symlink("..2024_01_01", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/serve.json", &file).unwrap();
    let mut r = w.start();
    r.wait_for(APPLIED);

    std::fs::create_dir(dir.join("..2024_01_02")).unwrap();
    write(&dir.join("..2024_01_02/serve.json"), &tcp_config(2));
    std::os::unix::fs::symlink("..2024_01_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2024_01_01")).unwrap();
    r.wait_for(APPLIED);
    // One more change, so the burst of the swap is known to be handled.
    std::fs::create_dir(dir.join("..2024_01_03")).unwrap();
    write(&dir.join("..2024_01_03/serve.json"), &tcp_config(3));
    std::os::unix::fs::symlink("..2024_01_03", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    r.wait_for(APPLIED);

    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(
        applied(&w),
        [json!({}), tcp_config(1), tcp_config(2), tcp_config(3)],
        "{}",
        f.dump()
    );
}

#[test]
fn invalid_json_keeps_the_last_config_until_fixed() {
    let (w, file) = world_with_file("serve/serve.json");
    write(&file, &tcp_config(1));
    let mut r = w.start();
    r.wait_for(APPLIED);

    std::fs::write(&file, "{\n  \"TCP\": {\n    \"2\": {}\n  ,\n}\n").unwrap();
    let line = r.wait_for("not valid JSON");
    assert!(
        line.contains(&file.display().to_string()) && line.contains("line 5 column 1"),
        "{line}"
    );
    assert!(
        line.contains("the last good config stays applied"),
        "{line}"
    );
    write(&file, &tcp_config(2));
    r.wait_for(APPLIED);
    assert!(alive(r.pid()));

    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(
        applied(&w),
        [json!({}), tcp_config(1), tcp_config(2)],
        "{}",
        f.dump()
    );
}

#[test]
fn a_412_is_answered_by_reading_again() {
    let (mut w, file) = world_with_file("serve/serve.json");
    write(&file, &tcp_config(1));
    w.script(json!({"serve_config_conflicts": 2}));
    let mut r = w.start();
    r.wait_for(APPLIED);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    let p = posts(&w);
    let statuses: Vec<&str> = p.iter().map(|p| p.status.as_str()).collect();
    assert_eq!(statuses, ["412", "412", "200", "200"], "{p:?}");
    assert_eq!(p[2].body, json!({}));
    assert_eq!(p[3].body, tcp_config(1));
}

#[test]
fn without_a_cert_domain_https_is_skipped_with_one_line() {
    let (mut w, file) = world_with_file("serve/serve.json");
    write(&file, &https_config());
    w.script(json!({"cert_domains": []}));
    let mut r = w.start();
    r.wait_for(STARTUP);
    r.wait_for("no certificate domain");
    // A config without HTTPS is applied.
    write(&file, &tcp_config(22));
    r.wait_for(APPLIED);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(
        f.log
            .iter()
            .filter(|l| l.contains("no certificate domain"))
            .count(),
        1,
        "{}",
        f.dump()
    );
    assert_eq!(applied(&w), [json!({}), tcp_config(22)], "{}", f.dump());
}

/// The node renamed while Running: its new cert domain is applied. Returns
/// the simulator's `dns-config` answers.
fn a_new_cert_domain_is_applied_again_with(legacy_netmap: bool) -> Vec<Vec<String>> {
    let (mut w, file) = world_with_file("serve/serve.json");
    let config = json!({"Web": {"${TS_CERT_DOMAIN}:443": {}}, "TCP": {"443": {"HTTPS": true}}});
    write(&file, &config);
    w.script(json!({
        "later_self_node_after_ms": 300,
        "later_self_node": {"name": "renamed.tailnet.ts.net."},
        "legacy_netmap": legacy_netmap
    }));
    let mut r = w.start();
    r.wait_for(APPLIED);
    r.wait_for(APPLIED);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    let with = |d: &str| json!({"Web": {format!("{d}:443"): {}}, "TCP": {"443": {"HTTPS": true}}});
    assert_eq!(
        applied(&w),
        [json!({}), with(DOMAIN), with("renamed.tailnet.ts.net")],
        "{}",
        f.dump()
    );
    w.records()
        .into_iter()
        .filter(|(prog, _)| prog == "dns-config")
        .map(|(_, args)| args)
        .collect()
}

#[test]
fn a_new_cert_domain_is_applied_again() {
    // As tailscaled 1.102: a SelfChange on the bus, the cert domain read
    // from /localapi/v0/dns-config.
    let fetched = a_new_cert_domain_is_applied_again_with(false);
    assert_eq!(fetched, [vec!["200".to_string()]]);
}

#[test]
fn a_new_cert_domain_is_applied_again_from_a_whole_netmap() {
    // A daemon before SelfChange sends the whole netmap, with the DNS
    // config in it: nothing else is asked.
    let fetched = a_new_cert_domain_is_applied_again_with(true);
    assert!(fetched.is_empty(), "{fetched:?}");
}

#[test]
fn a_directory_created_later_is_waited_for() {
    let (w, _) = world_with_file("x");
    let file = w.path("later/mount/serve.json");
    let mut w = w;
    w.var("TS_SERVE_CONFIG", &file.display().to_string());
    let mut r = w.start();
    r.wait_for("cannot read it");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    write(&file, &tcp_config(7));
    r.wait_for(APPLIED);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(applied(&w), [json!({}), tcp_config(7)], "{}", f.dump());
}

/// The strategic-merge patches of `https_endpoint` containerboot sent the
/// fake API server: each as the JSON value it set (`null`: removed).
fn https_endpoint_patches(fake: &support::kube::FakeKube) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| {
            r.method == "PATCH"
                && r.user_agent
                    .as_deref()
                    .is_some_and(|u| u.starts_with("containerboot/"))
        })
        .filter_map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            body["data"].get("https_endpoint").cloned()
        })
        .collect()
}

fn b64(s: &str) -> Value {
    use base64::Engine as _;
    Value::String(base64::engine::general_purpose::STANDARD.encode(s))
}

#[test]
fn https_endpoint_in_the_kube_state_secret_follows_the_applied_config() {
    let (mut w, file) = world_with_file("serve/serve.json");
    let fake = support::kube::FakeKube::start(&w.root);
    for (k, v) in fake.env() {
        w.var(&k, &v);
    }
    // A value left by an earlier run: removed at the start.
    fake.put_secret("tailscale", &[("https_endpoint", "stale.ts.net")]);
    w.var("TS_AUTHKEY", "tskey-env");
    write(&file, &https_config());
    let mut r = w.start();
    r.wait_for(APPLIED);
    fake.wait_for_requests("https_endpoint written", |_| {
        https_endpoint_patches(&fake).last() == Some(&b64(DOMAIN))
    });
    assert_eq!(
        fake.secret("tailscale").unwrap().get("https_endpoint"),
        Some(&DOMAIN.to_string()),
        "upstream's value: the cert domain"
    );

    // No HTTPS served any more: the key goes.
    write(&file, &tcp_config(22));
    r.wait_for(APPLIED);
    fake.wait_for_requests("https_endpoint removed", |_| {
        https_endpoint_patches(&fake).last() == Some(&Value::Null)
    });
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    let secret = fake.secret("tailscale").unwrap();
    assert!(!secret.contains_key("https_endpoint"), "{secret:?}");
    // The removal after the clear is skipped when the applied config's
    // value is already wanted by the time the secret session is free (one
    // call at a time; the latest value wins), so either sequence is right.
    let patches = https_endpoint_patches(&fake);
    assert!(
        patches == [b64(DOMAIN), Value::Null] || patches == [Value::Null, b64(DOMAIN), Value::Null],
        "written once applied, removed when no longer served: {patches:?}"
    );
    assert_eq!(
        applied(&w),
        [
            json!({}),
            json!({
                "TCP": {"443": {"HTTPS": true}},
                "Web": {format!("{DOMAIN}:443"): {"Handlers": {"/": {"Proxy": "http://127.0.0.1:8080"}}}},
                "AllowFunnel": {format!("{DOMAIN}:443"): false},
                "SomeFutureField": {"kept": ["as", "is", 1]}
            }),
            tcp_config(22)
        ]
    );
}

#[test]
fn the_directory_deleted_and_created_again_is_watched_again() {
    let (w, file) = world_with_file("mnt/serve/serve.json");
    let dir = file.parent().unwrap().to_path_buf();
    write(&file, &tcp_config(1));
    let mut r = w.start();
    r.wait_for(APPLIED);
    std::fs::remove_dir_all(&dir).unwrap();
    let line = r.wait_for("cannot read it");
    assert!(line.contains(&file.display().to_string()), "{line}");
    std::fs::create_dir_all(&dir).unwrap();
    write(&file, &tcp_config(2));
    r.wait_for(APPLIED);
    // Moved away and another put in its place: watched again too.
    std::fs::rename(&dir, w.path("mnt/old")).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    write(&file, &tcp_config(3));
    r.wait_for(APPLIED);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(
        applied(&w),
        [json!({}), tcp_config(1), tcp_config(2), tcp_config(3)],
        "{}",
        f.dump()
    );
}

// The tailscaled config file (EXPERIMENTAL_TS_CONFIGFILE_PATH), reloaded.

const RELOADED: &str = "tailscaled config watch: config was reloaded";

fn tailscaled_config(hostname: &str) -> String {
    format!(
        "// HuJSON\n{{\n  \"Version\": \"alpha0\",\n  \"AuthKey\": \"tskey-auth-conf\",\n  \"Hostname\": \"{hostname}\",\n}}\n"
    )
}

/// A world whose tailscaled runs with a config file in `conf/`, with the
/// trace written to `trace.jsonl` on SIGUSR1.
fn config_file_world() -> (World, std::path::PathBuf) {
    let mut w = World::new();
    let conf = w.path("conf/tailscaled.hujson");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, tailscaled_config("one")).unwrap();
    w.var(
        "EXPERIMENTAL_TS_CONFIGFILE_PATH",
        &conf.display().to_string(),
    );
    let trace = w.path("trace.jsonl").display().to_string();
    w.var("TS_TRACE_FILE", &trace);
    (w, conf)
}

/// How many reads of the config file the core has had, by the trace.
fn config_reads(w: &World, r: &mut Running) -> usize {
    r.signal(rustix::process::Signal::USR1);
    r.wait_for("State trace (");
    std::fs::read_to_string(w.path("trace.jsonl"))
        .unwrap_or_default()
        .matches("\"ConfigFileRead\"")
        .count()
}

/// Waits until the core has had more than `seen` reads of the config file
/// (the first is its baseline: what tailscaled started with).
fn wait_for_config_reads(w: &World, r: &mut Running, seen: usize) -> usize {
    for _ in 0..200 {
        let n = config_reads(w, r);
        if n > seen {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the trace never had more than {seen} ConfigFileRead steps");
}

/// The reload-config calls the simulator answered: (status, reloaded,
/// the text it loaded or its error).
fn reload_calls(w: &World) -> Vec<Vec<String>> {
    w.records()
        .into_iter()
        .filter(|(prog, _)| prog == "reload-config")
        .map(|(_, a)| a)
        .collect()
}

#[test]
fn a_changed_config_file_is_reloaded_and_an_invalid_one_reported_not_sent() {
    let (w, conf) = config_file_world();
    let mut r = w.start();
    r.wait_for(STARTUP);
    wait_for_config_reads(&w, &mut r, 0);

    // A temporary file renamed over it.
    let tmp = conf.with_extension("tmp");
    std::fs::write(&tmp, tailscaled_config("two")).unwrap();
    std::fs::rename(&tmp, &conf).unwrap();
    r.wait_for(RELOADED);

    // Invalid HuJSON: reported with line and column, not sent.
    std::fs::write(
        &conf,
        "{\n  \"Version\": \"alpha0\"\n  \"Hostname\": \"x\"\n}\n",
    )
    .unwrap();
    let line = r.wait_for("not sent to tailscaled");
    assert!(
        line.contains(&conf.display().to_string()) && line.contains("line 2 column"),
        "{line}"
    );
    // A wrong version: also not sent.
    std::fs::write(&conf, "{\"Version\": \"beta\"}").unwrap();
    r.wait_for("unsupported \"Version\"");
    // Fixed: reloaded.
    std::fs::write(&conf, tailscaled_config("three")).unwrap();
    r.wait_for(RELOADED);
    // The same text again: read, and nothing sent.
    let seen = config_reads(&w, &mut r);
    std::fs::write(&conf, tailscaled_config("three")).unwrap();
    wait_for_config_reads(&w, &mut r, seen);
    assert!(alive(r.pid()));
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(
        reload_calls(&w),
        [
            vec!["200".to_string(), "true".into(), tailscaled_config("two")],
            vec!["200".to_string(), "true".into(), tailscaled_config("three")],
        ],
        "{}",
        f.dump()
    );
    // The auth key in the file never reaches the log or the trace.
    assert!(!f.has("tskey-auth-conf"), "{}", f.dump());
    let trace = std::fs::read_to_string(w.path("trace.jsonl")).unwrap();
    assert!(!trace.contains("tskey-auth-conf"));
}

#[test]
fn a_tailscaled_without_reload_config_is_told_once_to_restart() {
    let (mut w, conf) = config_file_world();
    w.script(json!({"reload_config_missing": true}));
    let mut r = w.start();
    r.wait_for(STARTUP);
    wait_for_config_reads(&w, &mut r, 0);
    std::fs::write(&conf, tailscaled_config("two")).unwrap();
    let line = r.wait_for("cannot reload its config file");
    assert!(line.contains("restart the container"), "{line}");
    // A later change is read and not sent.
    let seen = config_reads(&w, &mut r);
    std::fs::write(&conf, tailscaled_config("three")).unwrap();
    wait_for_config_reads(&w, &mut r, seen);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(reload_calls(&w), [vec!["404".to_string()]], "{}", f.dump());
    assert_eq!(
        f.log
            .iter()
            .filter(|l| l.contains("cannot reload its config file"))
            .count(),
        1,
        "{}",
        f.dump()
    );
}

#[test]
fn a_port_changing_kind_is_removed_first_as_tailscaled_refuses_it_in_place() {
    // tailscaled (and the simulator, as it) refuses a config that turns a
    // served TCP forward into HTTP; containerboot removes the port first.
    let (w, file) = world_with_file("serve/serve.json");
    write(
        &file,
        &json!({"TCP": {"80": {"TCPForward": "127.0.0.1:8080"}, "22": {"TCPForward": "127.0.0.1:22"}}}),
    );
    let mut r = w.start();
    r.wait_for(APPLIED);
    let http = json!({
        "TCP": {"80": {"HTTP": true}, "22": {"TCPForward": "127.0.0.1:22"}},
        "Web": {"sim-host.tailnet.ts.net:80": {"Handlers": {"/": {"Text": "hi"}}}}
    });
    replace(&file, &http);
    r.wait_for("changes what is served on port 80 (tcp to http)");
    r.wait_for(APPLIED);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    let p = posts(&w);
    assert!(p.iter().all(|p| p.status == "200"), "none refused: {p:?}");
    assert_eq!(
        applied(&w),
        [
            json!({}),
            json!({"TCP": {"80": {"TCPForward": "127.0.0.1:8080"}, "22": {"TCPForward": "127.0.0.1:22"}}}),
            json!({"TCP": {"22": {"TCPForward": "127.0.0.1:22"}}}),
            http
        ],
        "{}",
        f.dump()
    );
}
