//! Boot overhead: from exec to `Startup complete`, beside the same work
//! done without containerboot. Run with `cargo bench --bench boot` (no
//! root, nothing to install); `BOOT_BENCH_REPS` (default 30), and
//! `BOOT_BENCH_UPSTREAM` naming upstream's Go containerboot binary to
//! measure it too. Method and results: BENCHMARKS.md. A measurement, not a
//! test.
//!
//! **What is timed.** Each subject boots on the simulator
//! (`tailscaled-sim` as `tailscaled` and `tailscale`, its state steps
//! without delay: `step_delay_ms` 0) with an auth key, userspace
//! networking: the wall time from spawning it to its `Startup complete`
//! log line. The *baseline* is the simulator's own share: the bench itself
//! spawns the simulated `tailscaled` as containerboot would, waits until its
//! socket takes a connection (trying every 0.1 ms), runs the simulated `tailscale up` and
//! waits for it to exit (it exits once Running). A subject's overhead is
//! its median minus the baseline's. The subjects are interleaved (one run
//! of each, then again), so a slow phase of the machine hits all alike.

#[path = "support/mod.rs"]
mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stats(mut v: Vec<f64>) -> (f64, String) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (
        p(0.5),
        format!(
            "median {:.2}, p95 {:.2}, max {:.2}",
            p(0.5),
            p(0.95),
            v[v.len() - 1]
        ),
    )
}

struct World {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let bin = support::sim_bin(dir.path());
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        std::fs::write(dir.path().join("script.json"), r#"{"step_delay_ms": 0}"#).unwrap();
        World { dir, bin }
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("tailscaled.sock")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin.display()))
            .env("TS_SOCKET", self.socket())
            .env("TS_TEST_ONLY_ROOT", self.dir.path().join("root"))
            .env("TS_AUTHKEY", "tskey-auth-bench")
            .env("TS_TRACE_FILE", self.dir.path().join("trace.jsonl"))
            .env("SIM_SCRIPT", self.dir.path().join("script.json"))
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }
}

/// Spawn → `Startup complete`, then SIGTERM and wait.
fn subject(program: &str) -> f64 {
    let w = World::new();
    let t = Instant::now();
    let mut child = w.command(program).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let took = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("Startup complete") => break t.elapsed(),
            Some(_) => continue,
            None => panic!("{program} ended before 'Startup complete'"),
        }
    };
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let _ = child.wait();
    took.as_secs_f64() * 1e3
}

/// The simulator's own share: tailscaled started, its socket, `up`.
fn baseline() -> f64 {
    let w = World::new();
    let sock = w.socket();
    let t = Instant::now();
    let mut daemon = w
        .command("tailscaled")
        .arg(format!("--socket={}", sock.display()))
        .args(["--state=mem:", "--tun=userspace-networking"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The socket file exists from bind(); it takes connections from
    // listen(): wait for a connection to succeed.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_micros(100));
    }
    let status = w
        .command("tailscale")
        .arg(format!("--socket={}", sock.display()))
        .args(["up", "--authkey=tskey-auth-bench"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let took = t.elapsed();
    assert!(status.success(), "tailscale up: {status}");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = daemon.wait();
    took.as_secs_f64() * 1e3
}

fn main() {
    let reps: usize = support::env_or("BOOT_BENCH_REPS", 30);
    let upstream = std::env::var("BOOT_BENCH_UPSTREAM")
        .ok()
        .filter(|v| !v.is_empty());
    let ours = env!("CARGO_BIN_EXE_containerboot");
    // One untimed run of each: page cache, first exec.
    baseline();
    subject(ours);
    if let Some(up) = &upstream {
        subject(up);
    }
    let (mut b, mut c, mut u) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        b.push(baseline());
        c.push(subject(ours));
        if let Some(up) = &upstream {
            u.push(subject(up));
        }
    }
    println!("boot bench: exec → 'Startup complete' on the simulator, {reps} runs, ms");
    let (base, text) = stats(b);
    println!("  baseline (the simulator alone: tailscaled, socket, up): {text}");
    let (cb, text) = stats(c);
    println!(
        "  containerboot: {text}; overhead over the baseline {:.2}",
        cb - base
    );
    if upstream.is_some() {
        let (up, text) = stats(u);
        println!(
            "  upstream v1.58.2: {text}; overhead over the baseline {:.2}",
            up - base
        );
    } else {
        println!("  (upstream not measured: set BOOT_BENCH_UPSTREAM to its binary)");
    }
}
