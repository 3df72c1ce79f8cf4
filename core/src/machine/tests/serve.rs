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
