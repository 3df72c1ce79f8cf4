//! What every handler works with: the time of the event, the commands it
//! emits, the timer table and the CLI run in flight. The machine lends
//! these to the state machine for one step and keeps them in between.

use super::command::{Command, Level};
use super::event::Cli;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The timers the core can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Deadline {
    /// Start to Running.
    Boot,
    /// SIGTERM to SIGKILL.
    KillGrace,
    /// Re-open a lost bus watch.
    BusRetry,
    /// Repeat a Kubernetes call that failed transiently.
    KubeRetry,
    /// Read the proxy rules back and repair them (`TS_FIREWALL_RECHECK`),
    /// or retry a failed reconciliation.
    FirewallRecheck,
    /// Repeat a serve-config call that failed.
    ServeRetry,
    /// Repeat a reload-config call that did not reach tailscaled.
    ConfigReloadRetry,
}

/// Pending timers; the earliest is the shell's next wake-up. When several
/// are due, they fire one per wake-up in the order of [`Deadline`].
#[derive(Clone, Debug, Default)]
pub struct Deadlines(BTreeMap<Deadline, u64>);

impl Deadlines {
    /// Arms `which` for `at`, replacing an earlier setting.
    pub fn set(&mut self, which: Deadline, at: u64) {
        self.0.insert(which, at);
    }
    /// Arms `which` for `at` unless it is armed already.
    pub fn set_unless_armed(&mut self, which: Deadline, at: u64) {
        self.0.entry(which).or_insert(at);
    }
    /// Disarms `which`.
    pub fn clear(&mut self, which: Deadline) {
        self.0.remove(&which);
    }
    /// Whether `which` is armed.
    pub fn is_armed(&self, which: Deadline) -> bool {
        self.0.contains_key(&which)
    }
    /// The earliest armed time.
    pub fn next(&self) -> Option<u64> {
        self.0.values().min().copied()
    }
    /// Disarms and returns the first deadline due at `now_ms`.
    pub fn take_due(&mut self, now_ms: u64) -> Option<Deadline> {
        let due = self
            .0
            .iter()
            .find(|&(_, &at)| at <= now_ms)
            .map(|(&d, _)| d)?;
        self.0.remove(&due);
        Some(due)
    }
}

/// A doubling retry interval between a first wait and a cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    ms: u64,
}

impl Backoff {
    /// The next wait: `first`, then doubling up to `cap`.
    pub fn next(&mut self, first: u64, cap: u64) -> u64 {
        self.ms = (self.ms * 2).clamp(first, cap);
        self.ms
    }
    /// Back to `first` for the next failure.
    pub fn reset(&mut self) {
        self.ms = 0;
    }
}

/// A deterministic jitter in `0..=span` from the time of the failure, so
/// replicas failing together spread out while a replay of the trace still
/// makes the same decisions.
pub fn jitter(now_ms: u64, span: u64) -> u64 {
    // SplitMix64's finaliser.
    let mut z = now_ms.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % (span + 1)
}

/// Handler context: the time and the bookkeeping in, commands out.
#[derive(Debug, Default)]
pub struct Ctx {
    /// The time of the event being handled.
    pub now_ms: u64,
    /// The commands emitted so far in this step.
    pub commands: Vec<Command>,
    /// Why the event changed nothing, when it did not.
    pub note: Option<String>,
    /// The timer table.
    pub timers: Deadlines,
    /// The CLI run started and not yet reported finished.
    pub cli: Option<Cli>,
    /// The state the event arrived in and what it waits for, to name in a
    /// note when the event changes nothing.
    pub expecting: String,
}

impl Ctx {
    /// Emits one command.
    pub fn emit(&mut self, c: Command) {
        self.commands.push(c);
    }
    /// Emits a log line.
    pub fn log(&mut self, level: Level, message: impl Into<String>) {
        self.emit(Command::Log {
            level,
            message: message.into(),
        });
    }
    /// Emits an info log line.
    pub fn info(&mut self, message: impl Into<String>) {
        self.log(Level::Info, message);
    }
    /// Records why the event changed nothing.
    pub fn ignore(&mut self, why: impl Into<String>) {
        self.note = Some(why.into());
    }
    /// Arms `which` to fire `after_ms` from now.
    pub fn arm(&mut self, which: Deadline, after_ms: u64) {
        self.timers.set(which, self.now_ms + after_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_deadlines_fire_one_at_a_time_in_order() {
        let mut t = Deadlines::default();
        t.set(Deadline::KubeRetry, 5);
        t.set(Deadline::Boot, 10);
        t.set(Deadline::BusRetry, 5);
        assert_eq!(t.next(), Some(5));
        assert_eq!(t.take_due(4), None);
        assert_eq!(t.take_due(10), Some(Deadline::Boot));
        assert_eq!(t.take_due(10), Some(Deadline::BusRetry));
        assert_eq!(t.take_due(10), Some(Deadline::KubeRetry));
        assert_eq!(t.take_due(10), None);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..5).map(|_| b.next(500, 4000)).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(500, 4000), 500);
    }
}
