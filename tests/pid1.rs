//! containerboot as PID 1 of a real PID namespace (`unshare --pid --fork
//! --mount-proc`), the simulator as tailscaled: reaping, signals in every
//! state, exit codes, deadlines. Needs root (CI runs as root).
//!
//! And tini's `-s` variant, without a namespace or root: containerboot not
//! PID 1 makes itself a child subreaper, so the orphans of the storm are
//! re-parented to it and reaped there.

mod support;

use rustix::process::{Pid, Signal, kill_process};
use support::harness::Need;
use support::*;

const STARTUP: &str = "Startup complete, waiting for shutdown signal";

/// Waits until no process in `pid`'s namespace but tailscaled is alive
/// (the orphans have run their course); returns what is left.
fn settle(pid: i32) -> Vec<(i32, char, String)> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let procs = namespace_processes(pid);
        let busy = procs
            .iter()
            .any(|(_, state, comm)| *state != 'Z' && comm != "tailscaled");
        if !busy || std::time::Instant::now() > deadline {
            return procs;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn zombies(procs: &[(i32, char, String)]) -> Vec<&(i32, char, String)> {
    procs.iter().filter(|(_, s, _)| *s == 'Z').collect()
}

fn is_pid_1_and_reaps_an_orphan_storm_while_cli_runs_are_in_flight() {
    let mut w = World::new();
    // Both `up` and `set` leave 150 orphans each, which end while the CLI
    // run is still waiting for the daemon (400 ms per state step).
    w.var("TS_AUTH_ONCE", "true")
        .script(serde_json::json!({"cli_orphans": 150, "step_delay_ms": 400}));
    let mut r = w.start_as_pid1();
    assert_eq!(pid_in_namespace(r.pid()), Some(1));
    // Reaching startup complete needs both CLI statuses (exit 0) intact.
    r.wait_for(STARTUP);
    let left = settle(r.pid());
    assert!(zombies(&left).is_empty(), "unreaped: {left:?}");
    assert_eq!(
        left.iter().map(|(_, _, c)| c.as_str()).collect::<Vec<_>>(),
        ["tailscaled"],
        "only tailscaled is left: {left:?}"
    );
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    let lines = w.command_lines();
    assert!(lines.iter().any(|l| l.contains(" up ")) && lines.iter().any(|l| l.contains(" set ")));
}

fn a_failing_cli_status_is_not_stolen_by_the_reaper() {
    let mut w = World::new();
    w.script(serde_json::json!({
        "cli_orphans": 100, "step_delay_ms": 300,
        "up_exit_code": 3, "up_stderr": "backend error: scripted"
    }));
    let f = w.start_as_pid1().wait();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(
        f.has(
            "failed to auth tailscale: tailscale up failed: exit status 3: backend error: scripted"
        ),
        "{}",
        f.dump()
    );
}

fn the_zombie_check_can_fail() {
    // Negative control: a PID 1 that never reaps (sh exec'd into sleep)
    // leaves its exited child as a zombie, and the check sees it.
    let mut child = std::process::Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            "sleep 0.1 & exec sleep 30",
        ])
        .spawn()
        .unwrap();
    let outer = child.id() as i32;
    let deadline = std::time::Instant::now() + PATIENCE;
    let found = loop {
        let inner = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .next();
        if let Some(pid) = inner {
            let z = zombies(&namespace_processes(pid)).len();
            if z == 1 {
                break true;
            }
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the zombie of a non-reaping PID 1 was not seen");
}

/// Waits until no child of `pid` but tailscaled is alive (the orphans have
/// run their course), then up to `grace` for the zombies among them to be
/// reaped; returns the children left.
fn settle_children(pid: i32, grace: std::time::Duration) -> Vec<(i32, char, String)> {
    let deadline = std::time::Instant::now() + PATIENCE;
    while children_of(pid)
        .iter()
        .any(|(_, state, comm)| *state != 'Z' && comm != "tailscaled")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let deadline = std::time::Instant::now() + grace;
    loop {
        let left = children_of(pid);
        if zombies(&left).is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How long a zombie may stay unreaped after the last orphan ended: far
/// more than a SIGCHLD takes, far less than forever.
const REAP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn as_a_subreaper_reaps_an_orphan_storm_while_cli_runs_are_in_flight() {
    // As the PID 1 storm above, with containerboot an ordinary child of
    // this test: the orphans' nearest subreaper is containerboot only
    // because it made itself one.
    let mut w = World::new();
    w.var("TS_AUTH_ONCE", "true")
        .script(serde_json::json!({"cli_orphans": 150, "step_delay_ms": 400}));
    let mut r = w.start();
    let pid = r.pid();
    assert_ne!(pid_in_namespace(pid), Some(1));
    // Watch the orphans arrive: every `sleep` seen as containerboot's child
    // was re-parented to it (the CLI's `sh` started them and exited).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.extend(
                    children_of(pid)
                        .into_iter()
                        .filter(|(_, _, comm)| comm == "sleep")
                        .map(|(p, _, _)| p),
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            seen
        })
    };
    // Reaching startup complete needs both CLI statuses (exit 0) intact.
    r.wait_for(STARTUP);
    let left = settle_children(pid, REAP_GRACE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    // 300 orphans living 300 ms each, looked for every few ms: most are
    // seen; one is enough to show the re-parenting.
    assert!(
        !seen.is_empty(),
        "no orphan was re-parented to containerboot: it is not a subreaper"
    );
    assert!(zombies(&left).is_empty(), "unreaped: {left:?}");
    assert_eq!(
        left.iter().map(|(_, _, c)| c.as_str()).collect::<Vec<_>>(),
        ["tailscaled"],
        "only tailscaled is left: {left:?}"
    );
    let daemon = left[0].0;
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(!alive(daemon), "tailscaled left running");
    let lines = w.command_lines();
    assert!(lines.iter().any(|l| l.contains(" up ")) && lines.iter().any(|l| l.contains(" set ")));
}

/// `sh`, made a child subreaper when `subreaper`, whose child leaves 20
/// `sleep 1` orphans and exits; then it execs into `sleep 30`, which never
/// reaps. Returns once that exec is done.
fn non_reaping_parent(subreaper: bool) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "sh -c 'i=0; while [ $i -lt 20 ]; do sleep 1 & i=$((i+1)); done'; exec sleep 30",
    ]);
    if subreaper {
        // SAFETY: only a prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
                    .map_err(std::io::Error::from)
            });
        }
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "sh did not exec sleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child
}

fn the_subreaper_checks_can_fail() {
    // Negative controls for the test above, with a parent that never reaps
    // in containerboot's place. A subreaper: the 20 orphans are its
    // children, and once they end the zombie check sees every one.
    let mut child = non_reaping_parent(true);
    let pid = child.id() as i32;
    let left = settle_children(pid, REAP_GRACE);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        zombies(&left).len(),
        20,
        "the zombies of a non-reaping subreaper: {left:?}"
    );
    // Not a subreaper: the orphans are re-parented elsewhere, so the
    // watcher's check (orphans seen as its children) sees none.
    let mut child = non_reaping_parent(false);
    let pid = child.id() as i32;
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.extend(children_of(pid));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.is_empty(),
        "children of a parent that is not a subreaper: {seen:?}"
    );
}

/// The states a signal is tested in, with the script and the line that
/// says the state is reached.
fn states() -> Vec<(&'static str, serde_json::Value, &'static str)> {
    vec![
        (
            "WaitingSocket",
            serde_json::json!({"socket_delay_ms": 600000}),
            "Waiting for tailscaled socket",
        ),
        (
            "Authenticating (tailscale up in flight)",
            serde_json::json!({"step_delay_ms": 600000}),
            "Running 'tailscale up'",
        ),
        ("Running", serde_json::json!({}), STARTUP),
    ]
}

fn sigterm_in_every_state_stops_tailscaled_and_exits_0() {
    for (name, script, reached) in states() {
        let mut w = World::new();
        w.script(script);
        let mut r = w.start_as_pid1();
        r.wait_for(reached);
        let daemon = tailscaled_pid(r.pid()).expect("tailscaled runs");
        let f = r.terminate();
        assert_eq!(f.code, Some(0), "{name}:\n{}", f.dump());
        // tailscaled ended on our SIGTERM before containerboot exited (not
        // by the namespace going away): cleanly, or by the signal itself
        // when it came before the daemon's own handler was installed.
        assert!(
            f.has("Tailscaled exited (exit status 0)")
                || f.has("Tailscaled exited (killed by signal 15)"),
            "{name}:\n{}",
            f.dump()
        );
        assert!(!alive(daemon), "{name}: tailscaled left running");
    }
}

fn tailscaled_killed_in_every_state_exits_137() {
    for (name, script, reached) in states() {
        let mut w = World::new();
        w.script(script);
        let mut r = w.start_as_pid1();
        r.wait_for(reached);
        let daemon = tailscaled_pid(r.pid()).expect("tailscaled runs");
        kill_process(Pid::from_raw(daemon).unwrap(), Signal::KILL).unwrap();
        let f = r.wait();
        assert_eq!(f.code, Some(137), "{name}:\n{}", f.dump());
        assert!(
            f.has("Tailscaled exited (killed by signal 9)"),
            "{name}:\n{}",
            f.dump()
        );
    }
}

fn grace_period_escalates_to_sigkill() {
    let mut w = World::new();
    w.script(serde_json::json!({"ignore_sigterm": true}))
        .var("TS_SHUTDOWN_GRACE", "300ms");
    let mut r = w.start_as_pid1();
    r.wait_for(STARTUP);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(f.has("tailscaled did not exit within 300 ms of SIGTERM; sending SIGKILL"));
    assert!(f.has("Tailscaled exited (killed by signal 9)"));
}

fn a_second_signal_skips_the_grace_period() {
    let mut w = World::new();
    w.script(serde_json::json!({"ignore_sigterm": true}))
        .var("TS_SHUTDOWN_GRACE", "10m");
    let mut r = w.start_as_pid1();
    r.wait_for(STARTUP);
    r.signal(Signal::TERM);
    r.wait_for("Received Term signal, shutting down");
    r.signal(Signal::INT);
    let f = r.wait();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(f.has("Second termination signal: killing tailscaled now"));
}

fn boot_deadline_names_the_state() {
    let mut w = World::new();
    w.script(serde_json::json!({"socket_delay_ms": 600000}))
        .var("TS_BOOT_TIMEOUT", "1s");
    let f = w.start_as_pid1().wait();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(f.has("Timed out waiting for tailscaled socket: still in WaitingSocket after 1000 ms (TS_BOOT_TIMEOUT)"), "{}", f.dump());

    let mut w = World::new();
    w.script(serde_json::json!({"step_delay_ms": 600000}))
        .var("TS_BOOT_TIMEOUT", "1s");
    let f = w.start_as_pid1().wait();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(
        f.has("timed out after 1000 ms in Authenticating waiting for `tailscale up` to finish"),
        "{}",
        f.dump()
    );
}

fn a_dropped_bus_stream_is_watched_again_while_tailscaled_lives() {
    let mut w = World::new();
    let trace = w.path("trace.jsonl");
    w.script(serde_json::json!({"drop_bus_after_running_ms": 100}))
        .var("TS_TRACE_FILE", &trace.display().to_string());
    let mut r = w.start_as_pid1();
    r.wait_for(STARTUP);
    r.wait_for("sim-tailscaled: closing every bus watch as scripted");
    r.wait_for(
        "failed to read from tailscaled: the IPN bus stream ended; watching again in 500 ms",
    );
    // The watch opens again (the trace shows it), and the run goes on to a
    // clean stop. Dump until the re-opened watch is in it.
    let deadline = std::time::Instant::now() + PATIENCE;
    let reopened = loop {
        r.signal(Signal::USR1);
        r.wait_for("State trace (");
        let dump = std::fs::read_to_string(&trace).unwrap();
        let opened = dump.lines().filter(|l| l.contains("\"BusOpened\"")).count();
        // First watch, after `up`, after Running, after the drop.
        if opened >= 4 || std::time::Instant::now() > deadline {
            break opened;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(reopened >= 4, "the watch was not opened again");
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert_eq!(
        f.log
            .iter()
            .filter(|l| l.contains("watching again"))
            .count(),
        1,
        "one drop, one re-watch:\n{}",
        f.dump()
    );
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [],
        tests: [
            is_pid_1_and_reaps_an_orphan_storm_while_cli_runs_are_in_flight [Need::Root],
            a_failing_cli_status_is_not_stolen_by_the_reaper [Need::Root],
            the_zombie_check_can_fail [Need::Root],
            sigterm_in_every_state_stops_tailscaled_and_exits_0 [Need::Root],
            tailscaled_killed_in_every_state_exits_137 [Need::Root],
            grace_period_escalates_to_sigkill [Need::Root],
            a_second_signal_skips_the_grace_period [Need::Root],
            boot_deadline_names_the_state [Need::Root],
            a_dropped_bus_stream_is_watched_again_while_tailscaled_lives [Need::Root],
            as_a_subreaper_reaps_an_orphan_storm_while_cli_runs_are_in_flight,
            the_subreaper_checks_can_fail,
        ],
    })
}
