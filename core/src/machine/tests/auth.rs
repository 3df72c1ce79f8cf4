//! The three ways of logging in: always-auth, auth-once, config file.

use super::harness::*;

#[test]
fn always_auth_runs_up_before_reading_the_bus() {
    let mut r = Run::new(&[("TS_AUTHKEY", "tskey-secret")]);
    assert_eq!(
        r.boot_to_bus(),
        [
            "spawn tailscaled --socket=/tmp/tailscaled.sock --state=mem: --statedir=/tmp --tun=userspace-networking",
            "wait /tmp/tailscaled.sock",
            "watch#1 mask=InitialState|InitialPrefs|InitialNetMap",
            "symlink /var/run/tailscale/tailscaled.sock -> /tmp/tailscaled.sock",
            "cli tailscale --socket=/tmp/tailscaled.sock up --accept-dns=false --authkey=<redacted>",
        ]
    );
    assert!(matches!(
        r.m.state(),
        State::Authenticating {
            up: UpRun::Running,
            ..
        }
    ));
    // Messages while up runs are not read.
    let s = r.step(state(IpnState::NeedsLogin));
    assert!(s.commands.is_empty());
    assert!(s.note.is_some());
    assert_eq!(
        r.fx(ok(Cli::Up)),
        ["watch#2 mask=InitialState|InitialNetMap"]
    );
    // The new watch replays NeedsLogin: ignored, already logged in.
    assert!(r.fx(bus(2, Some(IpnState::NeedsLogin), None)).is_empty());
    assert_eq!(
        r.fx(bus(2, Some(IpnState::Running), None)),
        ["watch#3 mask=InitialState|InitialNetMap"]
    );
    assert!(matches!(
        r.m.state(),
        State::Running {
            phase: RunPhase::Watching,
            ..
        }
    ));
    assert_eq!(
        r.fx(bus(
            3,
            Some(IpnState::Running),
            Some(netmap(&["100.64.0.1/32"]))
        )),
        ["startup complete"]
    );
    // Only once.
    assert!(
        r.fx(bus(3, None, Some(netmap(&["100.64.0.2/32"]))))
            .is_empty()
    );
}

#[test]
fn auth_once_runs_up_only_on_needs_login_then_set() {
    let mut r = Run::new(&[("TS_AUTH_ONCE", "true"), ("TS_ROUTES", "10.0.0.0/8")]);
    let fx = r.boot_to_bus();
    assert_eq!(fx.len(), 4, "no up before the bus says NeedsLogin: {fx:?}");
    assert_eq!(
        r.fx(state(IpnState::NeedsLogin)),
        [
            "cli tailscale --socket=/tmp/tailscaled.sock up --accept-dns=false --advertise-routes=10.0.0.0/8"
        ]
    );
    assert_eq!(
        r.fx(ok(Cli::Up)),
        ["watch#2 mask=InitialState|InitialNetMap"]
    );
    assert_eq!(
        r.fx(bus(2, Some(IpnState::Running), None)),
        [
            "cli tailscale --socket=/tmp/tailscaled.sock set --accept-dns=false --advertise-routes=10.0.0.0/8"
        ]
    );
    assert!(matches!(
        r.m.state(),
        State::Running {
            phase: RunPhase::Setting,
            ..
        }
    ));
    assert_eq!(
        r.fx(ok(Cli::Set)),
        ["watch#3 mask=InitialState|InitialNetMap"]
    );
    assert_eq!(
        r.fx(bus(
            3,
            Some(IpnState::Running),
            Some(netmap(&["100.64.0.1/32"]))
        )),
        ["startup complete"]
    );
}

#[test]
fn auth_once_already_logged_in_only_sets() {
    let mut r = Run::new(&[("TS_AUTH_ONCE", "true")]);
    r.boot_to_bus();
    assert_eq!(
        logs(&r.step(state(IpnState::Starting))),
        ["tailscaled in state \"Starting\", waiting"]
    );
    assert_eq!(
        r.fx(state(IpnState::Running)),
        ["cli tailscale --socket=/tmp/tailscaled.sock set --accept-dns=false"]
    );
}

#[test]
fn config_file_mode_never_runs_the_cli_and_needs_login_is_fatal() {
    // Settings validate the file; the machine itself never reads it.
    let conf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/configfile/valid.hujson"
    );
    let mut r = Run::new(&[("EXPERIMENTAL_TS_CONFIGFILE_PATH", conf)]);
    let fx = r.boot_to_bus();
    assert!(fx[0].ends_with(&format!("--tun=userspace-networking --config={conf}")));
    assert!(!fx.iter().any(|c| c.starts_with("cli")), "{fx:?}");
    let s = r.step(state(IpnState::NeedsLogin));
    assert!(logs(&s)[0].contains("ensure you pass a valid auth key in the config file"));
    assert_eq!(effects(&s), ["signal Term"]);
    assert_eq!(
        *r.m.state(),
        State::Shutdown {
            code: 1,
            killed: false
        }
    );
    assert_eq!(
        r.fx(Event::TailscaledExited {
            status: ProcessExit::Code(0)
        }),
        ["exit 1"]
    );
}

#[test]
fn machine_auth_and_other_states_are_logged() {
    let mut r = Run::new(&[("TS_AUTH_ONCE", "1")]);
    r.boot_to_bus();
    assert_eq!(
        logs(&r.step(state(IpnState::NeedsMachineAuth))),
        ["machine authorization required, please visit the admin panel"]
    );
}

#[test]
fn leaving_running_is_fatal() {
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(ok(Cli::Up));
    r.step(bus(2, Some(IpnState::Running), None));
    let s = r.step(bus(3, Some(IpnState::NeedsLogin), None));
    assert_eq!(
        logs(&s),
        ["tailscaled left running state (now in state \"NeedsLogin\"), exiting"]
    );
    assert_eq!(effects(&s), ["signal Term"]);
}

#[test]
fn up_failure_is_fatal_with_stderr() {
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    let s = r.step(Event::CliFinished {
        cli: Cli::Up,
        outcome: CliOutcome::Exited {
            status: ProcessExit::Code(1),
            stderr: "backend error: invalid key\n".into(),
        },
    });
    assert_eq!(
        logs(&s),
        [
            "failed to auth tailscale: tailscale up failed: exit status 1: backend error: invalid key"
        ]
    );
    assert_eq!(
        *r.m.state(),
        State::Shutdown {
            code: 1,
            killed: false
        }
    );
}
