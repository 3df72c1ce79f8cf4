//! Running a netfilter program (iptables-restore, nft, ...) to its end
//! through the one reaper, with its input, output and exit status.

use crate::children::Reaper;
use crate::machine::ProcessExit;
use std::io::{Read, Write};
use std::process::Stdio;

/// The longest a netfilter program may run.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

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
    run_with_limit(reaper, argv, stdin, RUN_LIMIT)
}

/// [`run`], killing the program after `limit`.
pub fn run_with_limit(
    reaper: &Reaper,
    argv: &[&str],
    stdin: Option<&str>,
    limit: std::time::Duration,
) -> Result<Output, String> {
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
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let input = child.stdin.take();
    let feed = stdin.map(str::to_owned);
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let killed = std::sync::atomic::AtomicBool::new(false);
    let (stdout, stderr, status) = std::thread::scope(|scope| {
        // A program that hangs (a stuck lock, a wedged kernel) must not
        // hold the proxy's rules forever: it is killed after RUN_LIMIT.
        let killed = &killed;
        scope.spawn(move || {
            if matches!(
                finished.recv_timeout(limit),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            ) && let Some(pid) = pid
            {
                killed.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = reaper.signal_if_unreaped(pid, false, rustix::process::Signal::KILL);
            }
        });
        // Write and read on threads of their own: a large input or output
        // must not block the other side.
        scope.spawn(move || {
            if let (Some(mut pipe), Some(text)) = (input, feed) {
                let _ = pipe.write_all(text.as_bytes());
            }
        });
        let reader = scope.spawn(move || {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let mut stderr = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut stderr);
        }
        let stdout = reader.join().unwrap_or_default();
        let status = exited.recv_blocking();
        let _ = done.send(());
        (stdout, stderr, status)
    });
    let status = status.map_err(|_| format!("{}: its exit status was lost", argv[0]))?;
    if killed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(format!(
            "{} did not finish within {} ms and was killed",
            argv[0],
            limit.as_millis()
        ));
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Runs `f` with a reaper that a thread drives, as SIGCHLD would.
    fn with_reaper<T>(f: impl FnOnce(&Reaper) -> T) -> T {
        let _one_at_a_time = crate::children::TEST_CHILDREN
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let reaper = Arc::new(Reaper::default());
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (reaper, stop) = (reaper.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    reaper.reap();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        let out = f(&reaper);
        stop.store(true, Ordering::Relaxed);
        let _ = t.join();
        out
    }

    #[test]
    fn programs_run_to_their_end_or_are_killed_after_the_limit() {
        with_reaper(|r| {
            let o = run(
                r,
                &["sh", "-c", "cat; echo oops >&2; exit 3"],
                Some("hello"),
            )
            .unwrap();
            assert_eq!(o.stdout, "hello");
            assert_eq!(o.stderr, "oops\n");
            assert_eq!(o.status, ProcessExit::Code(3));
            let e = run_with_limit(
                r,
                &["sleep", "30"],
                None,
                std::time::Duration::from_millis(200),
            )
            .unwrap_err();
            assert_eq!(e, "sleep did not finish within 200 ms and was killed");
        });
    }
}
