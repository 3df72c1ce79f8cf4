//! The serve config through the states: started on Running, netmaps and
//! file reads routed to it, its retry timer, nothing after shutdown.

use super::harness::*;

const FILE: &str = "/etc/ts/serve.json";

/// Running and watching (watch 2), with `TS_SERVE_CONFIG`; the effects of
/// reaching Running.
fn running() -> (Run, Vec<String>) {
    let mut r = Run::new(&[("TS_SERVE_CONFIG", FILE)]);
    r.boot_to_bus();
    r.step(ok(Cli::Up));
    let fx = r.fx(bus(2, Some(IpnState::Running), None));
    (r, fx)
}

fn read(content: &str) -> Event {
    Event::ServeConfigRead {
        content: content.into(),
    }
}

fn set(error: Option<&str>) -> Event {
    Event::ServeConfigSet {
        error: error.map(str::to_string),
    }
}

#[test]
fn running_clears_watches_and_applies_after_the_first_netmap() {
    let (mut r, fx) = running();
    assert_eq!(
        fx,
        [
            format!("watch serve config {FILE}"),
            "set serve config {}".to_string(),
            "watch#3 mask=InitialState|InitialNetMap".to_string(),
        ]
    );
    assert!(
        r.fx(read(r#"{"Web":{"${TS_CERT_DOMAIN}:443":{}}}"#))
            .is_empty()
    );
    assert!(r.fx(set(None)).is_empty(), "no netmap yet");
    let fx = r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    assert_eq!(
        fx[0], r#"set serve config {"Web":{"self.tailnet.ts.net:443":{}}}"#,
        "{fx:?}"
    );
    let s = r.step(set(None));
    assert_eq!(logs(&s), [format!("Applied serve config from {FILE}")]);
    // The same netmap again: nothing new to post.
    let fx = r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    assert!(
        !fx.iter().any(|f| f.starts_with("set serve config")),
        "{fx:?}"
    );
}

#[test]
fn a_failed_call_is_retried_on_its_timer_and_shutdown_disarms_it() {
    let (mut r, _) = running();
    r.step(set(Some("connecting to tailscaled: refused")));
    let s = r.advance_to_next_deadline();
    assert_eq!(effects(&s), ["set serve config {}"]);
    r.step(set(Some("refused again")));
    let s = r.step(Event::Signal { signal: Sig::Term });
    assert!(effects(&s).contains(&"signal Term".to_string()), "{s:?}");
    assert_eq!(
        r.m.next_deadline(),
        Some(r.now + 8_000),
        "only the kill grace"
    );
}

#[test]
fn without_ts_serve_config_nothing_is_watched_or_posted() {
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(ok(Cli::Up));
    let fx = r.fx(bus(2, Some(IpnState::Running), None));
    assert!(!fx.iter().any(|f| f.contains("serve")), "{fx:?}");
    let s = r.step(read("{}"));
    assert!(s.note.is_some(), "ignored with a note");
}

fn endpoint(value: Option<&str>) -> KubeCall {
    KubeCall::StoreHttpsEndpoint {
        endpoint: value.map(str::to_string),
    }
}

fn endpoint_fx(value: Option<&str>) -> String {
    format!("kube {:?}", endpoint(value))
}

/// In Kubernetes with patch permission: `https_endpoint` follows what the
/// applied config serves (upstream's key and value: the cert domain, or
/// `no-https`), removed at the start and when no HTTPS is served any more.
#[test]
fn https_endpoint_follows_the_applied_config_in_the_state_secret() {
    const HTTPS: &str = r#"{"TCP":{"443":{"HTTPS":true}},"Web":{"${TS_CERT_DOMAIN}:443":{}}}"#;
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k"), ("TS_SERVE_CONFIG", FILE)]);
    r.kube_checks(true, true, true);
    r.boot_to_bus_after_start();
    r.fx(state(IpnState::NeedsLogin));
    r.fx(ok(Cli::Up));
    r.fx(bus(2, Some(IpnState::Running), None));
    assert!(r.fx(read(HTTPS)).is_empty());
    // The clear of an earlier run's config: an earlier run's endpoint goes.
    assert_eq!(r.fx(set(None)), [endpoint_fx(None)]);
    let me = node("nSELF", "self.tailnet.ts.net.", &["100.64.0.1/32"]);
    let fx = r.fx(bus(3, None, Some(me.clone())));
    assert_eq!(
        fx[0],
        r#"set serve config {"TCP":{"443":{"HTTPS":true}},"Web":{"self.tailnet.ts.net:443":{}}}"#
    );
    // One Kubernetes call at a time: the device info after the removal.
    assert_eq!(
        r.fx(kube(endpoint(None), KubeReply::Done)),
        ["kube ProbeSecret"]
    );
    r.fx(kube(
        KubeCall::ProbeSecret,
        KubeReply::Secret { authkey: None },
    ));
    let a = info("nSELF", "self.tailnet.ts.net.", &["100.64.0.1"]);
    r.fx(kube(KubeCall::StoreDeviceInfo { info: a }, KubeReply::Done));
    // Applied: the endpoint is written, once.
    assert_eq!(
        r.fx(set(None))
            .into_iter()
            .filter(|f| f.starts_with("kube"))
            .collect::<Vec<_>>(),
        [endpoint_fx(Some("self.tailnet.ts.net"))]
    );
    assert!(
        r.fx(kube(endpoint(Some("self.tailnet.ts.net")), KubeReply::Done))
            .is_empty()
    );
    // A config without HTTPS: the key is removed once it is applied.
    assert_eq!(
        r.fx(read(r#"{"TCP":{"22":{"TCPForward":"127.0.0.1:22"}}}"#))
            .len(),
        1
    );
    assert_eq!(r.fx(set(None)), [endpoint_fx(None)]);
    r.fx(kube(endpoint(None), KubeReply::Done));
    // HTTPS again, then the tailnet loses its cert domain: `no-https`.
    r.fx(read(HTTPS));
    assert_eq!(r.fx(set(None)), [endpoint_fx(Some("self.tailnet.ts.net"))]);
    r.fx(kube(endpoint(Some("self.tailnet.ts.net")), KubeReply::Done));
    let mut no_domain = me.clone();
    no_domain.cert_domain = None;
    assert_eq!(
        r.fx(bus(3, None, Some(no_domain))),
        [endpoint_fx(Some("no-https"))]
    );
    // A refused write is logged, not fatal, and not repeated.
    let s = r.step(kube(
        endpoint(Some("no-https")),
        KubeReply::Status {
            code: 403,
            message: "forbidden".into(),
        },
    ));
    assert!(
        logs(&s)
            .iter()
            .any(|l| l.contains("storing https_endpoint") && l.contains("403")),
        "{s:?}"
    );
    assert!(!matches!(r.m.state(), State::Shutdown { .. }));
}

#[test]
fn without_patch_permission_https_endpoint_is_not_written() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k"), ("TS_SERVE_CONFIG", FILE)]);
    r.kube_checks(true, true, false);
    r.boot_to_bus_after_start();
    r.fx(state(IpnState::NeedsLogin));
    r.fx(ok(Cli::Up));
    r.fx(bus(2, Some(IpnState::Running), None));
    r.fx(read(r#"{"TCP":{"443":{"HTTPS":true}}}"#));
    let mut all = r.fx(set(None));
    all.extend(r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"])))));
    all.extend(r.fx(set(None)));
    assert!(!all.iter().any(|f| f.starts_with("kube")), "{all:?}");
}

fn fallback(path: &str, sysctl: Option<&str>) -> Event {
    Event::WatchFallback {
        path: path.into(),
        error: "creating an inotify instance failed: Too many open files (os error 24)".into(),
        sysctl: sysctl.map(str::to_string),
        every_ms: 10_000,
    }
}

#[test]
fn an_inotify_fallback_is_logged_once_per_path_naming_the_sysctl() {
    let (mut r, _) = running();
    let s = r.step(fallback(FILE, Some("fs.inotify.max_user_instances")));
    let said = logs(&s);
    assert_eq!(said.len(), 1, "{s:?}");
    assert!(
        said[0].contains(FILE)
            && said[0].contains("fs.inotify.max_user_instances")
            && said[0].contains("every 10 s"),
        "{}",
        said[0]
    );
    assert!(effects(&s).is_empty(), "{s:?}");
    let s = r.step(fallback(FILE, Some("fs.inotify.max_user_instances")));
    assert!(logs(&s).is_empty() && s.note.is_some(), "{s:?}");
    // Another path is its own line, also before Running.
    let mut early = Run::new(&[]);
    early.boot_to_bus();
    let s = early.step(fallback("/tmp/tailscaled.sock", None));
    assert_eq!(logs(&s).len(), 1, "{s:?}");
    assert!(logs(&s)[0].contains("seen late, not lost"), "{s:?}");
}

fn self_change(name: &str) -> Event {
    let mut node = netmap(&["100.64.0.1/32"]).self_node;
    node.name = name.into();
    Event::Bus {
        watch: 3,
        message: BusMessage {
            self_change: Some(node),
            ..Default::default()
        },
    }
}

fn dns(cert_domain: Option<&str>, error: Option<&str>) -> Event {
    Event::DnsConfigFetched {
        cert_domain: cert_domain.map(str::to_string),
        error: error.map(str::to_string),
    }
}

#[test]
fn a_self_change_reads_the_cert_domain_again_one_request_at_a_time() {
    let (mut r, _) = running();
    r.step(read(r#"{"Web":{"${TS_CERT_DOMAIN}:443":{}}}"#));
    r.step(set(None));
    r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    r.step(set(None));
    // tailscaled 1.102: the node renamed, its new cert domain not on the bus.
    let fx = r.fx(self_change("renamed.tailnet.ts.net."));
    assert_eq!(fx, ["fetch dns-config"]);
    // Another change while the request is out: one more after it.
    assert!(r.fx(self_change("again.tailnet.ts.net.")).is_empty());
    let fx = r.fx(dns(Some("renamed.tailnet.ts.net"), None));
    assert_eq!(
        fx,
        [
            r#"set serve config {"Web":{"renamed.tailnet.ts.net:443":{}}}"#,
            "fetch dns-config"
        ]
    );
    r.step(set(None));
    // A failure is said and changes nothing; the next change asks again.
    let s = r.step(dns(None, Some("tailscaled answered 503: no netmap")));
    assert!(effects(&s).is_empty(), "{:?}", effects(&s));
    assert!(
        logs(&s)[0]
            .starts_with("error refreshing DNS config from tailscaled: tailscaled answered 503"),
        "{:?}",
        logs(&s)
    );
    assert_eq!(
        r.fx(self_change("third.tailnet.ts.net.")),
        ["fetch dns-config"]
    );
    // The same domain: nothing posted.
    assert!(r.fx(dns(Some("renamed.tailnet.ts.net"), None)).is_empty());
}

#[test]
fn without_a_serve_config_a_self_change_reads_nothing() {
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(ok(Cli::Up));
    r.step(bus(2, Some(IpnState::Running), None));
    r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    let fx = r.fx(self_change("renamed.tailnet.ts.net."));
    assert!(!fx.iter().any(|f| f.contains("dns-config")), "{fx:?}");
}
