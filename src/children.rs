//! The one owner of `waitpid`: reaps every exited child and orphan on
//! SIGCHLD, and hands the status of a child containerboot spawned to whoever
//! awaits it. Orphans (descendants re-parented to us as PID 1 or as a
//! subreaper) are reaped silently and counted.
//!
//! Nothing else may wait for a child: a second `waitpid` would steal these
//! statuses (upstream could only start its reaper after boot because of
//! that). So every child is spawned through [`Reaper::spawn`], which
//! registers its pid under the same lock the reaping loop holds: a child
//! that exits at once is still known when its SIGCHLD is handled.
//!
//! Shared by the executors (which spawn and signal children) and the
//! SIGCHLD source (which reaps them); it imports neither.

use crate::machine::ProcessExit;
use rustix::process::{WaitOptions, WaitStatus};
use smol::channel::{Receiver, Sender};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Table {
    owners: HashMap<i32, Sender<ProcessExit>>,
    orphans: u64,
}

/// The pid → owner table and the reaping loop.
#[derive(Default)]
pub struct Reaper {
    table: Mutex<Table>,
}

fn exit_of(status: WaitStatus) -> ProcessExit {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(c), _) => ProcessExit::Code(c),
        (None, Some(s)) => ProcessExit::Signal(s),
        (None, None) => ProcessExit::Code(-1),
    }
}

impl Reaper {
    /// Spawns `cmd` and registers it; the receiver yields its exit status.
    /// The `Child` must never be waited on.
    pub fn spawn(
        &self,
        cmd: &mut std::process::Command,
    ) -> std::io::Result<(std::process::Child, Receiver<ProcessExit>)> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        let (tx, rx) = smol::channel::bounded(1);
        table.owners.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Reaps every child that has exited, without blocking: one SIGCHLD
    /// may stand for many exits. Returns how many were reaped.
    pub fn reap(&self) -> usize {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        loop {
            // `wait`, i.e. waitpid(-1): any child. (rustix's `waitpid(None)`
            // means our own process group only, which misses tailscaled.)
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    n += 1;
                    let pid = pid.as_raw_nonzero().get();
                    match table.owners.remove(&pid) {
                        Some(owner) => {
                            let _ = owner.try_send(exit_of(status));
                        }
                        None => {
                            table.orphans += 1;
                            log::debug!("reaped orphan {pid} ({:?})", exit_of(status));
                        }
                    }
                }
                Ok(None) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::CHILD) => break,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    break;
                }
            }
        }
        n
    }

    /// Sends `signal` to `pid` (to its process group with `group`) only if
    /// it has not been reaped: checked and sent under the table's lock, so
    /// the pid cannot have been reaped and reused in between. `Ok(false)`
    /// when it is already gone.
    pub fn signal_if_unreaped(
        &self,
        pid: rustix::process::Pid,
        group: bool,
        signal: rustix::process::Signal,
    ) -> std::io::Result<bool> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.owners.contains_key(&pid.as_raw_nonzero().get()) {
            return Ok(false);
        }
        if group {
            rustix::process::kill_process_group(pid, signal)?;
        } else {
            rustix::process::kill_process(pid, signal)?;
        }
        Ok(true)
    }

    /// How many orphans have been reaped so far.
    pub fn orphans_reaped(&self) -> u64 {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).orphans
    }
}

/// Becomes a child subreaper when not PID 1, so orphaned descendants are
/// re-parented to containerboot (and reaped here) rather than to an init
/// outside the container, as tini's `-s` does.
pub fn become_subreaper() {
    if rustix::process::getpid().is_init() {
        return;
    }
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        log::debug!("could not become a child subreaper: {e}");
    }
}

/// Held by every unit test that spawns and reaps children: `reap` waits for
/// any child of the test process, so two such tests at once would take each
/// other's statuses.
#[cfg(test)]
pub(crate) static TEST_CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_child_is_not_signalled_again() {
        let _one_at_a_time = TEST_CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
        let reaper = Reaper::default();
        let (child, exited) = reaper
            .spawn(std::process::Command::new("sleep").arg("30"))
            .unwrap();
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let term = rustix::process::Signal::TERM;
        assert!(reaper.signal_if_unreaped(pid, false, term).unwrap());
        // Reap until its status is routed (a pass may run before it died).
        let status = loop {
            reaper.reap();
            if let Ok(s) = exited.try_recv() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(status, ProcessExit::Signal(15));
        // Gone from the table: its pid may belong to someone else now.
        assert!(!reaper.signal_if_unreaped(pid, false, term).unwrap());
    }
}
