//! A trace file fed to `containerboot replay`: `trace::replay::parse`,
//! then `replay`, the diagrams and the descriptions of its steps.
//!
//! Checks: no panic; every step read survives the trip through JSON (what
//! a dump of a replayed trace would write reads back and writes the same).
#![no_main]

use containerboot::machine::Step;
use containerboot::trace::render::{Format, render};
use containerboot::trace::replay::{parse, replay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(recorded) = parse(text) else {
        return;
    };
    for step in &recorded.steps {
        let json = serde_json::to_string(step).expect("a step serialises");
        let back: Step = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("a step does not read back: {e}\n{json}"));
        // Equal as written (a secret reads back as its redaction, whatever
        // text the file had in its place).
        let again = serde_json::to_string(&back).expect("a step serialises");
        assert_eq!(json, again, "a step changed through JSON");
    }
    let _ = replay(&recorded);
    for format in [Format::Mermaid, Format::Dot] {
        let _ = render(&recorded.steps, format);
    }
    for step in &recorded.steps {
        let _ = containerboot::trace::describe::describe_step(step);
    }
});
