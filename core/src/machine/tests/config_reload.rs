//! The tailscaled config file kept live through the states: watched once
//! Running, changes sent as reload-config, retried on its timer, nothing
//! after shutdown.

use super::harness::*;
use crate::machine::config_reload::ReloadOutcome;

const CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/configfile/valid.hujson"
);

/// The file read as `content` (its text standing in for the digest).
fn read(content: &str) -> Event {
    Event::ConfigFileRead {
        digest: content.into(),
        problem: crate::settings::check_config_text(content).err(),
    }
}

fn reloaded(outcome: ReloadOutcome) -> Event {
    Event::ConfigReloaded { outcome }
}

/// Running with a config file (tailscaled logs in by itself).
fn running() -> (Run, Vec<String>) {
    let mut r = Run::new(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", CONF)]);
    r.boot_to_bus();
    let fx = r.fx(bus(1, Some(IpnState::Running), None));
    (r, fx)
}

#[test]
fn running_watches_the_file_and_a_change_is_one_reload() {
    let (mut r, fx) = running();
    assert_eq!(
        fx,
        [
            format!("watch config file {CONF}"),
            "watch#2 mask=InitialState|InitialNetMap".to_string()
        ]
    );
    let v1 = r#"{"Version":"alpha0","Hostname":"a"}"#;
    let v2 = r#"{"Version":"alpha0","Hostname":"b"}"#;
    assert!(r.fx(read(v1)).is_empty(), "the first read is the baseline");
    assert_eq!(r.fx(read(v2)), ["reload config"]);
    let s = r.step(reloaded(ReloadOutcome::Reloaded));
    assert!(
        logs(&s).iter().any(|l| l.contains("config was reloaded")),
        "{s:?}"
    );
    // An invalid version: reported, not sent.
    let s = r.step(read("{\"Version\":\"alpha0\",,}"));
    assert!(effects(&s).is_empty(), "{s:?}");
    assert!(logs(&s)[0].contains("not sent"), "{s:?}");
}

#[test]
fn an_unreachable_tailscaled_is_retried_on_its_timer_and_shutdown_disarms_it() {
    let (mut r, _) = running();
    r.fx(read(r#"{"Version":"alpha0"}"#));
    assert_eq!(
        r.fx(read(r#"{"Version":"alpha0","Hostname":"x"}"#)),
        ["reload config"]
    );
    r.step(reloaded(ReloadOutcome::Unreachable {
        error: "connecting to tailscaled: refused".into(),
    }));
    let s = r.advance_to_next_deadline();
    assert_eq!(effects(&s), ["reload config"]);
    r.step(reloaded(ReloadOutcome::Unreachable {
        error: "connecting to tailscaled: refused".into(),
    }));
    let s = r.step(Event::Signal { signal: Sig::Term });
    assert!(effects(&s).contains(&"signal Term".to_string()), "{s:?}");
    assert_eq!(
        r.m.next_deadline(),
        Some(r.now + 8_000),
        "only the kill grace"
    );
}

#[test]
fn a_404_daemon_is_told_once_to_restart() {
    let (mut r, _) = running();
    r.fx(read(r#"{"Version":"alpha0"}"#));
    r.fx(read(r#"{"Version":"alpha0","Hostname":"x"}"#));
    let s = r.step(reloaded(ReloadOutcome::NotSupported));
    assert_eq!(logs(&s).len(), 1);
    assert!(logs(&s)[0].contains("restart the container"), "{s:?}");
    let s = r.step(read(r#"{"Version":"alpha0","Hostname":"y"}"#));
    assert!(effects(&s).is_empty() && logs(&s).is_empty(), "{s:?}");
}
