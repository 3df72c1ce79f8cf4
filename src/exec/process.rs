//! Child processes: tailscaled in its own process group, and CLI runs.
//! Each reports how it ended as an event.

use crate::machine::{Arg, Cli, CliOutcome, Event, KillSignal, ProcessExit};
use smol::channel::Sender;
use smol::io::AsyncReadExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;

/// The most of a CLI's stderr kept for the event (and so the trace).
const STDERR_KEEP: usize = 4096;

fn exit_of(status: std::process::ExitStatus) -> ProcessExit {
    match (status.code(), status.signal()) {
        (Some(c), _) => ProcessExit::Code(c),
        (None, Some(s)) => ProcessExit::Signal(s),
        (None, None) => ProcessExit::Code(-1),
    }
}

/// The running tailscaled.
pub struct Tailscaled {
    pid: rustix::process::Pid,
}

impl Tailscaled {
    /// Starts `argv` (found on PATH) in a new process group, stdout and
    /// stderr inherited; reports `TailscaledExited` when it ends.
    pub fn spawn(argv: &[String], tx: Sender<Event>) -> std::io::Result<Tailscaled> {
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let mut child = async_process::Command::from(cmd).spawn()?;
        let raw = child.id() as i32;
        let pid = rustix::process::Pid::from_raw(raw)
            .ok_or_else(|| std::io::Error::other("spawned child has no pid"))?;
        smol::spawn(async move {
            let status = match child.status().await {
                Ok(s) => exit_of(s),
                Err(_) => ProcessExit::Code(-1),
            };
            let _ = tx.send(Event::TailscaledExited { status }).await;
        })
        .detach();
        Ok(Tailscaled { pid })
    }

    /// Signals tailscaled's whole process group.
    pub fn signal(&self, signal: KillSignal) -> std::io::Result<()> {
        let sig = match signal {
            KillSignal::Term => rustix::process::Signal::TERM,
            KillSignal::Kill => rustix::process::Signal::KILL,
        };
        rustix::process::kill_process_group(self.pid, sig).map_err(Into::into)
    }
}

/// Runs a CLI command line; its stderr is passed through to ours and its
/// tail kept for `CliFinished`.
pub fn run_cli(cli: Cli, argv: &[Arg], tx: Sender<Event>) {
    let args: Vec<String> = argv.iter().map(Arg::expose).collect();
    smol::spawn(async move {
        let outcome = run(&args).await;
        let _ = tx.send(Event::CliFinished { cli, outcome }).await;
    })
    .detach();
}

async fn run(args: &[String]) -> CliOutcome {
    let spawned = async_process::Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return CliOutcome::SpawnFailed {
                message: format!("{}: {e}", args[0]),
            };
        }
    };
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    use std::io::Write;
                    let _ = std::io::stderr().write_all(&buf[..n]);
                    stderr.extend_from_slice(&buf[..n]);
                    if stderr.len() > STDERR_KEEP {
                        stderr.drain(..stderr.len() - STDERR_KEEP);
                    }
                }
            }
        }
    }
    match child.status().await {
        Ok(status) => CliOutcome::Exited {
            status: exit_of(status),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        },
        Err(e) => CliOutcome::SpawnFailed {
            message: format!("waiting for {}: {e}", args[0]),
        },
    }
}
