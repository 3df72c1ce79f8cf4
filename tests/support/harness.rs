//! The runner of the test files that have tests needing something a
//! machine may not have (root, podman, the real programs): the one place
//! that decides what happens to a test that cannot run here.
//!
//! - Preconditions met: the test runs.
//! - Unmet, `CI` not set: the test is reported **ignored**, with the reason
//!   (`test foo ... ignored (needs root)`), never "ok".
//! - Unmet, `CI` set (to anything non-empty): the test **fails** with the
//!   reason. CI runs every test.
//!
//! libtest cannot ignore a test at run time, so these files are
//! `harness = false` `[[test]]`s run by `libtest-mimic`, which takes
//! libtest's arguments (a name filter, `--exact`, `--list`, `--ignored`,
//! `--include-ignored`, `--test-threads`, …) and prints libtest's lines,
//! down to `test result: ok. N passed; 0 failed; M ignored; …`. Each file
//! ends with its list of tests, one line each:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     harness::run(harness::tests! {
//!         needs: [Need::Root],         // what every test of the file needs
//!         tests: [
//!             some_test,
//!             another_test [Need::Program("podman")], // and what this one adds
//!         ],
//!     })
//! }
//! ```
//!
//! A test not in the list is an unused function (a warning, an error under
//! clippy's `-D warnings`), and a `#[test]` attribute in such a file, which
//! would never run, makes the whole run fail.
//!
//! Each test runs on a thread of its own named after it, as under libtest:
//! the real-program tests put their thread in a network namespace, and
//! servers die with the thread that started them.
//!
//! Included by path from the suites that do not use the simulator harness
//! (`#[path = "support/harness.rs"] mod harness;`); `harness` must be a
//! module at the crate root either way (`tests!` names it).
#![allow(dead_code)]

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0 (PID and network namespaces, device nodes, a rootful
    /// podman).
    Root,
    /// A program on `PATH`.
    Program(&'static str),
    /// These real programs built by `tests/real/setup`, found through
    /// [`real_program`].
    RealPrograms(&'static [&'static str]),
    /// Upstream's containerboot test built by `tests/upstream/setup`, found
    /// through [`upstream_test`].
    UpstreamTest,
    /// A file or device node that must exist (`/dev/net/tun`).
    Path(&'static str),
}

impl Need {
    /// Why it is not met here, or `None` when it is.
    pub fn unmet(&self) -> Option<String> {
        match self {
            Need::Root => (!rustix::process::geteuid().is_root()).then(|| "needs root".to_string()),
            Need::Program(p) => on_path(p).is_none().then(|| format!("needs `{p}` on PATH")),
            Need::Path(p) => (!Path::new(p).exists()).then(|| format!("needs {p}")),
            Need::RealPrograms(names) => {
                let missing: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|n| real_program(n).is_err())
                    .collect();
                if missing.is_empty() {
                    return None;
                }
                let hint = match real_bin_dir() {
                    Err(e) => e,
                    Ok(_)
                        if std::env::var_os("CONTAINERBOOT_REAL_BIN")
                            .is_some_and(|d| !d.is_empty()) =>
                    {
                        "not in $CONTAINERBOOT_REAL_BIN".to_string()
                    }
                    Ok(_) => "run tests/real/setup, or set CONTAINERBOOT_REAL_BIN".to_string(),
                };
                Some(format!("needs the real {}: {hint}", missing.join(", ")))
            }
            Need::UpstreamTest => upstream_test()
                .err()
                .map(|e| format!("needs upstream's containerboot test: {e}")),
        }
    }
}

/// Whether unmet preconditions fail the test instead of ignoring it.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The directory of the real programs: `$CONTAINERBOOT_REAL_BIN`, or the
/// cache `tests/real/setup` builds into (`tests/real/setup --print`, which
/// builds nothing). The tests never build: a missing program is an unmet
/// precondition.
pub fn real_bin_dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("CONTAINERBOOT_REAL_BIN").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real/setup");
        let out = Command::new(&script)
            .arg("--print")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {} --print: {e}", script.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().last().map(str::trim) {
            Some(d) if out.status.success() && !d.is_empty() => Ok(PathBuf::from(d)),
            _ => Err(format!(
                "{} --print failed ({}): {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    })
    .clone()
}

/// One real program: `$CONTAINERBOOT_REAL_ETCD` and
/// `$CONTAINERBOOT_REAL_KUBE_APISERVER` override etcd and kube-apiserver,
/// everything else is in [`real_bin_dir`]. `Err` says what is missing.
pub fn real_program(name: &str) -> Result<PathBuf, String> {
    let var = match name {
        "etcd" => Some("CONTAINERBOOT_REAL_ETCD"),
        "kube-apiserver" => Some("CONTAINERBOOT_REAL_KUBE_APISERVER"),
        _ => None,
    };
    let path = match var.and_then(std::env::var_os).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => real_bin_dir()?.join(name),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("no {}", path.display()))
    }
}

/// Upstream's containerboot test binary: `containerboot.test` in
/// `$CONTAINERBOOT_UPSTREAM_TEST`, or in the cache `tests/upstream/setup`
/// builds into (`tests/upstream/setup --print`, which builds nothing). The
/// tests never build it. `Err` says what is missing and how to get it.
pub fn upstream_test() -> Result<PathBuf, String> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let from_env = std::env::var_os("CONTAINERBOOT_UPSTREAM_TEST").filter(|d| !d.is_empty());
        let dir = match &from_env {
            Some(d) => PathBuf::from(d),
            None => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/setup");
                let out = Command::new(&script)
                    .arg("--print")
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run {} --print: {e}", script.display()))?;
                let text = String::from_utf8_lossy(&out.stdout);
                match text.lines().last().map(str::trim) {
                    Some(d) if out.status.success() && !d.is_empty() => PathBuf::from(d),
                    _ => {
                        return Err(format!(
                            "{} --print failed ({}): {}",
                            script.display(),
                            out.status,
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                }
            }
        };
        let path = dir.join("containerboot.test");
        if path.is_file() {
            Ok(path)
        } else if from_env.is_some() {
            Err(format!(
                "no {} ($CONTAINERBOOT_UPSTREAM_TEST)",
                path.display()
            ))
        } else {
            Err(format!(
                "no {}: run tests/upstream/setup, or set CONTAINERBOOT_UPSTREAM_TEST",
                path.display()
            ))
        }
    })
    .clone()
}

/// The tests of one file, made by [`tests!`].
pub struct Tests {
    /// The file (to check it for `#[test]`).
    pub file: &'static str,
    pub source: &'static str,
    /// What every test of the file needs.
    pub needs: &'static [Need],
    pub cases: Vec<Case>,
}

/// A test: its name, its body, and what it needs besides what every test
/// of its file needs.
pub type Case = (&'static str, fn(), &'static [Need]);

/// The tests of this file: `needs: [NEED, …], tests: [name [NEED, …], …]`
/// (a test's own brackets are optional). See the module's documentation.
#[allow(unused_macros)]
macro_rules! tests {
    (
        needs: [$($need:expr),* $(,)?],
        tests: [$($name:ident $([$($extra:expr),* $(,)?])?),* $(,)?] $(,)?
    ) => {
        harness::Tests {
            file: file!(),
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", file!())),
            needs: &[$($need),*],
            cases: vec![$((
                stringify!($name),
                $name as fn(),
                &[$($($extra),*)?] as &'static [harness::Need],
            )),*],
        }
    };
}
#[allow(unused_imports)]
pub(crate) use tests;

/// Runs the tests with libtest's arguments; the process's exit code.
pub fn run(tests: Tests) -> ExitCode {
    let args = Arguments::from_args();
    let stray = tests
        .source
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("#[test]"))
        .map(|(i, _)| format!("{}:{}", tests.file, i + 1))
        .collect::<Vec<_>>();
    if !stray.is_empty() {
        eprintln!(
            "error: #[test] in a harness = false file, where it never runs ({}): \
             list the test in the file's harness::tests! instead",
            stray.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let ci = in_ci();
    let mut checked: Vec<(Need, Option<String>)> = Vec::new();
    let mut unmet = |need: &Need| -> Option<String> {
        if let Some((_, why)) = checked.iter().find(|(n, _)| n == need) {
            return why.clone();
        }
        let why = need.unmet();
        checked.push((*need, why.clone()));
        why
    };
    let trials = tests
        .cases
        .into_iter()
        .map(|(name, body, extra)| {
            let why: Vec<String> = tests
                .needs
                .iter()
                .chain(extra)
                .filter_map(&mut unmet)
                .collect();
            let why = (!why.is_empty()).then(|| why.join("; "));
            trial(&args, name, body, why, ci)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

fn trial(args: &Arguments, name: &'static str, body: fn(), why: Option<String>, ci: bool) -> Trial {
    match why {
        None => Trial::test(name, move || on_own_thread(name, body)),
        Some(why) if ci => Trial::test(name, move || {
            Err(format!(
                "cannot run here: {why}; CI is set, so a test that cannot run fails \
                 instead of being ignored"
            )
            .into())
        }),
        // Ignored when run, so the line says why; also flagged ignored when
        // listing or selecting ignored tests, so `--list --ignored` (and
        // nextest) see it as ignored. Run anyway (`--ignored`,
        // `--include-ignored`), it still cannot run: ignored, with the
        // reason.
        Some(why) => Trial::ignorable_test(name, move || Ok(Completion::ignored_with(why)))
            .with_ignored_flag(args.list || args.ignored),
    }
}

/// Runs `body` on a new thread named `name`; a panic is the failure.
fn on_own_thread(name: &'static str, body: fn()) -> Result<(), Failed> {
    let joined = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map_err(|e| Failed::from(format!("cannot start the test's thread: {e}")))?
        .join();
    joined.map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        match msg {
            Some(m) => format!("test panicked: {m}").into(),
            None => "test panicked".into(),
        }
    })
}
