//! Running a netfilter program (iptables-restore, nft, ...) to its end
//! through the one reaper, with its input, output and exit status.

use crate::children::Reaper;
use crate::machine::ProcessExit;
use std::io::{Read, Write};
use std::process::Stdio;

/// What a program run came to.
#[derive(Debug)]
pub struct Output {
    /// How it ended.
    pub status: ProcessExit,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Output {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status == ProcessExit::Code(0)
    }
}

/// Runs `argv` (found on `PATH`) with `stdin` as its input and waits for
/// it. The error says which program could not be started and why.
pub fn run(reaper: &Reaper, argv: &[&str], stdin: Option<&str>) -> Result<Output, String> {
    let mut cmd = std::process::Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, exited) = reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("starting {}: {e}", argv[0]))?;
    let input = child.stdin.take();
    let feed = stdin.map(str::to_owned);
    // Write and read on threads of their own: a large input or output
    // must not block the other side.
    let writer = std::thread::spawn(move || {
        if let (Some(mut pipe), Some(text)) = (input, feed) {
            let _ = pipe.write_all(text.as_bytes());
        }
    });
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = writer.join();
    let stdout = reader.join().unwrap_or_default();
    let status = exited
        .recv_blocking()
        .map_err(|_| format!("{}: its exit status was lost", argv[0]))?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}
