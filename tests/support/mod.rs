//! Integration harness: a temporary root, the simulator (`tailscaled-sim`)
//! under the names `tailscaled` and `tailscale` on PATH, and a running
//! containerboot whose log lines can be awaited.
#![allow(dead_code)]

pub mod harness;
pub mod kube;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a test waits for an expected line before giving up. A safety
/// net against hangs, never an assertion about speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The simulator, a binary of its own (the `sim` feature, which the tests
/// turn on): installed as `tailscaled` and `tailscale`.
pub fn simulator() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tailscaled-sim"))
}

/// The binary under test.
pub fn containerboot() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_containerboot"))
}

/// One test's world.
pub struct World {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub bin: PathBuf,
    pub record: PathBuf,
    vars: Vec<(String, String)>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["tailscaled", "tailscale"] {
            std::os::unix::fs::symlink(simulator(), bin.join(name)).unwrap();
        }
        let socket = dir.path().join("run/tailscaled.sock");
        let record = dir.path().join("record.jsonl");
        let mut w = World {
            root,
            socket,
            bin,
            record,
            vars: Vec::new(),
            dir,
        };
        let (s, r, rec) = (
            w.socket.display().to_string(),
            w.root.display().to_string(),
            w.record.display().to_string(),
        );
        w.var("TS_SOCKET", &s)
            .var("TS_TEST_ONLY_ROOT", &r)
            .var("SIM_RECORD", &rec);
        w
    }

    /// Sets an environment variable for containerboot (and its children).
    pub fn var(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    /// The variables set for containerboot.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Removes a variable set before.
    pub fn unset(&mut self, k: &str) -> &mut Self {
        self.vars.retain(|(key, _)| key != k);
        self
    }

    /// Gives the simulator a script.
    pub fn script(&mut self, script: serde_json::Value) -> &mut Self {
        let p = self.dir.path().join("script.json");
        std::fs::write(&p, script.to_string()).unwrap();
        self.var("SIM_SCRIPT", &p.display().to_string())
    }

    /// A path inside the test directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self) -> Command {
        let mut c = Command::new(containerboot());
        c.env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    /// Starts containerboot.
    pub fn start(&self) -> Running {
        let child = self.command().spawn().expect("spawn containerboot");
        let pid = child.id() as i32;
        self.running(child, pid)
    }

    /// Starts containerboot through `wrapper`, a program that sets
    /// something up and execs the rest of its command line in its own
    /// process (`setpriv --bounding-set=-net_admin`, ...).
    pub fn start_through(&self, wrapper: &[&str]) -> Running {
        let inner = self.command();
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(containerboot()).env_clear();
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", wrapper[0]));
        // The wrapper execs containerboot: the same process.
        let pid = child.id() as i32;
        self.running(child, pid)
    }

    /// Starts containerboot as PID 1 of a new PID namespace
    /// (`unshare --pid --fork --mount-proc`); needs root.
    pub fn start_as_pid1(&self) -> Running {
        let program = containerboot();
        let unshare = self.command();
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(&program)
            .env_clear();
        for (k, v) in unshare.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn unshare");
        let outer = child.id() as i32;
        // containerboot is unshare's child once it has exec'd.
        let deadline = std::time::Instant::now() + PATIENCE;
        let pid = loop {
            let found = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == program));
            if let Some(p) = found {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "containerboot did not start under unshare"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        self.running(child, pid)
    }

    /// Starts containerboot through `wrapper`, a program and its arguments
    /// that exec the command line following them (`setpriv …`), with the
    /// same environment. The wrapper must exec, so the pid is
    /// containerboot's.
    pub fn start_under(&self, wrapper: &[&str]) -> Running {
        let inner = self.command();
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(containerboot()).env_clear();
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn the wrapper");
        let pid = child.id() as i32;
        self.running(child, pid)
    }

    fn running(&self, mut child: Child, pid: i32) -> Running {
        let (tx, rx) = channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line.clone());
                if tx.send(line).is_err() {
                    // Keep draining so the child never blocks on a full pipe.
                    continue;
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let log3 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                log3.lock().unwrap().push(format!("[stdout] {line}"));
            }
        });
        Running {
            child,
            pid,
            lines: rx,
            log,
        }
    }

    /// Runs containerboot until it exits by itself.
    pub fn run_to_exit(&self) -> Finished {
        self.start().wait()
    }

    /// Every program run recorded by the simulator: (program, args).
    pub fn records(&self) -> Vec<(String, Vec<String>)> {
        let Ok(text) = std::fs::read_to_string(&self.record) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("record line");
                let prog = v["prog"].as_str().unwrap().to_string();
                let args = v["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect();
                (prog, args)
            })
            .collect()
    }

    /// The recorded command lines, each joined with spaces, program first.
    pub fn command_lines(&self) -> Vec<String> {
        self.records()
            .into_iter()
            .map(|(p, a)| std::iter::once(p).chain(a).collect::<Vec<_>>().join(" "))
            .collect()
    }
}

/// A running containerboot.
pub struct Running {
    pub child: Child,
    /// containerboot's pid (in the host's view).
    pid: i32,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A containerboot that has exited.
pub struct Finished {
    pub code: Option<i32>,
    pub log: Vec<String>,
}

impl Finished {
    pub fn has(&self, needle: &str) -> bool {
        self.log.iter().any(|l| l.contains(needle))
    }
    pub fn dump(&self) -> String {
        self.log.join("\n")
    }
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for a log line containing `needle`; panics with the whole log
    /// if containerboot exits first.
    pub fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    panic!(
                        "containerboot exited before logging {needle:?}; log:\n{}",
                        self.log.lock().unwrap().join("\n")
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {needle:?} within {PATIENCE:?}; log:\n{}",
                        self.log.lock().unwrap().join("\n")
                    );
                }
            }
        }
    }

    /// Sends a signal to containerboot.
    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_raw(self.pid()).unwrap(), sig)
            .unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(self) -> Finished {
        self.signal(rustix::process::Signal::TERM);
        self.wait()
    }

    /// Waits for containerboot to exit (safety net: kills it after
    /// [`PATIENCE`]).
    pub fn wait(mut self) -> Finished {
        // Drain until the stderr reader ends, which happens at exit.
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(_) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    break;
                }
            }
        }
        let status = self.child.wait().expect("wait containerboot");
        // Give the stdout reader its last lines.
        let log = self.log.lock().unwrap().clone();
        Finished {
            code: status.code(),
            log,
        }
    }
}

/// Whether a process with this pid still exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// The pid of the simulated tailscaled: the child of `parent` whose argv[0]
/// is `tailscaled`. A just-forked child shows its parent's command line
/// until it has exec'd, so this looks again until it has (or PATIENCE).
pub fn tailscaled_pid(parent: i32) -> Option<i32> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
        let found = children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| c.split(|b| *b == 0).next() == Some(b"tailscaled"))
                    .unwrap_or(false)
            });
        if found.is_some() || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a file to a string, trimmed.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The processes in the PID namespace of `pid` other than `pid` itself:
/// (host pid, state letter, command name).
pub fn namespace_processes(pid: i32) -> Vec<(i32, char, String)> {
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if p == pid || std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() != Some(ns.clone()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(c, _)| c.to_string())
            .unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.chars().next())
            .unwrap_or('?');
        out.push((p, state, comm));
    }
    out
}

/// The pid `pid` has inside its own PID namespace (last NSpid entry).
pub fn pid_in_namespace(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The children of `pid` (of any of its threads), zombies included:
/// (pid, state letter, command name).
pub fn children_of(pid: i32) -> Vec<(i32, char, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue; // reaped meanwhile
            };
            let Some((comm, rest)) = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')'))
            else {
                continue;
            };
            let state = rest.trim_start().chars().next().unwrap_or('?');
            out.push((child, state, comm.to_string()));
        }
    }
    out
}
