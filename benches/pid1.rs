//! containerboot side by side with tini and dumb-init (Debian's packages),
//! each as PID 1 of a fresh PID namespace (`unshare --pid --fork
//! --mount-proc`). Needs root, `unshare`, `sh`, `tini` and `dumb-init`;
//! without them it prints SKIPPED and exits 0. Run with
//! `cargo bench --bench pid1`; `PID1_BENCH_REPS` (storm repetitions, default
//! 7) and `PID1_BENCH_TERM_REPS` (SIGTERM repetitions, default 30) change
//! the counts. Method and results: BENCHMARKS.md.
//!
//! **Orphan storm.** The init's child leaves 1,000 orphans that all exit at
//! once. For containerboot the child is the simulated `tailscale up`
//! (`SIM_SCRIPT` `{"cli_orphans": 1000}`: `sh` backgrounds `sleep 0.3`
//! 1,000 times and exits); for tini and dumb-init it is the very same `sh`
//! loop, after which the child execs the simulated `tailscaled`, so every
//! init ends up with one long-lived child (tailscaled) and 1,000 orphans.
//! The `sleep` found on PATH is this bench's: a script that blocks reading a
//! FIFO this process holds open for writing. Once all 1,000 are orphans
//! (parent = the init) blocked on the FIFO and the init is idle (containerboot
//! logged `Startup complete`), closing the FIFO ends them all at once; the
//! clock runs from that close until none of the 1,000 is left in /proc
//! (neither alive nor a zombie), polled every 0.5 ms from outside. The
//! init's CPU time over the same span is utime+stime of /proc/PID/stat
//! (10 ms ticks) and, finer, the sum of /proc/PID/task/*/schedstat.
//!
//! **SIGTERM during the storm.** The same armed storm, with SIGTERM sent
//! 2 ms after the FIFO is closed, while the orphans' SIGCHLDs arrive: the
//! time to exit, and how many SIGTERMs were lost (no exit within 10 s; the
//! init is then SIGKILLed). `PID1_BENCH_DURING_REPS` (default 10).
//!
//! **SIGTERM to exit.** The child is the simulated tailscaled for all three
//! (`tailscaled --socket=S --state=mem: --tun=userspace-networking`, which
//! exits at once on SIGTERM); containerboot starts it itself and boots.
//! Once booted (`Startup complete`, or the socket exists for tini and
//! dumb-init), the clock runs from kill(init, SIGTERM) until waitpid of
//! `unshare` returns, `unshare` exiting as soon as it has reaped the init
//! (the same small addition for all three).

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ORPHANS: usize = 1000;
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Init {
    Containerboot,
    Tini,
    Dumb,
}

const INITS: [Init; 3] = [Init::Containerboot, Init::Tini, Init::Dumb];

impl Init {
    fn name(self) -> &'static str {
        match self {
            Init::Containerboot => "containerboot",
            Init::Tini => "tini",
            Init::Dumb => "dumb-init",
        }
    }
}

fn containerboot() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerboot"))
}

/// The simulator, a binary of its own (built for benches, as for tests, by
/// the `sim` feature the dev-dependencies turn on).
fn simulator() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tailscaled-sim"))
}

/// The bench's world: the simulator and the FIFO-blocking `sleep` on PATH.
struct World {
    dir: tempfile::TempDir,
    bin: PathBuf,
    fifo: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("pid1-bench-")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        for name in ["tailscaled", "tailscale"] {
            std::os::unix::fs::symlink(simulator(), bin.join(name)).unwrap();
        }
        let fifo = dir.path().join("storm.fifo");
        let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(ok.success(), "mkfifo");
        // The orphans: let go of the CLI's pipes (so its run ends when `sh`
        // does), then block until the FIFO's last writer closes it.
        let sleep = bin.join("sleep");
        std::fs::write(
            &sleep,
            format!(
                "#!/bin/sh\nexec </dev/null >/dev/null 2>&1\nread x < '{}'\n",
                fifo.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&sleep, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("storm.json"),
            format!("{{\"cli_orphans\": {ORPHANS}}}"),
        )
        .unwrap();
        World { dir, bin, fifo }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tailscaled.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("init.log")
    }

    fn tailscaled_argv(&self) -> Vec<String> {
        vec![
            "tailscaled".into(),
            format!("--socket={}", self.socket().display()),
            "--state=mem:".into(),
            "--tun=userspace-networking".into(),
        ]
    }

    /// `unshare --pid --fork --mount-proc INIT ...`, its output in the log.
    fn start(&self, init: Init, storm: bool) -> Started {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.log()).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
        let storm_loop =
            format!("i=0; while [ $i -lt {ORPHANS} ]; do sleep 0.3 & i=$((i+1)); done");
        match init {
            Init::Containerboot => {
                cmd.arg(containerboot());
            }
            Init::Tini => {
                cmd.args(["tini", "--"]);
            }
            Init::Dumb => {
                cmd.arg("dumb-init");
            }
        }
        if init != Init::Containerboot {
            if storm {
                // The same loop as the simulated CLI's, in a `sh` that exits,
                // then the long-lived child.
                cmd.args(["sh", "-c", "sh -c \"$1\"; shift; exec \"$@\"", "sh"])
                    .arg(&storm_loop);
            }
            cmd.args(self.tailscaled_argv());
        }
        cmd.env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin.display()),
            )
            .env("TS_SOCKET", self.socket())
            .env("TS_TEST_ONLY_ROOT", self.dir.path().join("root"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if storm && init == Init::Containerboot {
            cmd.env("SIM_SCRIPT", self.dir.path().join("storm.json"));
        }
        let child = cmd.spawn().expect("spawn unshare");
        let outer = child.id() as i32;
        let deadline = Instant::now() + PATIENCE;
        // The init is unshare's child once it has exec'd.
        let pid = loop {
            let kids = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
                .unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next().and_then(|p| p.parse().ok())
                && comm(p).as_deref() == Some(init.name())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "{} did not start", init.name());
            std::thread::sleep(Duration::from_millis(1));
        };
        Started { child, pid }
    }

    /// Waits until the init is booted: containerboot's `Startup complete`,
    /// or the simulated tailscaled's socket.
    fn wait_booted(&self, init: Init) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = match init {
                Init::Containerboot => std::fs::read_to_string(self.log())
                    .unwrap_or_default()
                    .contains("Startup complete"),
                _ => self.socket().exists(),
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not boot:\n{}",
                init.name(),
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

struct Started {
    child: Child,
    /// The init's pid, as seen from here.
    pid: i32,
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `/proc/PID/stat` fields after the command name: state is [0], ppid [1],
/// utime [11], stime [12].
fn stat(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// utime+stime in ticks, and the sum of the tasks' schedstat run time (ns).
fn cpu(pid: i32) -> (u64, u64) {
    let f = stat(pid).unwrap();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let mut ns = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (ticks, ns)
}

fn ticks_per_s() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn pid_ns(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Every process in `pid`'s PID namespace: (pid, state, ppid, comm).
fn namespace(init: i32) -> Vec<(i32, String, i32, String)> {
    let ns = pid_ns(init);
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid_ns(p) != ns || ns.is_none() {
            continue;
        }
        if let (Some(f), Some(c)) = (stat(p), comm(p)) {
            out.push((p, f[0].clone(), f[1].parse().unwrap_or(0), c));
        }
    }
    out
}

struct Storm {
    /// SIGTERM to exit right after the storm; `None`: SIGTERM lost.
    term_after: Option<Duration>,
    wall: Duration,
    cpu_ticks_ms: f64,
    cpu_sched_ms: f64,
}

/// A booted init with the storm's 1,000 orphans ready: the FIFO's writer
/// (closing it starts the storm) and the orphans' pids.
struct Armed {
    s: Started,
    writer: std::fs::File,
    orphans: Vec<i32>,
}

fn arm_storm(w: &World, init: Init) -> Armed {
    // The FIFO's writer, held from before the orphans exist: they open it
    // without blocking and wait in read() for its close.
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&w.fifo)
        .unwrap();
    let s = w.start(init, true);
    w.wait_booted(init);
    // All 1,000 orphans re-parented to the init and reading the FIFO.
    let fifo = w.fifo.clone();
    let deadline = Instant::now() + PATIENCE;
    let orphans: Vec<i32> = loop {
        let ready: Vec<i32> = namespace(s.pid)
            .into_iter()
            .filter(|(p, _, ppid, c)| {
                c == "sleep"
                    && *ppid == s.pid
                    && std::fs::read_link(format!("/proc/{p}/fd/0")).ok().as_ref() == Some(&fifo)
            })
            .map(|(p, ..)| p)
            .collect();
        if ready.len() == ORPHANS {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {} of {ORPHANS} orphans ready",
            init.name(),
            ready.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the boot's last steps settle.
    std::thread::sleep(Duration::from_millis(300));
    Armed { s, writer, orphans }
}

fn storm_once(w: &World, init: Init, tick_ms: f64) -> Storm {
    let Armed {
        mut s,
        writer,
        orphans,
    } = arm_storm(w, init);
    let (t0, n0) = cpu(s.pid);
    let start = Instant::now();
    drop(writer);
    let mut left = orphans;
    while !left.is_empty() {
        left.retain(|p| Path::new(&format!("/proc/{p}")).exists());
        assert!(
            start.elapsed() < PATIENCE,
            "{}: orphans not reaped",
            init.name()
        );
        if !left.is_empty() {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let wall = start.elapsed();
    let (t1, n1) = cpu(s.pid);
    let zombies: Vec<_> = namespace(s.pid)
        .into_iter()
        .filter(|(_, st, ..)| st == "Z")
        .collect();
    assert!(
        zombies.is_empty(),
        "{}: zombies left: {zombies:?}",
        init.name()
    );
    // SIGTERM right after the storm.
    let (term_after, _) = term_and_wait(&mut s);
    Storm {
        term_after,
        wall,
        cpu_ticks_ms: (t1 - t0) as f64 * tick_ms,
        cpu_sched_ms: (n1 - n0) as f64 / 1e6,
    }
}

/// How long an init has to exit after SIGTERM before the bench kills it
/// (SIGKILL) and counts the SIGTERM as lost.
const TERM_PATIENCE: Duration = Duration::from_secs(10);

/// kill(init, SIGTERM), then waitpid of `unshare`: the time it took, or
/// `None` when the init was still there after `TERM_PATIENCE` (it is then
/// killed with SIGKILL), and `unshare`'s exit code.
fn term_and_wait(s: &mut Started) -> (Option<Duration>, Option<i32>) {
    let pid = rustix::process::Pid::from_raw(s.pid).unwrap();
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || match watch.recv_timeout(TERM_PATIENCE) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            true
        }
        _ => false,
    });
    let start = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = s.child.wait().unwrap();
    let took = start.elapsed();
    let _ = done.send(());
    let killed = watchdog.join().unwrap();
    ((!killed).then_some(took), status.code())
}

/// SIGTERM sent right as the storm starts (the FIFO closed), while the
/// orphans' SIGCHLDs are arriving: kill to exit, or `None` if lost.
fn term_during_storm(w: &World, init: Init) -> Option<Duration> {
    let Armed {
        mut s,
        writer,
        orphans: _,
    } = arm_storm(w, init);
    drop(writer);
    std::thread::sleep(Duration::from_millis(2));
    term_and_wait(&mut s).0
}

fn term_once(w: &World, init: Init) -> (Option<Duration>, Option<i32>) {
    let mut s = w.start(init, false);
    w.wait_booted(init);
    std::thread::sleep(Duration::from_millis(50));
    term_and_wait(&mut s)
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "median {:8.2}  min {:8.2}  max {:8.2}",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

fn version(cmd: &[&str]) -> String {
    match Command::new(cmd[0]).args(&cmd[1..]).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string(),
        Err(e) => format!("unavailable: {e}"),
    }
}

fn missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (unshare --pid)".into());
    }
    for tool in ["unshare", "sh", "mkfifo", "tini", "dumb-init"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool} >/dev/null")])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn reps(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run
    // this (harness = false, test = false would be needed): do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Some(why) = missing() {
        println!("SKIPPED pid1 bench: {why}");
        return;
    }
    let storm_reps = reps("PID1_BENCH_REPS", 7);
    let term_reps = reps("PID1_BENCH_TERM_REPS", 30);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "machine: {} cpus ({cpu_model}), {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version(&["uname", "-sr"])
    );
    println!(
        "containerboot: {}",
        version(&[containerboot().to_str().unwrap(), "version"])
    );
    println!("tini: {}", version(&["tini", "--version"]));
    println!("dumb-init: {}", version(&["dumb-init", "--version"]));
    let tick_ms = 1000.0 / ticks_per_s() as f64;
    let w = World::new();

    println!(
        "\norphan storm: {ORPHANS} orphans exiting at once, {storm_reps} repetitions \
         (wall: close of the FIFO until none is left, ms; init CPU over that span, ms)"
    );
    let mut storms: Vec<(Init, Vec<Storm>)> = INITS.iter().map(|&i| (i, Vec::new())).collect();
    // Interleaved, so a slow phase of the machine hits all three alike.
    for _ in 0..storm_reps {
        for (init, runs) in storms.iter_mut() {
            runs.push(storm_once(&w, *init, tick_ms));
        }
    }
    for (init, runs) in &storms {
        println!(
            "  {:13} wall      {}",
            init.name(),
            summary(runs.iter().map(|r| r.wall.as_secs_f64() * 1e3).collect())
        );
        println!(
            "  {:13} cpu stat  {}",
            "",
            summary(runs.iter().map(|r| r.cpu_ticks_ms).collect())
        );
        println!(
            "  {:13} cpu sched {}",
            "",
            summary(runs.iter().map(|r| r.cpu_sched_ms).collect())
        );
        let after: Vec<Option<Duration>> = runs.iter().map(|r| r.term_after).collect();
        println!("  {:13} SIGTERM right after: {}", "", terms_summary(&after));
    }

    let during_reps = reps("PID1_BENCH_DURING_REPS", 10);
    println!(
        "\nSIGTERM 2 ms into the storm, {during_reps} repetitions (ms; lost: no exit within {} s)",
        TERM_PATIENCE.as_secs()
    );
    let mut during: Vec<(Init, Vec<Option<Duration>>)> =
        INITS.iter().map(|&i| (i, Vec::new())).collect();
    for _ in 0..during_reps {
        for (init, times) in during.iter_mut() {
            times.push(term_during_storm(&w, *init));
        }
    }
    for (init, times) in &during {
        println!("  {:13} {}", init.name(), terms_summary(times));
    }

    println!(
        "\nSIGTERM to exit with a cooperative child (simulated tailscaled), {term_reps} repetitions (ms)"
    );
    type Runs = (Init, Vec<Option<Duration>>, Vec<Option<i32>>);
    let mut terms: Vec<Runs> = INITS.iter().map(|&i| (i, Vec::new(), Vec::new())).collect();
    for _ in 0..term_reps {
        for (init, times, codes) in terms.iter_mut() {
            let (d, code) = term_once(&w, *init);
            times.push(d);
            codes.push(code);
        }
    }
    for (init, times, codes) in terms {
        let mut distinct = codes.clone();
        distinct.sort();
        distinct.dedup();
        println!(
            "  {:13} {}  exit codes {:?}",
            init.name(),
            terms_summary(&times),
            distinct
        );
    }
}

/// Latencies in ms, and how many SIGTERMs were lost (no exit within
/// `TERM_PATIENCE`).
fn terms_summary(times: &[Option<Duration>]) -> String {
    let ok: Vec<f64> = times
        .iter()
        .flatten()
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    let lost = times.len() - ok.len();
    let lost = format!("lost {lost} of {}", times.len());
    if ok.is_empty() {
        lost
    } else {
        format!("{}  {lost}", summary(ok))
    }
}
