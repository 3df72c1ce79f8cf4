//! Invalid configurations: each exits 1 before tailscaled starts, and the
//! log names the variable and what to do.

mod support;

use support::*;

fn rejected(vars: &[(&str, &str)], expect: &[&str]) {
    let mut w = World::new();
    for (k, v) in vars {
        w.var(k, v);
    }
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    for e in expect {
        assert!(
            f.log.iter().any(|l| l.starts_with("boot: ")
                && l.contains("invalid configuration: ")
                && l.contains(e)),
            "missing {e:?} in:\n{}",
            f.dump()
        );
    }
    assert!(
        w.records().is_empty(),
        "nothing may start: {:?}",
        w.records()
    );
}

#[test]
fn not_a_boolean() {
    rejected(
        &[("TS_USERSPACE", "maybe")],
        &["TS_USERSPACE=\"maybe\" is not a boolean"],
    );
}

#[test]
fn dest_ip_with_userspace() {
    rejected(
        &[("TS_DEST_IP", "1.2.3.4")],
        &[
            "TS_DEST_IP is not supported with TS_USERSPACE",
            "TS_USERSPACE=false",
        ],
    );
}

#[test]
fn tailnet_target_ip_with_userspace() {
    rejected(
        &[("TS_TAILNET_TARGET_IP", "100.64.0.2")],
        &["TS_TAILNET_TARGET_IP is not supported with TS_USERSPACE"],
    );
}

#[test]
fn tailnet_target_fqdn_with_userspace() {
    rejected(
        &[("TS_TAILNET_TARGET_FQDN", "a.b.ts.net")],
        &["TS_TAILNET_TARGET_FQDN is not supported with TS_USERSPACE"],
    );
}

#[test]
fn both_targets() {
    rejected(
        &[
            ("TS_USERSPACE", "false"),
            ("TS_TEST_FAKE_NETFILTER", "true"),
            ("TS_TAILNET_TARGET_IP", "100.64.0.2"),
            ("TS_TAILNET_TARGET_FQDN", "a.b.ts.net"),
        ],
        &["Both TS_TAILNET_TARGET_IP and TS_TAILNET_FQDN cannot be set"],
    );
}

#[test]
fn bad_ip_and_bad_route_reported_together() {
    rejected(
        &[
            ("TS_USERSPACE", "false"),
            ("TS_TEST_FAKE_NETFILTER", "true"),
            ("TS_DEST_IP", "1.2.3"),
            ("TS_ROUTES", "10.0.0.0/8,10.1.2.3"),
        ],
        &["TS_DEST_IP", "\"1.2.3\"", "TS_ROUTES", "10.1.2.3"],
    );
}

#[test]
fn config_file_with_env_flags() {
    let w = World::new();
    let conf = w.path("c.json");
    std::fs::write(&conf, "{\"Version\":\"alpha0\"}").unwrap();
    rejected(
        &[
            (
                "EXPERIMENTAL_TS_CONFIGFILE_PATH",
                &conf.display().to_string(),
            ),
            ("TS_HOSTNAME", "h"),
        ],
        &[
            "EXPERIMENTAL_TS_CONFIGFILE_PATH cannot be set in combination with TS_HOSTNAME, TS_EXTRA_ARGS, TS_AUTHKEY, TS_ROUTES, TS_ACCEPT_DNS.",
        ],
    );
}

#[test]
fn config_file_missing_or_malformed() {
    rejected(
        &[("EXPERIMENTAL_TS_CONFIGFILE_PATH", "/nonexistent/conf.json")],
        &[
            "error validating tailscaled configfile contents",
            "/nonexistent/conf.json",
        ],
    );
    let w = World::new();
    let conf = w.path("c.json");
    std::fs::write(&conf, "{\"Version\": \"alpha1\"}").unwrap();
    rejected(
        &[(
            "EXPERIMENTAL_TS_CONFIGFILE_PATH",
            &conf.display().to_string(),
        )],
        &["error validating tailscaled configfile contents", "alpha0"],
    );
    std::fs::write(&conf, "{\"Version\": ").unwrap();
    rejected(
        &[(
            "EXPERIMENTAL_TS_CONFIGFILE_PATH",
            &conf.display().to_string(),
        )],
        &["error validating tailscaled configfile contents"],
    );
}

#[test]
fn every_problem_is_listed() {
    let mut w = World::new();
    w.var("TS_USERSPACE", "nope")
        .var("TS_AUTH_ONCE", "sometimes")
        .var("TS_ACCEPT_DNS", "perhaps");
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1));
    let n = f
        .log
        .iter()
        .filter(|l| l.contains("invalid configuration: "))
        .count();
    assert_eq!(n, 3, "{}", f.dump());
}

#[test]
fn a_non_utf8_argument_is_an_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let out = std::process::Command::new(containerboot())
        .arg(std::ffi::OsStr::from_bytes(b"\xff"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not valid UTF-8"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::process::Stdio;
    for args in [&["check"][..], &["version"], &["--help"]] {
        // A pipe whose reading end is closed before containerboot starts:
        // every write to stdout fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(containerboot())
            .args(args)
            .env_clear()
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_endless_config_file_is_refused_not_read_into_memory() {
    let out = std::process::Command::new(containerboot())
        .arg("check")
        .env_clear()
        .env("EXPERIMENTAL_TS_CONFIGFILE_PATH", "/dev/zero")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "EXPERIMENTAL_TS_CONFIGFILE_PATH=\"/dev/zero\": cannot read the file: larger than 4 MiB"
        ),
        "{stderr}"
    );
}
