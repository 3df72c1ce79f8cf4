//! The state trace: every step of the machine, kept in a bounded ring and
//! written as JSON lines (a header, then one line per step).
//!
//! The line format is an API boundary: fixtures and users' dumps depend on
//! it. Bump [`FORMAT_VERSION`] when it changes incompatibly.

use crate::machine::Step;
use crate::settings::Settings;
use serde::Serialize;
use std::collections::VecDeque;

/// Version of the trace line format.
pub const FORMAT_VERSION: u32 = 1;
/// Steps kept by default.
pub const DEFAULT_CAPACITY: usize = 1000;

/// The first line of a dump.
#[derive(Serialize)]
struct Header<'a> {
    format: &'static str,
    version: u32,
    containerboot: &'static str,
    settings: &'a Settings,
}

/// A bounded record of the run.
pub struct Trace {
    settings: Settings,
    steps: VecDeque<Step>,
    capacity: usize,
    dropped: u64,
}

impl Trace {
    /// An empty trace of `settings` keeping the last `capacity` steps.
    pub fn new(settings: Settings, capacity: usize) -> Self {
        Trace {
            settings,
            steps: VecDeque::with_capacity(capacity.min(64)),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Appends a step, dropping the oldest when full.
    pub fn push(&mut self, step: Step) {
        if self.steps.len() == self.capacity {
            self.steps.pop_front();
            self.dropped += 1;
        }
        self.steps.push_back(step);
    }

    /// The steps kept, oldest first.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter()
    }

    /// How many old steps the ring has let go.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The whole trace as JSON lines: header first.
    pub fn to_jsonl(&self) -> String {
        let header = Header {
            format: "containerboot-trace",
            version: FORMAT_VERSION,
            containerboot: env!("CARGO_PKG_VERSION"),
            settings: &self.settings,
        };
        let mut out = serde_json::to_string(&header).expect("the header serialises");
        out.push('\n');
        for s in &self.steps {
            out.push_str(&serde_json::to_string(s).expect("a step serialises"));
            out.push('\n');
        }
        out
    }
}
