//! The state trace: every step of the machine, kept in a bounded ring and
//! written as JSON lines (a header, then one line per step).
//!
//! The line format is an API boundary: fixtures and users' dumps depend on
//! it. Bump [`FORMAT_VERSION`] when it changes incompatibly.

pub mod describe;
pub mod render;
pub mod replay;

pub use describe::{describe_step, event_kind};

use crate::machine::Step;
use crate::settings::Settings;
use serde::Serialize;
use std::collections::VecDeque;

/// Version of the trace line format.
pub const FORMAT_VERSION: u32 = 2;

/// The `format` value of a header line.
pub const FORMAT_NAME: &str = "containerboot-trace";

/// The first line of a dump.
#[derive(Serialize)]
struct Header<'a> {
    format: &'static str,
    version: u32,
    containerboot: &'static str,
    /// Steps the ring let go before the first one kept.
    dropped: u64,
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

    /// How many steps are kept.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no step is kept.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The last `n` steps in a compact form for people, one per line.
    pub fn render_compact(&self, n: usize) -> String {
        let skip = self.steps.len().saturating_sub(n);
        let mut out = String::new();
        for step in self.steps.iter().skip(skip) {
            out.push_str(&describe_step(step));
            out.push('\n');
        }
        out
    }

    /// How many old steps the ring has let go.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The whole trace as JSON lines: header first.
    pub fn to_jsonl(&self) -> String {
        let header = Header {
            format: FORMAT_NAME,
            version: FORMAT_VERSION,
            containerboot: env!("CARGO_PKG_VERSION"),
            dropped: self.dropped,
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
