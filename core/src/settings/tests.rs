//! One test per rule.

use super::read::{BOOL_ACCEPTED, IP_ACCEPTED, ROUTE_ACCEPTED};
use super::*;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// The files of this test's thread, by path.
    static FILES: RefCell<HashMap<PathBuf, String>> = RefCell::new(HashMap::new());
}

/// Variables from a map, files from [`FILES`].
struct Mem(HashMap<String, String>);

impl Source for Mem {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn file(&self, path: &Path) -> Result<String, String> {
        FILES
            .with(|f| f.borrow().get(path).cloned())
            .ok_or_else(|| "No such file or directory (os error 2)".to_string())
    }
}

fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::read(&Mem(map))
}

fn ok(vars: &[(&str, &str)]) -> Settings {
    match settings(vars) {
        Ok(s) => s,
        Err(e) => panic!("unexpected errors: {e}"),
    }
}

fn errors(vars: &[(&str, &str)]) -> Vec<ConfigError> {
    match settings(vars) {
        Ok(s) => panic!("expected errors, got {s:?}"),
        Err(e) => e.0,
    }
}

/// The single error for `vars`; fails if there are more or none.
fn one_error(vars: &[(&str, &str)]) -> ConfigError {
    let errs = errors(vars);
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.into_iter().next().expect("one error")
}

/// A config file with `contents`, readable by this thread's tests.
fn config_file(contents: &str) -> String {
    let path = FILES.with(|f| {
        let mut f = f.borrow_mut();
        let path = PathBuf::from(format!("/config/{}.hujson", f.len()));
        f.insert(path.clone(), contents.to_string());
        path
    });
    path.display().to_string()
}

#[test]
fn defaults() {
    let s = ok(&[]);
    assert_eq!(
        s,
        Settings {
            auth_key: None,
            hostname: None,
            routes: None,
            proxy: Proxy::default(),
            tailscaled_extra_args: vec![],
            extra_args: vec![],
            kube: None,
            state: StateStore::Memory,
            userspace: true,
            accept_dns: None,
            socks5_server: None,
            http_proxy_listen: None,
            socket: PathBuf::from("/tmp/tailscaled.sock"),
            auth_once: false,
            config_file: None,
            serve_config: None,
            trace_file: PathBuf::from("/tmp/containerboot-trace.jsonl"),
            trace_steps: 1000,
            boot_timeout_ms: 60_000,
            shutdown_grace_ms: 8_000,
            firewall: FirewallMode::Iptables,
            firewall_recheck_ms: DEFAULT_FIREWALL_RECHECK_MS,
            test: TestHooks {
                root: PathBuf::from("/"),
                fake_netfilter: false,
            },
        }
    );
    assert_eq!(s.auth_mode(), AuthMode::AlwaysAuth);
    assert!(!s.wants_proxy());
}

#[test]
fn set_empty_strings_are_unset() {
    let vars: Vec<(&str, &str)> = [
        "TS_AUTHKEY",
        "TS_AUTH_KEY",
        "TS_HOSTNAME",
        "TS_SERVE_CONFIG",
        "TS_DEST_IP",
        "TS_TAILNET_TARGET_IP",
        "TS_TAILNET_TARGET_FQDN",
        "TS_TAILSCALED_EXTRA_ARGS",
        "TS_EXTRA_ARGS",
        "KUBERNETES_SERVICE_HOST",
        "TS_USERSPACE",
        "TS_STATE_DIR",
        "TS_ACCEPT_DNS",
        "TS_SOCKS5_SERVER",
        "TS_OUTBOUND_HTTP_PROXY_LISTEN",
        "TS_AUTH_ONCE",
        "TS_TEST_ONLY_ROOT",
        "EXPERIMENTAL_TS_CONFIGFILE_PATH",
        "TS_TEST_FAKE_NETFILTER",
    ]
    .iter()
    .map(|n| (*n, ""))
    .collect();
    let mut expected = ok(&[]);
    assert_eq!(ok(&vars), expected);
    // The two whose empty value means something of its own.
    expected.routes = Some(Vec::new());
    let mut with_special = vars.clone();
    with_special.push(("TS_ROUTES", ""));
    with_special.push(("TS_KUBE_SECRET", ""));
    assert_eq!(ok(&with_special), expected);
    // An empty secret in Kubernetes: no secret, state per TS_STATE_DIR.
    with_special.push(("KUBERNETES_SERVICE_HOST", "10.96.0.1"));
    assert_eq!(ok(&with_special).state, StateStore::Memory);
}

#[test]
fn plain_values_are_read() {
    let s = ok(&[
        ("TS_HOSTNAME", "node1"),
        ("TS_STATE_DIR", "/state"),
        ("TS_SOCKS5_SERVER", "localhost:1080"),
        ("TS_OUTBOUND_HTTP_PROXY_LISTEN", "localhost:8080"),
        ("TS_SOCKET", "/run/ts.sock"),
        ("TS_TEST_ONLY_ROOT", "/tmp/root"),
        ("TS_TAILSCALED_EXTRA_ARGS", "  --verbose=1\t--port=41641 "),
        ("TS_EXTRA_ARGS", "--accept-routes\n--ssh"),
    ]);
    assert_eq!(s.hostname.as_deref(), Some("node1"));
    assert_eq!(s.state, StateStore::Dir("/state".into()));
    assert_eq!(s.socks5_server.as_deref(), Some("localhost:1080"));
    assert_eq!(s.http_proxy_listen.as_deref(), Some("localhost:8080"));
    assert_eq!(s.socket, PathBuf::from("/run/ts.sock"));
    assert_eq!(s.test.root, PathBuf::from("/tmp/root"));
    assert_eq!(s.tailscaled_extra_args, vec!["--verbose=1", "--port=41641"]);
    assert_eq!(
        s.extra_args,
        vec![
            crate::secret::Arg::Plain("--accept-routes".into()),
            crate::secret::Arg::Plain("--ssh".into())
        ]
    );
}

#[test]
fn auth_key_alias_and_precedence() {
    let key = |vars: &[(&str, &str)]| ok(vars).auth_key.map(|k| k.expose().to_string());
    assert_eq!(key(&[("TS_AUTHKEY", "a")]), Some("a".into()));
    assert_eq!(key(&[("TS_AUTH_KEY", "b")]), Some("b".into()));
    assert_eq!(
        key(&[("TS_AUTHKEY", "a"), ("TS_AUTH_KEY", "b")]),
        Some("a".into())
    );
    assert_eq!(
        key(&[("TS_AUTHKEY", ""), ("TS_AUTH_KEY", "b")]),
        Some("b".into())
    );
    assert_eq!(key(&[("TS_AUTHKEY", ""), ("TS_AUTH_KEY", "")]), None);
}

#[test]
fn auth_key_never_in_debug() {
    let s = ok(&[("TS_AUTHKEY", "tskey-secret-value")]);
    assert!(!format!("{s:?}").contains("tskey-secret-value"));
}

#[test]
fn routes() {
    let text = |vars: &[(&str, &str)]| {
        ok(vars)
            .routes
            .map(|r| r.iter().map(|n| n.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(text(&[]), None);
    assert_eq!(text(&[("TS_ROUTES", "")]), Some(vec![]));
    assert_eq!(text(&[("TS_ROUTES", "   ")]), Some(vec![]));
    assert_eq!(
        text(&[("TS_ROUTES", "10.0.0.0/24")]),
        Some(vec!["10.0.0.0/24".to_string()])
    );
    // Trimmed and parsed once; host bits kept (tailscale reports them),
    // IPv6 in its canonical form.
    assert_eq!(
        text(&[("TS_ROUTES", " 10.0.0.1/24 ,  fd00:0::/64,0.0.0.0/0 ")]),
        Some(vec![
            "10.0.0.1/24".to_string(),
            "fd00::/64".to_string(),
            "0.0.0.0/0".to_string()
        ])
    );
}

#[test]
fn routes_bad_entries() {
    let e = one_error(&[("TS_ROUTES", "10.0.0.0/24,not-a-route")]);
    assert_eq!(e.variable, "TS_ROUTES");
    assert!(e.message.contains("TS_ROUTES"), "{}", e.message);
    assert!(e.message.contains("\"not-a-route\""), "{}", e.message);
    assert!(e.message.contains(ROUTE_ACCEPTED), "{}", e.message);

    // A bare IP is not a route.
    let e = one_error(&[("TS_ROUTES", "10.0.0.5")]);
    assert!(e.message.contains("\"10.0.0.5\""), "{}", e.message);

    // Prefix too long, netmask form, signed or padded bits, empty entry.
    for bad in [
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/255.255.255.0",
        "10.0.0.0/+8",
        "10.0.0.0/08",
        "10.0.0.0/24,",
        "/24",
    ] {
        let errs = errors(&[("TS_ROUTES", bad)]);
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert_eq!(errs[0].variable, "TS_ROUTES");
    }

    // Every bad entry is reported.
    assert_eq!(errors(&[("TS_ROUTES", "a,10.0.0.0/8,b")]).len(), 2);
}

#[test]
fn accept_dns_tri_state() {
    assert_eq!(ok(&[]).accept_dns, None);
    assert_eq!(ok(&[("TS_ACCEPT_DNS", "")]).accept_dns, None);
    assert_eq!(ok(&[("TS_ACCEPT_DNS", "true")]).accept_dns, Some(true));
    assert_eq!(ok(&[("TS_ACCEPT_DNS", "0")]).accept_dns, Some(false));
    assert_eq!(ok(&[("TS_ACCEPT_DNS", "False")]).accept_dns, Some(false));
}

#[test]
fn bools_accept_go_parse_bool_set() {
    for t in ["1", "t", "T", "TRUE", "true", "True"] {
        let s = ok(&[
            ("TS_AUTH_ONCE", t),
            ("TS_TEST_FAKE_NETFILTER", t),
            ("TS_USERSPACE", t),
        ]);
        assert!(s.auth_once && s.test.fake_netfilter && s.userspace, "{t}");
    }
    for f in ["0", "f", "F", "FALSE", "false", "False"] {
        let s = ok(&[
            ("TS_AUTH_ONCE", f),
            ("TS_TEST_FAKE_NETFILTER", f),
            ("TS_USERSPACE", f),
        ]);
        assert!(
            !s.auth_once && !s.test.fake_netfilter && !s.userspace,
            "{f}"
        );
    }
}

#[test]
fn every_bool_error() {
    for name in [
        "TS_USERSPACE",
        "TS_ACCEPT_DNS",
        "TS_AUTH_ONCE",
        "TS_TEST_FAKE_NETFILTER",
    ] {
        for bad in ["maybe", "yes", "tRUE", " true", "2"] {
            let e = one_error(&[(name, bad)]);
            assert_eq!(e.variable, name);
            assert_eq!(
                e.message,
                format!("{name}={bad:?} is not a boolean: {BOOL_ACCEPTED}")
            );
        }
    }
    assert_eq!(
        one_error(&[("TS_USERSPACE", "maybe")]).to_string(),
        "TS_USERSPACE=\"maybe\" is not a boolean: use true or false \
         (also accepted: 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
    );
}

#[test]
fn ip_errors() {
    for name in ["TS_DEST_IP", "TS_TAILNET_TARGET_IP"] {
        for bad in ["10.0.0", "10.0.0.0/24", "example.com", "fe80::1%eth0"] {
            // Kernel mode with fake netfilter so only the parse error is left.
            let e = one_error(&[
                (name, bad),
                ("TS_USERSPACE", "false"),
                ("TS_TEST_FAKE_NETFILTER", "true"),
            ]);
            assert_eq!(e.variable, name);
            assert!(e.message.contains(name), "{}", e.message);
            assert!(e.message.contains(&format!("{bad:?}")), "{}", e.message);
            assert!(e.message.contains(IP_ACCEPTED), "{}", e.message);
        }
    }
}

#[test]
fn proxy_in_kernel_mode_with_fake_netfilter() {
    let base = [
        ("TS_USERSPACE", "false"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ];
    let mut v = base.to_vec();
    v.push(("TS_DEST_IP", "10.0.0.5"));
    let s = ok(&v);
    assert_eq!(s.proxy.ingress, Some("10.0.0.5".parse().expect("ip")));
    assert!(s.wants_proxy());

    let mut v = base.to_vec();
    v.push(("TS_TAILNET_TARGET_IP", "fd7a:115c:a1e0::1"));
    let s = ok(&v);
    assert_eq!(
        s.proxy.egress,
        Some(EgressTarget::Ip("fd7a:115c:a1e0::1".parse().expect("ip")))
    );
    assert!(s.wants_proxy());

    let mut v = base.to_vec();
    v.push(("TS_TAILNET_TARGET_FQDN", "foo.tails.ts.net"));
    let s = ok(&v);
    assert_eq!(s.egress_fqdn(), Some("foo.tails.ts.net"));
    assert!(s.wants_proxy());
}

#[test]
fn proxy_not_supported_with_userspace() {
    for (name, value) in [
        ("TS_DEST_IP", "10.0.0.5"),
        ("TS_TAILNET_TARGET_IP", "100.64.0.1"),
        ("TS_TAILNET_TARGET_FQDN", "foo.tails.ts.net"),
    ] {
        let e = one_error(&[(name, value)]);
        assert_eq!(e.variable, name);
        assert!(
            e.message.starts_with(&format!(
                "{name} is not supported with TS_USERSPACE: set TS_USERSPACE=false"
            )),
            "{}",
            e.message
        );
        // Same when userspace is explicit.
        assert_eq!(one_error(&[(name, value), ("TS_USERSPACE", "true")]), e);
    }
}

#[test]
fn both_tailnet_targets() {
    let e = one_error(&[
        ("TS_USERSPACE", "false"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
        ("TS_TAILNET_TARGET_IP", "100.64.0.1"),
        ("TS_TAILNET_TARGET_FQDN", "foo.tails.ts.net"),
    ]);
    assert!(
        e.message
            .starts_with("Both TS_TAILNET_TARGET_IP and TS_TAILNET_FQDN cannot be set: "),
        "{}",
        e.message
    );
    assert!(e.message.contains("only one"), "{}", e.message);
}

#[test]
fn kernel_mode_proxies_need_no_test_hook() {
    let s = ok(&[("TS_USERSPACE", "false"), ("TS_DEST_IP", "10.0.0.5")]);
    assert!(!s.userspace && s.wants_proxy() && !s.test.fake_netfilter);
    // Kernel mode without proxying needs no netfilter.
    assert!(!ok(&[("TS_USERSPACE", "false")]).userspace);
}

#[test]
fn serve_config_is_a_path() {
    let s = ok(&[("TS_SERVE_CONFIG", "/etc/serve.json")]);
    assert_eq!(
        s.serve_config.as_deref(),
        Some(std::path::Path::new("/etc/serve.json"))
    );
}

#[test]
fn serve_config_with_dest_ip_is_an_error() {
    let e = one_error(&[
        ("TS_SERVE_CONFIG", "/etc/serve.json"),
        ("TS_USERSPACE", "false"),
        ("TS_DEST_IP", "10.0.0.5"),
    ]);
    assert_eq!(e.variable, "TS_SERVE_CONFIG");
    assert!(
        e.message
            .starts_with("TS_SERVE_CONFIG cannot be used with TS_DEST_IP"),
        "{}",
        e.message
    );
}

#[test]
fn kube_secret_default_vs_set_empty() {
    // Outside Kubernetes there is no secret, whatever TS_KUBE_SECRET says.
    assert_eq!(ok(&[]).kube_state_secret(), None);
    assert_eq!(ok(&[("TS_KUBE_SECRET", "mine")]).kube_state_secret(), None);

    // In Kubernetes the secret (default or given) is used...
    let kube = ("KUBERNETES_SERVICE_HOST", "10.96.0.1");
    let s = ok(&[kube]);
    assert_eq!(s.kube_state_secret(), Some("tailscale"));
    assert_eq!(
        s.kube,
        Some(KubeEnv {
            host: "10.96.0.1".into(),
            port: 443,
            timeout_ms: DEFAULT_KUBE_TIMEOUT_MS
        })
    );
    assert_eq!(
        ok(&[kube, ("TS_KUBE_SECRET", "mine"), ("TS_STATE_DIR", "/s")]).state,
        StateStore::KubeSecret {
            secret: "mine".into(),
            dir: Some("/s".into())
        }
    );
    // ...and must be a Kubernetes name.
    let e = one_error(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("TS_KUBE_SECRET", "Mine/../x"),
    ]);
    assert_eq!(e.variable, "TS_KUBE_SECRET");
    assert!(
        e.message
            .contains("\"Mine/../x\" is not a Kubernetes secret name"),
        "{}",
        e.message
    );
    assert!(e.message.contains("TS_KUBE_SECRET=\"\""), "{}", e.message);

    // ...but setting it empty works.
    let s = ok(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("TS_KUBE_SECRET", ""),
        ("TS_STATE_DIR", "/state"),
    ]);
    assert!(s.kube.is_some());
    assert_eq!(s.state, StateStore::Dir("/state".into()));
}

#[test]
fn socket_set_empty_is_an_error() {
    let e = one_error(&[("TS_SOCKET", "")]);
    assert_eq!(e.variable, "TS_SOCKET");
    assert!(
        e.message
            .contains("unset it for the default /tmp/tailscaled.sock"),
        "{}",
        e.message
    );
}

#[test]
fn config_file_valid_with_comments_and_trailing_commas() {
    let f = config_file(
        "// tailscaled config\n{\n  \"Version\": \"alpha0\", /* the only one */\n  \"Hostname\": \"n\",\n  \"AdvertiseRoutes\": [\"10.0.0.0/24\",],\n}\n",
    );
    let path = f.as_str();
    let s = ok(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
    assert_eq!(s.config_file.as_deref(), Some(Path::new(path)));
    assert_eq!(s.auth_mode(), AuthMode::ConfigFile);
    // The config file wins over TS_AUTH_ONCE.
    let s = ok(&[
        ("EXPERIMENTAL_TS_CONFIGFILE_PATH", path),
        ("TS_AUTH_ONCE", "true"),
    ]);
    assert_eq!(s.auth_mode(), AuthMode::ConfigFile);
}

#[test]
fn config_file_missing() {
    let path = "/config/nope.json";
    let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
    assert_eq!(e.variable, "EXPERIMENTAL_TS_CONFIGFILE_PATH");
    assert!(
        e.message
            .starts_with("error validating tailscaled configfile contents:"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("EXPERIMENTAL_TS_CONFIGFILE_PATH"),
        "{}",
        e.message
    );
    assert!(e.message.contains(path), "{}", e.message);
    assert!(e.message.contains("cannot read"), "{}", e.message);
}

#[test]
fn config_file_bad_hujson() {
    for bad in [
        "{\"Version\": \"alpha0\"",
        "{Version: \"alpha0\"}",
        "{'Version': 'alpha0'}",
        "{\"Version\": \"alpha0\" \"A\": 1}",
        "{\"Version\": \"alpha0\", \"N\": 0x10}",
        "{} {}",
    ] {
        let f = config_file(bad);
        let path = f.as_str();
        let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
        assert!(
            e.message
                .starts_with("error validating tailscaled configfile contents:"),
            "{}",
            e.message
        );
        assert!(e.message.contains(path), "{}", e.message);
        assert!(
            e.message.contains("not valid HuJSON"),
            "{bad}: {}",
            e.message
        );
    }
}

#[test]
fn config_file_not_an_object_or_wrong_version() {
    for (contents, why) in [
        ("[1, 2]", "JSON object"),
        ("", "JSON object"),
        ("{}", "no \"Version\""),
        (
            "{\"Version\": \"alpha1\"}",
            "unsupported \"Version\" \"alpha1\"",
        ),
        ("{\"Version\": 0}", "unsupported \"Version\" 0"),
        ("{\"version\": \"alpha0\"}", "no \"Version\""),
    ] {
        let f = config_file(contents);
        let path = f.as_str();
        let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path)]);
        assert!(
            e.message
                .starts_with("error validating tailscaled configfile contents:"),
            "{}",
            e.message
        );
        assert!(e.message.contains(why), "{contents}: {}", e.message);
    }
}

#[test]
fn config_file_conflicts() {
    let f = config_file("{\"Version\": \"alpha0\"}");
    let path = f.as_str();
    let prefix = "EXPERIMENTAL_TS_CONFIGFILE_PATH cannot be set in combination with TS_HOSTNAME, \
                  TS_EXTRA_ARGS, TS_AUTHKEY, TS_ROUTES, TS_ACCEPT_DNS.";
    for (name, value) in [
        ("TS_HOSTNAME", "h"),
        ("TS_EXTRA_ARGS", "--ssh"),
        ("TS_AUTHKEY", "k"),
        ("TS_AUTH_KEY", "k"),
        ("TS_ROUTES", ""),
        ("TS_ROUTES", "10.0.0.0/8"),
        ("TS_ACCEPT_DNS", "false"),
    ] {
        let e = one_error(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", path), (name, value)]);
        assert_eq!(e.variable, "EXPERIMENTAL_TS_CONFIGFILE_PATH");
        assert!(e.message.starts_with(prefix), "{}", e.message);
        assert!(
            e.message.contains(&format!("Set now: {name};")),
            "{}",
            e.message
        );
    }
    // Several are named together.
    let e = one_error(&[
        ("EXPERIMENTAL_TS_CONFIGFILE_PATH", path),
        ("TS_HOSTNAME", "h"),
        ("TS_ACCEPT_DNS", "1"),
    ]);
    assert!(
        e.message.contains("Set now: TS_HOSTNAME, TS_ACCEPT_DNS;"),
        "{}",
        e.message
    );
    // Empty values (other than TS_ROUTES) count as unset.
    ok(&[
        ("EXPERIMENTAL_TS_CONFIGFILE_PATH", path),
        ("TS_HOSTNAME", ""),
        ("TS_EXTRA_ARGS", " "),
        ("TS_AUTHKEY", ""),
        ("TS_ACCEPT_DNS", ""),
    ]);
}

#[test]
fn kube_port_and_timeout() {
    let host = ("KUBERNETES_SERVICE_HOST", "fd00::1");
    let s = ok(&[
        host,
        ("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
        ("KUBERNETES_SERVICE_PORT", "1"),
    ]);
    let port = |s: Settings| s.kube.map(|k| k.port);
    assert_eq!(port(s), Some(6443));
    assert_eq!(
        port(ok(&[host, ("KUBERNETES_SERVICE_PORT", "8443")])),
        Some(8443)
    );
    let e = one_error(&[host, ("KUBERNETES_SERVICE_PORT_HTTPS", "0")]);
    assert_eq!(e.variable, "KUBERNETES_SERVICE_PORT_HTTPS");
    // Outside Kubernetes the port is not read for anything.
    assert_eq!(ok(&[("KUBERNETES_SERVICE_PORT", "x")]).kube, None);
    assert_eq!(
        ok(&[host, ("TS_KUBE_TIMEOUT", "2s")])
            .kube
            .map(|k| k.timeout_ms),
        Some(2000)
    );
    assert_eq!(
        one_error(&[("TS_KUBE_TIMEOUT", "soon")]).variable,
        "TS_KUBE_TIMEOUT"
    );
}

#[test]
fn multiple_errors_reported_together_in_order() {
    let errs = errors(&[
        ("TS_ROUTES", "10.0.0.5"),
        ("TS_DEST_IP", "nope"),
        ("TS_USERSPACE", "maybe"),
        ("TS_SOCKET", ""),
        ("TS_TAILNET_TARGET_FQDN", "a.ts.net"),
        ("KUBERNETES_SERVICE_HOST", "k"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "https"),
    ]);
    let vars: Vec<&str> = errs.iter().map(|e| e.variable).collect();
    // Read order first (TS_USERSPACE falls back to its default, true),
    // then the cross-variable rules.
    assert_eq!(
        vars,
        vec![
            "TS_ROUTES",
            "TS_DEST_IP",
            "KUBERNETES_SERVICE_PORT_HTTPS",
            "TS_USERSPACE",
            "TS_SOCKET",
            "TS_TAILNET_TARGET_FQDN",
        ]
    );
    let all = ConfigErrors(errs.clone()).to_string();
    let joined: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
    assert_eq!(all, joined.join("; "));
}

#[test]
fn auth_mode_and_wants_proxy() {
    assert_eq!(ok(&[]).auth_mode(), AuthMode::AlwaysAuth);
    assert_eq!(
        ok(&[("TS_AUTH_ONCE", "false")]).auth_mode(),
        AuthMode::AlwaysAuth
    );
    assert_eq!(
        ok(&[("TS_AUTH_ONCE", "true")]).auth_mode(),
        AuthMode::AuthOnce
    );
    let mut s = ok(&[]);
    assert!(!s.wants_proxy());
    s.proxy.egress = Some(EgressTarget::Fqdn("a.ts.net".into()));
    assert!(s.wants_proxy());
    s.config_file = Some(PathBuf::from("/c.json"));
    s.auth_once = true;
    assert_eq!(s.auth_mode(), AuthMode::ConfigFile);
}

#[test]
fn error_display() {
    let e = ConfigError::new("TS_X", "TS_X is bad: fix it");
    assert_eq!(e.to_string(), "TS_X is bad: fix it");
    let es = ConfigErrors(vec![e.clone(), ConfigError::new("TS_Y", "TS_Y too")]);
    assert_eq!(es.to_string(), "TS_X is bad: fix it; TS_Y too");
    let boxed: Box<dyn std::error::Error> = Box::new(es);
    assert!(boxed.to_string().contains("; "));
}

#[test]
fn settings_round_trip_through_serde() {
    let s = ok(&[
        ("TS_HOSTNAME", "h"),
        ("TS_ROUTES", "10.0.0.0/8"),
        ("TS_ACCEPT_DNS", "true"),
    ]);
    let json = serde_json::to_string(&s).expect("serialize");
    let back: Settings = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, s);
}

#[test]
fn trace_settings() {
    let s = Settings::from_lookup(|_| None).unwrap();
    assert_eq!(s.trace_file, PathBuf::from(DEFAULT_TRACE_FILE));
    assert_eq!(s.trace_steps, DEFAULT_TRACE_STEPS);
    let env = |k: &str| match k {
        "TS_TRACE_FILE" => Some("/x/t.jsonl".to_string()),
        "TS_TRACE_STEPS" => Some("50".to_string()),
        _ => None,
    };
    let s = Settings::from_lookup(env).unwrap();
    assert_eq!(s.trace_file, PathBuf::from("/x/t.jsonl"));
    assert_eq!(s.trace_steps, 50);
    for bad in ["0", "-1", "many", "2000000"] {
        let e = Settings::from_lookup(|k| (k == "TS_TRACE_STEPS").then(|| bad.to_string()))
            .unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].variable, "TS_TRACE_STEPS");
        assert!(
            e.0[0].message.contains(&format!("{bad:?}")),
            "{}",
            e.0[0].message
        );
    }
}

#[test]
fn durations() {
    let get = |k: &'static str, v: &'static str| {
        Settings::from_lookup(move |name| (name == k).then(|| v.to_string()))
    };
    assert_eq!(
        get("TS_BOOT_TIMEOUT", "90s").unwrap().boot_timeout_ms,
        90_000
    );
    assert_eq!(
        get("TS_BOOT_TIMEOUT", "3m").unwrap().boot_timeout_ms,
        180_000
    );
    assert_eq!(
        get("TS_BOOT_TIMEOUT", "1m30s").unwrap().boot_timeout_ms,
        90_000
    );
    assert_eq!(
        get("TS_SHUTDOWN_GRACE", "500ms").unwrap().shutdown_grace_ms,
        500
    );
    assert_eq!(get("TS_SHUTDOWN_GRACE", "0s").unwrap().shutdown_grace_ms, 0);
    for (k, bad) in [
        ("TS_BOOT_TIMEOUT", "90"),
        ("TS_BOOT_TIMEOUT", "0s"),
        ("TS_BOOT_TIMEOUT", "-5s"),
        ("TS_BOOT_TIMEOUT", "48h"),
        ("TS_SHUTDOWN_GRACE", "soon"),
    ] {
        let e = get(k, bad).unwrap_err();
        assert_eq!(e.0[0].variable, k);
        assert!(e.0[0].message.contains("such as 90s"), "{}", e.0[0].message);
        assert!(e.0[0].message.contains(&format!("{bad:?}")));
    }
}

#[test]
fn every_variable_read_is_listed_and_every_listed_one_is_read() {
    /// Records the names asked for.
    struct Asked(RefCell<Vec<String>>);
    impl Source for Asked {
        fn var(&self, name: &str) -> Option<String> {
            self.0.borrow_mut().push(name.to_string());
            // In Kubernetes, so the port variables are read too.
            (name == "KUBERNETES_SERVICE_HOST").then(|| "k".to_string())
        }
        fn file(&self, _: &Path) -> Result<String, String> {
            Err("none".into())
        }
    }
    let asked = Asked(RefCell::new(Vec::new()));
    let _ = Settings::read(&asked);
    let asked = asked.0.into_inner();
    for (name, _) in VARIABLES {
        assert!(
            asked.iter().any(|a| a == name),
            "{name} is listed but never read"
        );
    }
}

#[test]
#[should_panic(expected = "TS_NOT_LISTED is read but not listed in VARIABLES")]
fn reading_an_unlisted_variable_fails() {
    struct Empty;
    impl Source for Empty {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn file(&self, _: &Path) -> Result<String, String> {
            Err("none".into())
        }
    }
    let _ = read::Vars::new(&Empty).get("TS_NOT_LISTED");
}

#[test]
fn firewall_mode_and_recheck() {
    assert_eq!(ok(&[]).firewall, FirewallMode::Iptables);
    for (v, mode) in [
        ("iptables", FirewallMode::Iptables),
        ("nftables", FirewallMode::Nftables),
        ("auto", FirewallMode::Auto),
    ] {
        assert_eq!(ok(&[("TS_DEBUG_FIREWALL_MODE", v)]).firewall, mode);
    }
    let e = one_error(&[("TS_DEBUG_FIREWALL_MODE", "ipfw")]);
    assert_eq!(e.variable, "TS_DEBUG_FIREWALL_MODE");
    assert!(
        e.message
            .contains("use iptables (the default), nftables, or auto"),
        "{}",
        e.message
    );
    assert_eq!(ok(&[]).firewall_recheck_ms, DEFAULT_FIREWALL_RECHECK_MS);
    assert_eq!(ok(&[("TS_FIREWALL_RECHECK", "0")]).firewall_recheck_ms, 0);
    assert_eq!(
        ok(&[("TS_FIREWALL_RECHECK", "5m")]).firewall_recheck_ms,
        300_000
    );
    assert_eq!(
        one_error(&[("TS_FIREWALL_RECHECK", "often")]).variable,
        "TS_FIREWALL_RECHECK"
    );
}

#[test]
fn secret_flags_in_extra_args_are_secrets() {
    use crate::secret::{Arg, Secret};
    let s = ok(&[(
        "TS_EXTRA_ARGS",
        "--ssh --authkey=tskey-one -client-secret tskey-two --id-token=tok --authkeyless=x",
    )]);
    assert_eq!(
        s.extra_args,
        vec![
            Arg::Plain("--ssh".into()),
            Arg::Secret("--authkey=".into(), Secret::new("tskey-one")),
            Arg::Plain("-client-secret".into()),
            Arg::Secret(String::new(), Secret::new("tskey-two")),
            Arg::Secret("--id-token=".into(), Secret::new("tok")),
            Arg::Plain("--authkeyless=x".into()),
        ]
    );
    let shown = format!("{s:?} {}", serde_json::to_string(&s).unwrap());
    for secret in ["tskey-one", "tskey-two", "=tok"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

#[test]
fn the_api_server_host_must_be_a_host() {
    for good in [
        "10.96.0.1",
        "fd00::1",
        "[fd00::1]",
        "kubernetes.default.svc",
        "api-1.example.com.",
    ] {
        assert!(
            ok(&[("KUBERNETES_SERVICE_HOST", good)]).kube.is_some(),
            "{good}"
        );
    }
    for bad in [
        "localhost/#",
        "https://10.96.0.1",
        "user@host",
        "host:6443",
        "-bad.example",
        "a..b",
        "ho st",
    ] {
        let e = one_error(&[("KUBERNETES_SERVICE_HOST", bad)]);
        assert_eq!(e.variable, "KUBERNETES_SERVICE_HOST", "{bad}");
        assert!(
            e.message.contains("is not a host name or IP address"),
            "{}",
            e.message
        );
    }
}
