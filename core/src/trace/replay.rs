//! `containerboot replay`: feed a recorded trace's events to a fresh
//! machine built from the recorded settings, and require the same states
//! and commands at every step.

use super::{FORMAT_NAME, FORMAT_VERSION};
use crate::machine::{Machine, Step};
use crate::settings::Settings;
use serde::Deserialize;
use std::fmt;

/// A trace read back from its JSON lines.
pub struct Recorded {
    /// The effective settings from the header.
    pub settings: Settings,
    /// The steps, oldest first.
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
    #[serde(default)]
    dropped: u64,
    settings: Settings,
}

/// Reads a trace dump. Errors name the line and what is wrong with it.
pub fn parse(text: &str) -> Result<Recorded, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or("the trace is empty")?;
    let header: Header =
        serde_json::from_str(first).map_err(|e| format!("line 1 is not a trace header: {e}"))?;
    if header.format != FORMAT_NAME {
        return Err(format!(
            "line 1: format is {:?}, not {FORMAT_NAME:?}",
            header.format
        ));
    }
    if header.version != FORMAT_VERSION {
        return Err(format!(
            "line 1: trace format version {} is not the version this containerboot reads ({FORMAT_VERSION})",
            header.version
        ));
    }
    if header.dropped > 0 {
        return Err(format!(
            "the trace lost its first {} steps to the ring buffer; replay needs a whole run: raise TS_TRACE_STEPS",
            header.dropped
        ));
    }
    let mut steps = Vec::new();
    for (i, line) in lines {
        let step: Step = serde_json::from_str(line)
            .map_err(|e| format!("line {} is not a trace step: {e}", i + 1))?;
        steps.push(step);
    }
    Ok(Recorded {
        settings: header.settings,
        steps,
    })
}

/// The first place a replay differs from its recording.
#[derive(Debug)]
pub struct Divergence {
    /// The step's `seq`.
    pub seq: u64,
    /// Which part differs.
    pub what: &'static str,
    /// As recorded.
    pub expected: String,
    /// As replayed.
    pub got: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {}: {} differs\n  expected: {}\n  got:      {}",
            self.seq, self.what, self.expected, self.got
        )
    }
}

fn compare(recorded: &Step, replayed: &Step) -> Result<(), Divergence> {
    let json = |v: &dyn erased::Ser| v.to_json();
    let checks: [(&'static str, String, String); 4] = [
        (
            "state before",
            json(&recorded.state_before),
            json(&replayed.state_before),
        ),
        (
            "state after",
            json(&recorded.state_after),
            json(&replayed.state_after),
        ),
        (
            "commands",
            json(&recorded.commands),
            json(&replayed.commands),
        ),
        ("note", json(&recorded.note), json(&replayed.note)),
    ];
    for (what, expected, got) in checks {
        if expected != got {
            return Err(Divergence {
                seq: recorded.seq,
                what,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// Serialising through one small trait object keeps `compare` short.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).expect("trace values serialise")
        }
    }
}

/// Replays `recorded`; `Ok(n)` when all `n` steps are identical.
pub fn replay(recorded: &Recorded) -> Result<usize, Divergence> {
    let mut steps = recorded.steps.iter();
    let Some(first) = steps.next() else {
        return Ok(0);
    };
    if first.seq != 0 || first.event.is_some() {
        return Err(Divergence {
            seq: first.seq,
            what: "start",
            expected: "the initialisation step (seq 0)".into(),
            got: format!("step {}", first.seq),
        });
    }
    let (mut machine, init) = Machine::new(recorded.settings.clone());
    compare(first, &init)?;
    let mut n = 1;
    for step in steps {
        let Some(event) = step.event.clone() else {
            return Err(Divergence {
                seq: step.seq,
                what: "event",
                expected: "an event".into(),
                got: "none".into(),
            });
        };
        let replayed = machine.handle(step.t_ms, event);
        if replayed.seq != step.seq {
            return Err(Divergence {
                seq: step.seq,
                what: "sequence",
                expected: step.seq.to_string(),
                got: replayed.seq.to_string(),
            });
        }
        compare(step, &replayed)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{BusMessage, Cli, CliOutcome, Event, ProcessExit};
    use crate::trace::Trace;

    fn recorded_run() -> String {
        let settings = Settings::from_lookup(|k| match k {
            "TS_AUTHKEY" => Some("tskey-auth-unit".into()),
            _ => None,
        })
        .unwrap();
        let mut trace = Trace::new(settings.clone(), 100);
        let (mut m, init) = Machine::new(settings);
        trace.push(init);
        let events = [
            Event::Start,
            Event::SocketReady,
            Event::BusOpened { watch: 1 },
            Event::CliFinished {
                cli: Cli::Up,
                outcome: CliOutcome::Exited {
                    status: ProcessExit::Code(0),
                    stderr: String::new(),
                },
            },
            Event::Bus {
                watch: 2,
                message: BusMessage {
                    state: Some(crate::ipn::IpnState::Running),
                    ..Default::default()
                },
            },
        ];
        for (i, e) in events.into_iter().enumerate() {
            trace.push(m.handle(10 * i as u64, e));
        }
        trace.to_jsonl()
    }

    #[test]
    fn a_recorded_run_replays_identically() {
        let text = recorded_run();
        assert!(!text.contains("tskey-auth-unit"));
        let rec = parse(&text).unwrap();
        assert_eq!(replay(&rec).unwrap(), 6);
    }

    #[test]
    fn a_changed_state_is_the_first_divergence() {
        let text = recorded_run().replacen(
            "\"state_after\":{\"WaitingSocket\":{}}",
            "\"state_after\":{\"Shutdown\":{\"code\":3,\"killed\":false}}",
            1,
        );
        let d = replay(&parse(&text).unwrap()).unwrap_err();
        assert_eq!(d.seq, 1);
        assert_eq!(d.what, "state after");
        assert!(
            d.to_string()
                .contains("expected: {\"Shutdown\":{\"code\":3,\"killed\":false}}"),
            "{d}"
        );
    }

    #[test]
    fn render_counts_edges() {
        let rec = parse(&recorded_run()).unwrap();
        let m = crate::trace::render::render(&rec.steps, crate::trace::render::Format::Mermaid);
        assert!(
            m.contains("Authenticating --> Authenticating_up_running : BusOpened"),
            "{m}"
        );
        assert!(
            m.contains("Authenticating --> Running_Watching : Bus"),
            "{m}"
        );
    }
}
