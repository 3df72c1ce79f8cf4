//! inotify unavailable: containerboot in a user namespace of its own
//! (`unshare --user --map-root-user`) whose inotify instance or watch limit
//! (`/proc/sys/user/max_inotify_instances`, `max_inotify_watches`: per user
//! namespace since Linux 4.9) is set to 0 before it starts, so the kernel
//! itself answers EMFILE or ENOSPC, and the host's limits are untouched.
//! The serve config must still be applied, its changes seen by the slow
//! check, and the fallback said once per path with the sysctl to raise.
//! Assertions are on the POSTs the simulator recorded.
//!
//! Needs root: an unprivileged user namespace may be refused (AppArmor's
//! `apparmor_restrict_unprivileged_userns`, `kernel.unprivileged_userns_clone`).

mod support;

use serde_json::{Value, json};
use std::path::Path;
use support::harness::Need;
use support::*;

const APPLIED: &str = "Applied serve config from";
const STARTUP: &str = "Startup complete, waiting for shutdown signal";

/// The bodies of the serve-config POSTs the simulator accepted, in order.
fn applied(w: &World) -> Vec<Value> {
    w.records()
        .into_iter()
        .filter(|(prog, a)| prog == "serve-config" && a[0] == "200")
        .map(|(_, a)| serde_json::from_str(&a[2]).expect("a JSON body"))
        .collect()
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
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

/// Starts containerboot in a user namespace of its own (`unshare --user
/// --map-root-user`) whose inotify limit `limit` (a file of
/// /proc/sys/user/, per user namespace since Linux 4.9) is set to 0 first:
/// a real EMFILE or ENOSPC from the kernel, and the host's limits untouched.
fn start_without_inotify(w: &World, limit: &str) -> Running {
    let script = format!("echo 0 > /proc/sys/user/{limit} && exec \"$0\"");
    w.start_through(&["unshare", "--user", "--map-root-user", "sh", "-c", &script])
}

fn inotify_unavailable_falls_back_to_a_slow_check(limit: &str, sysctl: &str) {
    let (w, file) = world_with_file("serve/serve.json");
    write(&file, &tcp_config(1));
    let mut r = start_without_inotify(&w, limit);
    let line = r.wait_for(&format!("inotify is unavailable for {}", file.display()));
    assert!(line.contains(sysctl), "{line}");
    r.wait_for(APPLIED);
    // A change is seen by the slow check (every 10 s), and applied.
    write(&file, &tcp_config(2));
    r.wait_for(APPLIED);
    assert!(alive(r.pid()));
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(f.has(STARTUP), "{}", f.dump());
    assert_eq!(
        applied(&w),
        [json!({}), tcp_config(1), tcp_config(2)],
        "{}",
        f.dump()
    );
    let said = |path: &Path| {
        f.log
            .iter()
            .filter(|l| l.contains(&format!("inotify is unavailable for {}", path.display())))
            .count()
    };
    assert_eq!(said(&file), 1, "said once for the file\n{}", f.dump());
    // The socket: with no instance at all its wait falls back at once;
    // with no watches only if the socket was not there yet when the wait
    // began (it looks before adding a watch). Never more than once.
    let socket = said(&w.path("run/tailscaled.sock"));
    if limit == "max_inotify_instances" {
        assert_eq!(socket, 1, "and once for the socket\n{}", f.dump());
    } else {
        assert!(socket <= 1, "at most once for the socket\n{}", f.dump());
    }
}

fn inotify_instance_limit_reached_falls_back_to_a_slow_check() {
    inotify_unavailable_falls_back_to_a_slow_check(
        "max_inotify_instances",
        "fs.inotify.max_user_instances",
    );
}

fn inotify_watch_limit_reached_falls_back_to_a_slow_check() {
    inotify_unavailable_falls_back_to_a_slow_check(
        "max_inotify_watches",
        "fs.inotify.max_user_watches",
    );
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [Need::Root, Need::Program("unshare")],
        tests: [
            inotify_instance_limit_reached_falls_back_to_a_slow_check,
            inotify_watch_limit_reached_falls_back_to_a_slow_check,
        ],
    })
}
