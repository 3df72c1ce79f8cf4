//! Child processes: tailscaled in its own process group, and CLI runs.
//! All are spawned through the one reaper; each reports how it ended.

use crate::children::Reaper;
use crate::machine::{Arg, Cli, CliOutcome, Event, KillSignal};
use crate::secret::redact_in;
use smol::channel::Sender;
use smol::io::AsyncReadExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

/// The most of a CLI's stderr kept for the event (and so the trace).
const STDERR_KEEP: usize = 4096;

fn signal_of(signal: KillSignal) -> rustix::process::Signal {
    match signal {
        KillSignal::Term => rustix::process::Signal::TERM,
        KillSignal::Kill => rustix::process::Signal::KILL,
    }
}

fn pid_of(child: &std::process::Child) -> std::io::Result<rustix::process::Pid> {
    rustix::process::Pid::from_raw(child.id() as i32)
        .ok_or_else(|| std::io::Error::other("spawned child has no pid"))
}

/// The running tailscaled.
pub struct Tailscaled {
    pid: rustix::process::Pid,
}

impl Tailscaled {
    /// Starts `argv` (found on PATH) in a new process group, stdout and
    /// stderr inherited; reports `TailscaledExited` when it ends.
    pub fn spawn(
        argv: &[String],
        tx: Sender<Event>,
        reaper: &Reaper,
    ) -> std::io::Result<Tailscaled> {
        let mut cmd = std::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let (child, exited) = reaper.spawn(&mut cmd)?;
        let pid = pid_of(&child)?;
        smol::spawn(async move {
            if let Ok(status) = exited.recv().await {
                let _ = tx.send(Event::TailscaledExited { status }).await;
            }
        })
        .detach();
        Ok(Tailscaled { pid })
    }

    /// Signals tailscaled's whole process group, unless tailscaled has
    /// been reaped already (its exit event is then on the way).
    pub fn signal(&self, signal: KillSignal, reaper: &Reaper) -> std::io::Result<()> {
        reaper
            .signal_if_unreaped(self.pid, true, signal_of(signal))
            .map(|_| ())
    }
}

/// A CLI run in flight.
pub struct CliRun {
    /// `up` or `set`: a `SignalCli` for the other run is not for this one.
    pub cli: Cli,
    pid: rustix::process::Pid,
}

impl CliRun {
    /// Signals the CLI process, unless it has been reaped already.
    pub fn signal(&self, signal: KillSignal, reaper: &Reaper) -> std::io::Result<()> {
        reaper
            .signal_if_unreaped(self.pid, false, signal_of(signal))
            .map(|_| ())
    }
}

/// Runs a CLI command line; its stderr is passed through to ours and its
/// tail kept for `CliFinished`. `None` if it could not start (then the
/// failure is already reported).
pub fn run_cli(cli: Cli, argv: &[Arg], tx: Sender<Event>, reaper: &Reaper) -> Option<CliRun> {
    let args: Vec<String> = argv.iter().map(Arg::expose).collect();
    let mut cmd = std::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped());
    let spawned = reaper
        .spawn(&mut cmd)
        .and_then(|(child, exited)| Ok((pid_of(&child)?, child, exited)));
    let (pid, mut child, exited) = match spawned {
        Ok(s) => s,
        Err(e) => {
            let outcome = CliOutcome::SpawnFailed {
                message: format!("{}: {e}", args[0]),
            };
            let _ = tx.try_send(Event::CliFinished { cli, outcome });
            return None;
        }
    };
    let stderr = child.stderr.take();
    // What the CLI writes may echo its own secrets (a rejected auth key):
    // they are redacted line by line, in our stderr and in the event.
    let secrets: Vec<Arg> = argv.to_vec();
    smol::spawn(async move {
        let mut kept = String::new();
        let mut line = Vec::new();
        let emit = |bytes: &[u8], kept: &mut String| {
            let text = redact_in(&String::from_utf8_lossy(bytes), &secrets);
            use std::io::Write;
            let _ = std::io::stderr().write_all(text.as_bytes());
            kept.push_str(&text);
            if kept.len() > STDERR_KEEP {
                let mut cut = kept.len() - STDERR_KEEP;
                while !kept.is_char_boundary(cut) {
                    cut += 1;
                }
                kept.drain(..cut);
            }
        };
        if let Some(pipe) = stderr
            && let Ok(mut pipe) = smol::Async::new(pipe)
        {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        line.extend_from_slice(&buf[..n]);
                        // Whole lines out; a line longer than the keep
                        // limit goes out in pieces.
                        while let Some(end) = line.iter().position(|&b| b == b'\n') {
                            let rest = line.split_off(end + 1);
                            emit(&line, &mut kept);
                            line = rest;
                        }
                        if line.len() > STDERR_KEEP {
                            emit(&line, &mut kept);
                            line.clear();
                        }
                    }
                }
            }
        }
        if !line.is_empty() {
            emit(&line, &mut kept);
        }
        let outcome = match exited.recv().await {
            Ok(status) => CliOutcome::Exited {
                status,
                stderr: kept,
            },
            Err(_) => CliOutcome::SpawnFailed {
                message: format!("lost track of {}", args[0]),
            },
        };
        let _ = tx.send(Event::CliFinished { cli, outcome }).await;
    })
    .detach();
    Some(CliRun { cli, pid })
}
