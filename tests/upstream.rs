//! Upstream's own test suite: `TestContainerBoot` of tailscale.com v1.58.2
//! (`cmd/containerboot/main_test.go`), verbatim but for the one line that
//! builds upstream's binary, which copies ours instead
//! (`tests/upstream/setup` makes the change, checks that it is the only
//! one, and compiles the test; see there). It drives containerboot with
//! upstream's fake `tailscaled` and `tailscale` scripts, a fake LocalAPI
//! and a fake Kubernetes API server (Go's `httptest.NewTLSServer`, whose
//! self-signed certificate is also the service account's `ca.crt`), over a
//! fake root given by `TS_TEST_ONLY_ROOT` (a directory, not a chroot, so
//! any of our builds can run there).
//!
//! The binary under test is `$CONTAINERBOOT_STATIC_BIN` when set (CI sets
//! it to the static release binary it ships), otherwise the `containerboot`
//! this `cargo test` built. Upstream's test runs once, its 23 cases in
//! order as upstream runs them; each case is reported as a test of its own
//! here, with upstream's log of it when it fails, and
//! `every_upstream_case_is_listed` checks that the cases upstream ran are
//! exactly the ones listed below.
//!
//! Needs the compiled test (`tests/upstream/setup`, or
//! `CONTAINERBOOT_UPSTREAM_TEST=DIR`): without it every test is reported
//! ignored with the reason, and fails under `CI`.

#[path = "support/harness.rs"]
mod harness;

use harness::Need;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The module whose test this is.
const UPSTREAM: &str = "tailscale.com v1.58.2";

/// How a case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One run of upstream's `TestContainerBoot`.
struct Run {
    /// The binary that was tested.
    binary: PathBuf,
    /// `go test -v`'s output, whole.
    output: String,
    /// Each case upstream ran, by its name as Go reports it.
    cases: BTreeMap<String, Outcome>,
    /// Whether the test binary exited 0.
    success: bool,
}

/// The binary under test.
fn under_test() -> PathBuf {
    std::env::var_os("CONTAINERBOOT_STATIC_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_containerboot")))
}

/// Upstream's test, run once for all the cases.
fn run() -> &'static Run {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        let test = harness::upstream_test()?;
        let binary = under_test();
        if !binary.is_file() {
            return Err(format!("no containerboot at {}", binary.display()));
        }
        let out = Command::new(&test)
            .args([
                "-test.run=^TestContainerBoot$",
                "-test.v",
                "-test.count=1",
                "-test.timeout=10m",
            ])
            .env("CONTAINERBOOT_UNDER_TEST", &binary)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", test.display()))?;
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        let cases = output
            .lines()
            .filter_map(|line| {
                let line = line.trim_start();
                let (outcome, rest) = if let Some(r) = line.strip_prefix("--- PASS: ") {
                    (Outcome::Pass, r)
                } else if let Some(r) = line.strip_prefix("--- FAIL: ") {
                    (Outcome::Fail, r)
                } else if let Some(r) = line.strip_prefix("--- SKIP: ") {
                    (Outcome::Skip, r)
                } else {
                    return None;
                };
                let name = rest.strip_prefix("TestContainerBoot/")?;
                let name = name.split(" (").next().unwrap_or(name);
                Some((name.to_string(), outcome))
            })
            .collect();
        Ok(Run {
            binary,
            output,
            cases,
            success: out.status.success(),
        })
    });
    match run {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

/// The lines of upstream's log that belong to `case`: from its `=== RUN`
/// to the next case's.
fn log_of(output: &str, case: &str) -> String {
    let start = format!("=== RUN   TestContainerBoot/{case}");
    let mut lines = output.lines().skip_while(|l| l.trim_end() != start);
    let Some(first) = lines.next() else {
        return output.to_string();
    };
    let mut log = vec![first];
    log.extend(lines.take_while(|l| !l.starts_with("=== RUN")));
    log.join("\n")
}

/// One of upstream's cases passed.
fn case(name: &str) {
    let run = run();
    match run.cases.get(name) {
        Some(Outcome::Pass) => {}
        Some(outcome) => panic!(
            "upstream's TestContainerBoot/{name} ({UPSTREAM}) ended {outcome:?} against {}:\n{}",
            run.binary.display(),
            log_of(&run.output, name)
        ),
        None => panic!(
            "upstream's TestContainerBoot/{name} ({UPSTREAM}) did not run against {}; the test's output:\n{}",
            run.binary.display(),
            run.output
        ),
    }
}

/// Upstream's cases, by the test functions here and their names as Go
/// reports them (spaces become underscores).
macro_rules! upstream_cases {
    ($($test:ident = $name:literal),* $(,)?) => {
        $(fn $test() { case($name) })*

        /// Every case, in upstream's order.
        const CASES: &[&str] = &[$($name),*];

        fn main() -> std::process::ExitCode {
            harness::run(harness::tests! {
                needs: [Need::UpstreamTest],
                tests: [$($test,)* every_upstream_case_is_listed],
            })
        }
    };
}

upstream_cases! {
    no_args = "no_args",
    authkey = "authkey",
    authkey_old_flag = "authkey-old-flag",
    authkey_disk_state = "authkey_disk_state",
    routes = "routes",
    empty_routes = "empty_routes",
    routes_kernel_ipv4 = "routes_kernel_ipv4",
    routes_kernel_ipv6 = "routes_kernel_ipv6",
    routes_kernel_all_families = "routes_kernel_all_families",
    ingress_proxy = "ingress_proxy",
    egress_proxy = "egress_proxy",
    authkey_once = "authkey_once",
    kube_storage = "kube_storage",
    kube_disk_storage = "kube_disk_storage",
    kube_storage_no_patch = "kube_storage_no_patch",
    kube_storage_auth_once = "kube_storage_auth_once",
    kube_storage_updates = "kube_storage_updates",
    proxies = "proxies",
    dns = "dns",
    extra_args = "extra_args",
    extra_args_accept_routes = "extra_args_accept_routes",
    hostname = "hostname",
    experimental_tailscaled_configfile = "experimental_tailscaled_configfile",
}

/// The cases upstream ran are exactly the ones above, and the test as a
/// whole passed (nothing failed outside a case).
fn every_upstream_case_is_listed() {
    let run = run();
    let ran: Vec<&str> = run.cases.keys().map(String::as_str).collect();
    let mut listed: Vec<&str> = CASES.to_vec();
    listed.sort_unstable();
    assert_eq!(
        ran, listed,
        "the cases upstream's TestContainerBoot ran are not the ones listed in tests/upstream.rs; its output:\n{}",
        run.output
    );
    let passed = run.cases.values().filter(|o| **o == Outcome::Pass).count();
    assert!(
        run.success,
        "upstream's TestContainerBoot ({UPSTREAM}) failed against {}: {passed} of {} cases pass; its output:\n{}",
        run.binary.display(),
        CASES.len(),
        run.output
    );
}
