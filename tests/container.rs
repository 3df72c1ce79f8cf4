//! containerboot as PID 1 of a real container, under podman with runc
//! (rootful, its own storage, no registry: the image is built `FROM scratch`).
//!
//! The test builds a `FROM scratch` image from `tests/container/Containerfile`
//! holding only the static binaries (`containerboot`, and the simulator
//! `tailscaled-sim` as `tailscaled` and `tailscale`), an empty `/tmp` and a
//! simulator script, in a private podman store (its own `CONTAINERS_CONF`
//! and `CONTAINERS_STORAGE_CONF` under a temporary directory), and runs it
//! with `--network none`:
//!
//! - `podman stop` (SIGTERM, SIGKILL after 10 s) ends a booted container with
//!   exit code 0, not 137;
//! - a tailscaled crashing with code 3 makes the container exit with 3.
//!
//! It installs nothing: podman and runc must be there (CI installs them).
//! Without root or podman the test is reported ignored with the reason, and
//! fails when CI is set (`tests/support/harness.rs`). The static binaries
//! are `$CONTAINERBOOT_STATIC_BIN` and `$CONTAINERBOOT_STATIC_SIM_BIN` when
//! set, otherwise they are built here with `cargo build --release --locked
//! --target x86_64-unknown-linux-gnu` and `RUSTFLAGS=-C
//! target-feature=+crt-static` into `target/static` (a target directory of
//! its own): containerboot as the product is built, the simulator apart
//! with `--features sim`, so the product in the image is compiled without
//! the simulator's features.
//!
//! Every container and image it makes, and the store itself, are removed when
//! the test ends, passing or failing.

#[path = "support/harness.rs"]
mod harness;

use harness::Need;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for a container to boot or to exit: a safety net against
/// hangs, never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(60);

/// `podman stop -t` seconds: SIGTERM, then SIGKILL (exit 137) after this.
const STOP_TIMEOUT_S: u32 = 10;

const CONTAINERFILE: &str = include_str!("container/Containerfile");
const CRASH_SCRIPT: &str = include_str!("container/crash.json");

/// The statically linked containerboot: `$CONTAINERBOOT_STATIC_BIN`, or
/// built into `target/static`.
fn static_binary() -> PathBuf {
    static_build("CONTAINERBOOT_STATIC_BIN", "containerboot", &[])
}

/// The statically linked simulator: `$CONTAINERBOOT_STATIC_SIM_BIN`, or
/// built into `target/static` with the `sim` feature.
fn static_simulator() -> PathBuf {
    static_build(
        "CONTAINERBOOT_STATIC_SIM_BIN",
        "tailscaled-sim",
        &["--features", "sim"],
    )
}

/// The static binary `bin`: the file `$var` names, or built (with `extra`
/// arguments to cargo) into `target/static`.
fn static_build(var: &str, bin: &str, extra: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} is not a file", p.display());
        return p;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = manifest.join("target/static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let mut build = Command::new(cargo);
    // What `cargo test` sets for the test itself is not part of a plain
    // build: ring's build script reruns when CARGO_MANIFEST_DIR changes, so
    // passing it on would rebuild every time the test and a shell alternate.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*k,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            build.env_remove(&*k);
        }
    }
    let status = build
        .current_dir(manifest)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--bin",
            bin,
        ])
        .args(extra)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .status()
        .expect("run cargo build for the static binary");
    assert!(status.success(), "static build of {bin} failed: {status}");
    eprintln!(
        "static {bin} built (or up to date) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(bin)
}

/// A hard resource limit as `ulimit -H` prints it (`None`: unlimited).
fn hard_limit(r: rustix::process::Resource) -> Option<u64> {
    rustix::process::getrlimit(r).maximum
}

/// A private podman: its own configuration, store and run directories, all
/// under one temporary directory. Dropping it removes every container and
/// image it made, then the directory.
struct Podman {
    dir: Option<tempfile::TempDir>,
    conf: PathBuf,
    storage_conf: PathBuf,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("containerboot-podman-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        // The hard limits, as container-runtime.md says: podman must not ask
        // for more than them (no CAP_SYS_RESOURCE here).
        let nofile = hard_limit(rustix::process::Resource::Nofile).unwrap_or(1 << 20);
        let nproc = hard_limit(rustix::process::Resource::Nproc)
            .unwrap_or(32768)
            .min(32768);
        let conf = d.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = "{tmp}"
[engine.runtimes]
runc = ["/usr/sbin/runc"]
"#,
                tmp = d.join("tmp").display()
            ),
        )
        .unwrap();
        let storage_conf = d.join("storage.conf");
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("graphroot").display(),
                d.join("runroot").display()
            ),
        )
        .unwrap();
        Podman {
            dir: Some(dir),
            conf,
            storage_conf,
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf)
            .stdin(Stdio::null());
        c
    }

    /// Runs podman, returning its output whatever the status.
    fn output(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run podman {args:?}: {e}"))
    }

    /// Runs podman, panicking with its stderr unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.output(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Builds the image from a context directory; remembered for removal.
    fn build(&mut self, tag: &str, context: &Path) {
        self.images.push(tag.to_string());
        let ctx = context.display().to_string();
        self.ok(&["build", "--network", "none", "-t", tag, &ctx]);
    }

    /// `podman run -d --network none`; remembered for removal.
    fn run(&mut self, name: &str, extra: &[&str], image: &str) {
        self.containers.push(name.to_string());
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend_from_slice(extra);
        args.push(image);
        self.ok(&args);
    }

    /// `podman logs` (the container's stdout and stderr).
    fn logs(&self, name: &str) -> String {
        let o = self.output(&["logs", name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", name, "--format", format])
            .trim()
            .to_string()
    }

    /// Waits (bounded) until the container's log holds `needle`.
    fn wait_for_log(&self, name: &str, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let logs = self.logs(name);
            if logs.contains(needle) {
                return logs;
            }
            let status = self.inspect(name, "{{.State.Status}}");
            assert!(
                Instant::now() < deadline && status != "exited",
                "{name} ({status}): no {needle:?} in its log:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (bounded) until the container has exited; returns its code.
    fn wait_exited(&self, name: &str) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.inspect(name, "{{.State.Status}}") == "exited" {
                return self.exit_code(name);
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not exit; log:\n{}",
                self.logs(name)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exit_code(&self, name: &str) -> i32 {
        let code = self.inspect(name, "{{.State.ExitCode}}");
        code.parse()
            .unwrap_or_else(|_| panic!("{name}: exit code {code:?}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in self.containers.iter().rev() {
            let o = self.output(&["rm", "-f", "-t", "0", c]);
            if !o.status.success() {
                eprintln!(
                    "cleanup: podman rm {c}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        for i in &self.images {
            // Absent when the build failed early: nothing to report then.
            let _ = self.output(&["rmi", "-f", i]);
        }
        // Nothing of the store may stay mounted before its directory goes.
        let root = self.path().to_path_buf();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("cleanup: removing {}: {e}", root.display());
        }
    }
}

/// The image's build context: the Containerfile, the binaries, an empty
/// `tmp/` and the crash script.
fn context(dir: &Path, binary: &Path, simulator: &Path) -> PathBuf {
    let ctx = dir.join("context");
    std::fs::create_dir_all(ctx.join("tmp")).unwrap();
    std::fs::create_dir_all(ctx.join("sim")).unwrap();
    std::fs::write(ctx.join("Containerfile"), CONTAINERFILE).unwrap();
    std::fs::write(ctx.join("sim/crash.json"), CRASH_SCRIPT).unwrap();
    std::fs::copy(binary, ctx.join("containerboot")).unwrap();
    std::fs::copy(simulator, ctx.join("tailscaled-sim")).unwrap();
    ctx
}

fn under_podman_stop_exits_0_and_a_crashing_tailscaled_gives_its_code() {
    let binary = static_binary();
    let simulator = static_simulator();
    let mut podman = Podman::new();
    let ctx = context(podman.path(), &binary, &simulator);
    let tag = format!("localhost/containerboot-test:{}", std::process::id());
    podman.build(&tag, &ctx);

    // 1. Boot, then `podman stop`: SIGTERM reaches PID 1, tailscaled stops,
    // the container exits 0 before podman would SIGKILL it (137).
    let booted = format!("containerboot-test-stop-{}", std::process::id());
    podman.run(&booted, &[], &tag);
    podman.wait_for_log(&booted, "Startup complete, waiting for shutdown signal");
    let started = Instant::now();
    podman.ok(&["stop", "-t", &STOP_TIMEOUT_S.to_string(), &booted]);
    let took = started.elapsed();
    let code = podman.exit_code(&booted);
    let logs = podman.logs(&booted);
    eprintln!(
        "podman stop -t {STOP_TIMEOUT_S}: took {:.2} s, exit code {code}",
        took.as_secs_f64()
    );
    assert_ne!(code, 137, "podman had to SIGKILL PID 1; log:\n{logs}");
    assert_eq!(code, 0, "log:\n{logs}");

    // 2. tailscaled crashes with code 3 after reaching Running: the
    // container exits 3 and says why.
    let crashed = format!("containerboot-test-crash-{}", std::process::id());
    podman.run(&crashed, &["-e", "SIM_SCRIPT=/sim/crash.json"], &tag);
    let code = podman.wait_exited(&crashed);
    let logs = podman.logs(&crashed);
    assert!(logs.contains("Tailscaled exited"), "log:\n{logs}");
    assert_eq!(code, 3, "log:\n{logs}");
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        // Root: podman with a private rootful store.
        needs: [Need::Root, Need::Program("podman")],
        tests: [
            under_podman_stop_exits_0_and_a_crashing_tailscaled_gives_its_code,
        ],
    })
}
