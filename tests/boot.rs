//! Upstream's scenarios outside Kubernetes, end to end: containerboot as a
//! real process, the simulator as tailscaled and tailscale on PATH, real
//! unix sockets, real inotify. Each asserts the exact command lines.

mod support;

use support::harness::Need;
use support::*;

const STARTUP: &str = "Startup complete, waiting for shutdown signal";

/// Boots to startup complete, stops with SIGTERM, expects exit 0.
fn boot(w: &World) -> Finished {
    let mut r = w.start();
    r.wait_for(STARTUP);
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "log:\n{}", f.dump());
    f
}

fn daemon(w: &World, rest: &str) -> String {
    format!("tailscaled --socket={}{rest}", w.socket.display())
}

fn cli(w: &World, rest: &str) -> String {
    format!("tailscale --socket={}{rest}", w.socket.display())
}

const MEM: &str = " --state=mem: --statedir=/tmp";
const US: &str = " --tun=userspace-networking";

fn no_variables() {
    let w = World::new();
    let f = boot(&w);
    assert_eq!(
        w.command_lines(),
        [
            daemon(&w, &format!("{MEM}{US}")),
            cli(&w, " up --accept-dns=false")
        ]
    );
    // The CLI's conventional socket path points at TS_SOCKET.
    let link = w.root.join("var/run/tailscale/tailscaled.sock");
    assert_eq!(std::fs::read_link(&link).unwrap(), w.socket);
    assert!(f.has("boot: "), "log lines carry upstream's prefix");
    assert!(f.has("Starting tailscaled"));
    assert!(f.has("Running 'tailscale up'"));
}

fn log_lines_have_upstream_layout() {
    let w = World::new();
    let f = boot(&w);
    let line = f
        .log
        .iter()
        .find(|l| l.ends_with(STARTUP))
        .expect("startup line");
    // boot: YYYY/MM/DD HH:MM:SS message
    let b = line.as_bytes();
    assert!(line.starts_with("boot: "), "{line}");
    assert_eq!(&line[6 + 19..6 + 20], " ", "{line}");
    for (i, sep) in [
        (6 + 4, b'/'),
        (6 + 7, b'/'),
        (6 + 10, b' '),
        (6 + 13, b':'),
        (6 + 16, b':'),
    ] {
        assert_eq!(b[i], sep, "{line}");
    }
}

fn authkey() {
    let mut w = World::new();
    w.var("TS_AUTHKEY", "tskey-key");
    let f = boot(&w);
    assert_eq!(
        w.command_lines(),
        [
            daemon(&w, &format!("{MEM}{US}")),
            cli(&w, " up --accept-dns=false --authkey=tskey-key")
        ]
    );
    assert!(
        !f.has("tskey-key"),
        "the key must not be logged:\n{}",
        f.dump()
    );
}

fn auth_key_alias() {
    let mut w = World::new();
    w.var("TS_AUTH_KEY", "tskey-key");
    boot(&w);
    assert_eq!(
        w.command_lines()[1],
        cli(&w, " up --accept-dns=false --authkey=tskey-key")
    );
}

fn state_dir() {
    let mut w = World::new();
    let state = w.path("state");
    std::fs::create_dir_all(&state).unwrap();
    w.var("TS_STATE_DIR", &state.display().to_string());
    boot(&w);
    assert_eq!(
        w.command_lines()[0],
        daemon(&w, &format!(" --statedir={}{US}", state.display()))
    );
}

fn routes() {
    let mut w = World::new();
    w.var("TS_ROUTES", "1.2.3.0/24, 10.20.30.0/24");
    boot(&w);
    assert_eq!(
        w.command_lines()[1],
        cli(
            &w,
            " up --accept-dns=false --advertise-routes=1.2.3.0/24,10.20.30.0/24"
        )
    );
}

fn routes_set_empty_stops_advertising() {
    let mut w = World::new();
    w.var("TS_ROUTES", "");
    boot(&w);
    assert_eq!(
        w.command_lines()[1],
        cli(&w, " up --accept-dns=false --advertise-routes=")
    );
}

fn kernel_world(routes: &str) -> World {
    let mut w = World::new();
    for (file, value) in [
        ("proc/sys/net/ipv4/ip_forward", "0"),
        ("proc/sys/net/ipv6/conf/all/forwarding", "0"),
    ] {
        let p = w.root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, value).unwrap();
    }
    // As upstream's tests do: the tun device exists already.
    std::fs::create_dir_all(w.root.join("dev/net")).unwrap();
    std::fs::write(w.root.join("dev/net/tun"), "").unwrap();
    w.var("TS_USERSPACE", "false");
    if !routes.is_empty() {
        w.var("TS_ROUTES", routes);
    }
    w
}

fn forwarding(w: &World) -> (String, String) {
    (
        read(&w.root.join("proc/sys/net/ipv4/ip_forward")),
        read(&w.root.join("proc/sys/net/ipv6/conf/all/forwarding")),
    )
}

fn kernel_mode_ipv4_routes() {
    let w = kernel_world("1.2.3.0/24,10.20.30.0/24");
    boot(&w);
    assert_eq!(w.command_lines()[0], daemon(&w, MEM));
    assert_eq!(
        w.command_lines()[1],
        cli(
            &w,
            " up --accept-dns=false --advertise-routes=1.2.3.0/24,10.20.30.0/24"
        )
    );
    assert_eq!(forwarding(&w), ("1".into(), "0".into()));
}

fn kernel_mode_ipv6_routes() {
    let w = kernel_world("::/64,1::/64");
    boot(&w);
    assert_eq!(forwarding(&w), ("0".into(), "1".into()));
}

fn kernel_mode_mixed_routes() {
    let w = kernel_world("1.2.3.0/24,::/64");
    boot(&w);
    assert_eq!(forwarding(&w), ("1".into(), "1".into()));
}

fn kernel_mode_creates_the_tun_device() {
    let w = kernel_world("");
    std::fs::remove_file(w.root.join("dev/net/tun")).unwrap();
    std::fs::remove_dir(w.root.join("dev/net")).unwrap();
    boot(&w);
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(w.root.join("dev/net/tun")).unwrap();
    assert!(meta.file_type().is_char_device());
    let rdev = meta.rdev();
    assert_eq!(
        (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
        (10, 200)
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir = std::fs::metadata(w.root.join("dev/net")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o755);
}

fn dest_ip_kernel_mode() {
    let mut w = kernel_world("");
    w.var("TS_DEST_IP", "1.2.3.4")
        .var("TS_TEST_FAKE_NETFILTER", "true");
    let f = boot(&w);
    assert_eq!(forwarding(&w), ("1".into(), "0".into()));
    assert!(f.has("Installing proxy rules"));
    assert!(f.has(
        "iptables -t nat -I PREROUTING 1 --destination 100.64.0.1 -j DNAT --to-destination 1.2.3.4"
    ));
    assert!(f.has("iptables -t mangle -A FORWARD -o tailscale0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"));
    // Rules come before the startup line.
    let rules = f.log.iter().position(|l| l.contains("DNAT")).unwrap();
    let startup = f.log.iter().position(|l| l.contains(STARTUP)).unwrap();
    assert!(rules < startup);
}

fn tailnet_target_ip_kernel_mode() {
    let mut w = kernel_world("");
    w.var("TS_TAILNET_TARGET_IP", "100.99.99.99")
        .var("TS_TEST_FAKE_NETFILTER", "true");
    let f = boot(&w);
    assert_eq!(forwarding(&w), ("1".into(), "0".into()));
    assert!(f.has("Installing forwarding rules for destination 100.99.99.99"));
    assert!(f.has(
        "iptables -t nat -I PREROUTING 1 ! -i tailscale0 -j DNAT --to-destination 100.99.99.99"
    ));
    assert!(f.has(
        "iptables -t nat -I POSTROUTING 1 --destination 100.99.99.99 -j SNAT --to-source 100.64.0.1"
    ));
}

fn tailnet_target_fqdn_kernel_mode() {
    let mut w = kernel_world("");
    w.var("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net")
        .var("TS_TEST_FAKE_NETFILTER", "true")
        .script(serde_json::json!({
            "peers": [{"stable_id": "nPEER", "name": "PEER.tailnet.ts.net.",
                       "addresses": ["100.64.0.9/32", "fd7a:115c:a1e0::9/128"]}]
        }));
    let f = boot(&w);
    assert!(f.has("Installing forwarding rules for destination 100.64.0.9"));
    assert!(f.has("--to-destination 100.64.0.9"));
    // Its IPv6 address is skipped, and said why: no IPv6 forwarding is
    // configured (an IPv6 route in TS_ROUTES would turn it on).
    assert!(f.has(
        "Not installing egress forwarding rules for IPv6 destination fd7a:115c:a1e0::9: IPv6 forwarding is not turned on"
    ));
    assert!(!f.has("ip6tables"));
}

fn socks5_and_http_proxy() {
    let mut w = World::new();
    w.var("TS_SOCKS5_SERVER", "localhost:1080")
        .var("TS_OUTBOUND_HTTP_PROXY_LISTEN", "localhost:8080");
    boot(&w);
    assert_eq!(
        w.command_lines()[0],
        daemon(
            &w,
            &format!(
                "{MEM}{US} --socks5-server=localhost:1080 --outbound-http-proxy-listen=localhost:8080"
            )
        )
    );
}

fn accept_dns() {
    let mut w = World::new();
    w.var("TS_ACCEPT_DNS", "true");
    boot(&w);
    assert_eq!(w.command_lines()[1], cli(&w, " up --accept-dns=true"));
}

fn extra_args() {
    let mut w = World::new();
    w.var(
        "TS_EXTRA_ARGS",
        "--accept-routes  --login-server=http://127.0.0.1:1",
    )
    .var("TS_TAILSCALED_EXTRA_ARGS", "--verbose=1 --port=41641");
    boot(&w);
    assert_eq!(
        w.command_lines(),
        [
            daemon(&w, &format!("{MEM}{US} --verbose=1 --port=41641")),
            cli(
                &w,
                " up --accept-dns=false --accept-routes --login-server=http://127.0.0.1:1"
            )
        ]
    );
}

fn hostname() {
    let mut w = World::new();
    w.var("TS_HOSTNAME", "my-server");
    boot(&w);
    assert_eq!(
        w.command_lines()[1],
        cli(&w, " up --accept-dns=false --hostname=my-server")
    );
}

fn fixture(rel: &str) -> String {
    format!("{}/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn config_file() {
    let mut w = World::new();
    let conf = fixture("configfile/valid.hujson");
    // The daemon logs in with the file's AuthKey by itself.
    w.var("EXPERIMENTAL_TS_CONFIGFILE_PATH", &conf);
    boot(&w);
    assert_eq!(
        w.command_lines(),
        [daemon(&w, &format!("{MEM}{US} --config={conf}"))],
        "config-file mode runs no CLI"
    );
}

fn config_file_not_logged_in_is_fatal() {
    let mut w = World::new();
    let conf = w.path("conf.hujson");
    std::fs::write(&conf, "{\"Version\": \"alpha0\"}").unwrap();
    w.var(
        "EXPERIMENTAL_TS_CONFIGFILE_PATH",
        &conf.display().to_string(),
    );
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(f.has("ensure you pass a valid auth key in the config file"));
    assert_eq!(w.command_lines().len(), 1);
}

fn auth_once_first_start_then_restart() {
    let mut w = World::new();
    let state = w.path("state");
    std::fs::create_dir_all(&state).unwrap();
    w.var("TS_AUTH_ONCE", "true")
        .var("TS_AUTHKEY", "tskey-key")
        .var("TS_STATE_DIR", &state.display().to_string());
    boot(&w);
    assert_eq!(
        w.command_lines()[1..],
        [
            cli(&w, " up --accept-dns=false --authkey=tskey-key"),
            cli(&w, " set --accept-dns=false"),
        ]
    );
    // The node is logged in now: a restart only runs `set`.
    std::fs::remove_file(&w.record).unwrap();
    std::fs::remove_file(w.root.join("var/run/tailscale/tailscaled.sock")).unwrap();
    let f = boot(&w);
    assert_eq!(w.command_lines()[1..], [cli(&w, " set --accept-dns=false")]);
    assert!(f.has("Running 'tailscale set'"));
}

fn machine_auth_is_logged_and_waited_for() {
    let mut w = World::new();
    w.script(serde_json::json!({"initial_state": "NeedsMachineAuth"}))
        .var("TS_AUTH_ONCE", "true");
    let mut r = w.start();
    r.wait_for("machine authorization required, please visit the admin panel");
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(!f.has("Startup complete"));
    assert_eq!(
        w.command_lines().len(),
        1,
        "no CLI run while waiting for approval"
    );
}

fn split_chunks_are_parsed_line_by_line() {
    let mut w = World::new();
    w.script(serde_json::json!({"split_chunks": true}));
    boot(&w);
}

fn sigterm_stops_tailscaled() {
    let w = World::new();
    let mut r = w.start();
    r.wait_for(STARTUP);
    let daemon = tailscaled_pid(r.pid()).expect("tailscaled is a child of containerboot");
    assert!(alive(daemon));
    let f = r.terminate();
    assert_eq!(f.code, Some(0));
    assert!(!alive(daemon), "tailscaled left running");
}

/// SIGHUP and SIGQUIT stop tailscaled and exit 0, as SIGTERM does; SIGUSR2
/// is noted and ignored. Unhandled, each would end containerboot (when not
/// PID 1) and leave tailscaled running.
fn every_termination_signal_stops_tailscaled() {
    use rustix::process::Signal;
    for sig in [Signal::HUP, Signal::QUIT] {
        let w = World::new();
        let mut r = w.start();
        r.wait_for(STARTUP);
        let daemon = tailscaled_pid(r.pid()).expect("tailscaled is a child of containerboot");
        r.signal(sig);
        let f = r.wait();
        assert_eq!(f.code, Some(0), "{sig:?}: {}", f.dump());
        assert!(!alive(daemon), "{sig:?}: tailscaled left running");
    }
    let w = World::new();
    let mut r = w.start();
    r.wait_for(STARTUP);
    r.signal(Signal::USR2);
    r.wait_for("Received Usr2 signal: it has no meaning for containerboot, ignored");
    let daemon = tailscaled_pid(r.pid()).expect("tailscaled is a child of containerboot");
    assert!(alive(daemon));
    assert_eq!(r.terminate().code, Some(0));
}

fn sigterm_while_waiting_for_the_socket() {
    let mut w = World::new();
    w.script(serde_json::json!({"socket_delay_ms": 600000}));
    let mut r = w.start();
    r.wait_for("Waiting for tailscaled socket");
    let daemon = tailscaled_pid(r.pid()).expect("tailscaled started");
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(!alive(daemon));
}

/// Only that boot completes when tailscaled's socket appears late; that the
/// wait sleeps rather than polls is `sleeps_until_something_happens` in
/// src/sources/socket.rs.
fn boot_completes_when_the_socket_appears_late() {
    let mut w = World::new();
    w.script(serde_json::json!({"socket_delay_ms": 300}));
    boot(&w);
}

fn tailscaled_crash_exits_with_its_code() {
    let mut w = World::new();
    w.script(serde_json::json!({"exit_after_running_ms": 50, "exit_code": 3}));
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(3), "{}", f.dump());
    assert!(f.has("Tailscaled exited"));
}

fn tailscaled_exiting_zero_unasked_is_still_a_failure() {
    let mut w = World::new();
    w.script(serde_json::json!({"exit_after_running_ms": 50, "exit_code": 0}));
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
}

fn up_failure_reports_stderr_and_stops_tailscaled() {
    let mut w = World::new();
    w.script(serde_json::json!({"up_exit_code": 1, "up_stderr": "backend error: invalid key"}));
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(
        f.log.iter().any(|l| l
            .contains("failed to auth tailscale: tailscale up failed: exit status 1")
            && l.contains("invalid key")),
        "{}",
        f.dump()
    );
}

fn leaving_running_exits_non_zero() {
    let mut w = World::new();
    w.script(
        serde_json::json!({"leave_running_after_ms": 100, "leave_running_state": "NeedsLogin"}),
    );
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(f.has("tailscaled left running state (now in state \"NeedsLogin\"), exiting"));
}

fn socket_symlink_failure_is_only_a_warning() {
    let w = World::new();
    // A file where the directory should be: the symlink cannot be made.
    std::fs::create_dir_all(w.root.join("var/run")).unwrap();
    std::fs::write(w.root.join("var/run/tailscale"), "").unwrap();
    let f = boot(&w);
    assert!(
        f.has("[warning] failed to symlink socket: "),
        "{}",
        f.dump()
    );
    assert!(f.has(&format!(
        "To interact with the Tailscale CLI please use `tailscale --socket=\"{}\"`",
        w.socket.display()
    )));
}

fn rust_log_is_honoured() {
    let mut w = World::new();
    w.var("RUST_LOG", "warn");
    let mut r = w.start();
    // Info lines are filtered out; the run itself is unchanged.
    r.wait_for("sim-tailscaled: state Starting -> Running");
    r.signal(rustix::process::Signal::TERM);
    let f = r.wait();
    assert_eq!(f.code, Some(0), "{}", f.dump());
    assert!(!f.has("boot: "), "no info lines at warn:\n{}", f.dump());
}

fn missing_tailscaled_is_a_clear_error() {
    let w = World::new();
    std::fs::remove_file(w.bin.join("tailscaled")).unwrap();
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(
        f.has("starting tailscaled failed: tailscaled:"),
        "{}",
        f.dump()
    );
}

fn tailscaled_starts_with_no_signal_blocked_or_ignored() {
    // containerboot handles its signals without blocking or ignoring any,
    // so its children start with the mask it was given, as tini ensures. A shell
    // wrapper records the mask it was started with (the simulator, a Rust
    // program, ignores SIGPIPE itself), then becomes the simulator.
    let w = World::new();
    let real = w.path("real");
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(simulator(), real.join("tailscaled")).unwrap();
    let mask = w.path("mask");
    std::fs::remove_file(w.bin.join("tailscaled")).unwrap();
    let wrapper = w.bin.join("tailscaled");
    std::fs::write(
        &wrapper,
        format!(
            // Builtins only: a forking command would read the shell's mask
            // while dash blocks signals around its fork.
            "#!/bin/sh\nwhile read -r k v; do case $k in SigBlk:|SigIgn:) echo \"$k $v\";; esac; done < /proc/$$/status > {}\nexec {} \"$@\"\n",
            mask.display(),
            real.join("tailscaled").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    boot(&w);
    let recorded = std::fs::read_to_string(&mask).unwrap();
    let fields: Vec<(&str, u64)> = recorded
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?, u64::from_str_radix(it.next()?, 16).ok()?))
        })
        .collect();
    // What containerboot itself was started with (this test process's
    // dispositions, less SIGPIPE, which Rust ignores for itself and std
    // restores for children): passed on unchanged, and nothing blocked;
    // except the signals containerboot handles itself (a handler is reset
    // to the default by exec), which tailscaled gets at their default even
    // when containerboot was started with them ignored (as under `nohup`
    // or from a background job of a shell: HUP, INT, QUIT).
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_ign = own
        .lines()
        .find(|l| l.starts_with("SigIgn:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap();
    let sigpipe = 1u64 << (13 - 1);
    // SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM, SIGCHLD.
    let handled = [1, 2, 3, 10, 12, 15, 17]
        .iter()
        .fold(0u64, |m, s| m | 1u64 << (s - 1));
    // Only the standard signals 1..=31 are compared: glibc's posix_spawn
    // leaves its internal real-time signals (32, 33) ignored in every
    // child it starts, whoever the parent is.
    let standard = (1u64 << 31) - 1;
    let blk = fields.iter().find(|(f, _)| *f == "SigBlk:").map(|f| f.1);
    let ign = fields.iter().find(|(f, _)| *f == "SigIgn:").map(|f| f.1);
    assert_eq!(blk, Some(0), "{recorded}");
    assert_eq!(
        ign.map(|v| v & standard),
        Some(own_ign & standard & !sigpipe & !handled),
        "{recorded}"
    );
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [],
        tests: [
            no_variables,
            log_lines_have_upstream_layout,
            authkey,
            auth_key_alias,
            state_dir,
            routes,
            routes_set_empty_stops_advertising,
            kernel_mode_ipv4_routes,
            kernel_mode_ipv6_routes,
            kernel_mode_mixed_routes,
            kernel_mode_creates_the_tun_device [Need::Root],
            dest_ip_kernel_mode,
            tailnet_target_ip_kernel_mode,
            tailnet_target_fqdn_kernel_mode,
            socks5_and_http_proxy,
            accept_dns,
            extra_args,
            hostname,
            config_file,
            config_file_not_logged_in_is_fatal,
            auth_once_first_start_then_restart,
            machine_auth_is_logged_and_waited_for,
            split_chunks_are_parsed_line_by_line,
            sigterm_stops_tailscaled,
            every_termination_signal_stops_tailscaled,
            sigterm_while_waiting_for_the_socket,
            boot_completes_when_the_socket_appears_late,
            tailscaled_crash_exits_with_its_code,
            tailscaled_exiting_zero_unasked_is_still_a_failure,
            up_failure_reports_stderr_and_stops_tailscaled,
            leaving_running_exits_non_zero,
            socket_symlink_failure_is_only_a_warning,
            rust_log_is_honoured,
            missing_tailscaled_is_a_clear_error,
            tailscaled_starts_with_no_signal_blocked_or_ignored,
        ],
    })
}
