//! Signals, the kill grace, exit codes and the boot deadline.

use super::harness::*;

#[test]
fn signal_in_every_state_terminates_tailscaled_and_exits_zero() {
    type Prefix = fn(&mut Run);
    let prefixes: [(&str, Prefix); 4] = [
        ("WaitingSocket", |r| {
            r.step(Event::Start);
        }),
        ("Authenticating(up running)", |r| {
            r.boot_to_bus();
        }),
        ("Running(Watching)", |r| {
            r.boot_to_bus();
            r.step(ok(Cli::Up));
            r.step(bus(2, Some(IpnState::Running), None));
        }),
        ("Shutdown(exit 0)", |r| {
            r.step(Event::Start);
            r.step(Event::Signal { signal: Sig::Term });
        }),
    ];
    for (name, prefix) in prefixes {
        let mut r = Run::new(&[]);
        prefix(&mut r);
        assert_eq!(r.m.state().to_string(), name);
        let fx = r.fx(Event::Signal { signal: Sig::Int });
        if name.starts_with("Shutdown") {
            assert_eq!(fx, ["signal Kill"], "second signal skips the grace period");
        } else if name == "Authenticating(up running)" {
            assert_eq!(fx, ["signal cli up Term", "signal Term"]);
        } else {
            assert_eq!(fx, ["signal Term"], "in {name}");
        }
        let fx = r.fx(Event::TailscaledExited {
            status: ProcessExit::Signal(15),
        });
        if name == "Authenticating(up running)" {
            // The CLI run is still going: containerboot waits for it too.
            assert!(fx.is_empty(), "{fx:?}");
            assert_eq!(r.fx(failed_cli(Cli::Up)), ["exit 0"]);
        } else {
            assert_eq!(fx, ["exit 0"], "in {name}");
        }
    }
    // Before tailscaled exists there is nothing to wait for.
    let mut r = Run::new(&[("TS_USERSPACE", "false"), ("TS_ROUTES", "")]);
    assert_eq!(r.fx(Event::Start), ["prepare v4=false v6=false"]);
    assert_eq!(r.fx(Event::Signal { signal: Sig::Term }), ["exit 0"]);
}

#[test]
fn kill_grace_escalates_to_sigkill() {
    let mut r = Run::new(&[]);
    r.step(Event::Start);
    r.step(Event::Signal { signal: Sig::Term });
    let at = r.m.next_deadline().unwrap();
    assert_eq!(at, r.now + crate::settings::DEFAULT_SHUTDOWN_GRACE_MS);
    // Early wake-up: nothing happens.
    let early = r.step(Event::DeadlineExpired);
    assert!(early.commands.is_empty());
    assert_eq!(early.note.as_deref(), Some("no deadline due"));
    assert_eq!(
        effects(&r.advance_to_next_deadline()),
        ["signal Kill"],
        "SIGKILL at the end of the grace"
    );
    assert_eq!(r.now, at);
    assert_eq!(r.m.next_deadline(), None);
}

#[test]
fn tailscaled_exit_codes_like_tini() {
    assert_eq!(exit_code_for_unrequested_exit(ProcessExit::Code(0)), 1);
    assert_eq!(exit_code_for_unrequested_exit(ProcessExit::Code(3)), 3);
    assert_eq!(exit_code_for_unrequested_exit(ProcessExit::Signal(9)), 137);
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    let s = r.step(Event::TailscaledExited {
        status: ProcessExit::Signal(9),
    });
    // The CLI in flight is stopped too; tailscaled is gone already, and
    // containerboot exits once the CLI is gone as well.
    assert_eq!(effects(&s), ["signal cli up Term"]);
    assert!(logs(&s)[0].starts_with("Tailscaled exited"));
    assert_eq!(r.fx(failed_cli(Cli::Up)), ["exit 137"]);
}

#[test]
fn the_exit_code_does_not_depend_on_which_report_comes_first() {
    // tailscaled is SIGKILLed while `tailscale up` runs; the CLI then fails
    // because its daemon is gone. Either report may reach containerboot
    // first; both orders exit 137.
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(Event::TailscaledExited {
        status: ProcessExit::Signal(9),
    });
    assert_eq!(r.fx(failed_cli(Cli::Up)), ["exit 137"]);

    let mut r = Run::new(&[]);
    r.boot_to_bus();
    assert_eq!(r.fx(failed_cli(Cli::Up)), ["signal Term"]);
    assert_eq!(
        r.fx(Event::TailscaledExited {
            status: ProcessExit::Signal(9)
        }),
        ["exit 137"]
    );

    // The same with an exit code of its own: exit 3 in both orders.
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(Event::TailscaledExited {
        status: ProcessExit::Code(3),
    });
    assert_eq!(r.fx(failed_cli(Cli::Up)), ["exit 3"]);
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(failed_cli(Cli::Up));
    assert_eq!(
        r.fx(Event::TailscaledExited {
            status: ProcessExit::Code(3)
        }),
        ["exit 3"]
    );

    // Our own SIGTERM ending it (signal 15, or a clean exit 0) is no
    // cause: the failure stays exit 1.
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(failed_cli(Cli::Up));
    assert_eq!(
        r.fx(Event::TailscaledExited {
            status: ProcessExit::Code(0)
        }),
        ["exit 1"]
    );
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(failed_cli(Cli::Up));
    assert_eq!(
        r.fx(Event::TailscaledExited {
            status: ProcessExit::Signal(15)
        }),
        ["exit 1"]
    );
}

#[test]
fn a_cli_run_ignoring_sigterm_is_killed_after_the_grace() {
    let mut r = Run::new(&[("TS_SHUTDOWN_GRACE", "2s")]);
    r.boot_to_bus();
    assert_eq!(
        r.fx(Event::Signal { signal: Sig::Term }),
        ["signal cli up Term", "signal Term"]
    );
    // tailscaled goes; `tailscale up` ignores SIGTERM.
    assert!(
        r.fx(Event::TailscaledExited {
            status: ProcessExit::Signal(15)
        })
        .is_empty()
    );
    let s = r.advance_to_next_deadline();
    assert_eq!(effects(&s), ["signal cli up Kill"]);
    assert!(logs(&s)[0].starts_with("tailscale up did not exit within 2000 ms"));
    assert_eq!(
        r.fx(Event::CliFinished {
            cli: Cli::Up,
            outcome: CliOutcome::Exited {
                status: ProcessExit::Signal(9),
                stderr: String::new()
            }
        }),
        ["exit 0"]
    );
}

#[test]
fn shutdown_terminates_the_cli_in_flight() {
    // While `tailscale up` runs.
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    assert_eq!(
        r.fx(Event::Signal { signal: Sig::Term }),
        ["signal cli up Term", "signal Term"]
    );
    // While `tailscale set` runs.
    let mut r = Run::new(&[("TS_AUTH_ONCE", "true")]);
    r.boot_to_bus();
    r.step(state(IpnState::Running));
    assert_eq!(
        r.fx(Event::Signal { signal: Sig::Int }),
        ["signal cli set Term", "signal Term"]
    );
    // Not after the run finished.
    let mut r = Run::new(&[]);
    r.boot_to_bus();
    r.step(ok(Cli::Up));
    assert_eq!(r.fx(Event::Signal { signal: Sig::Term }), ["signal Term"]);
}

#[test]
fn boot_timeout_and_grace_come_from_settings() {
    let mut r = Run::new(&[("TS_BOOT_TIMEOUT", "3s"), ("TS_SHUTDOWN_GRACE", "250ms")]);
    r.step(Event::Start);
    assert_eq!(r.m.next_deadline(), Some(r.now + 3000));
    r.boot_to_bus_after_start();
    let s = r.advance_to_next_deadline();
    let at = r.now;
    assert!(
        logs(&s)[0].starts_with(
            "timed out after 3000 ms in Authenticating waiting for `tailscale up` to finish"
        ),
        "{:?}",
        logs(&s)
    );
    assert_eq!(effects(&s), ["signal cli up Term", "signal Term"]);
    assert_eq!(r.m.next_deadline(), Some(at + 250));
}

#[test]
fn boot_deadline_names_the_state() {
    let mut r = Run::new(&[]);
    r.step(Event::Start);
    let s = r.advance_to_next_deadline();
    assert!(logs(&s)[0].starts_with("Timed out waiting for tailscaled socket"));
    assert_eq!(effects(&s), ["signal Term"]);
}
