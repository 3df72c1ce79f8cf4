//! `containerboot trace render`: the transitions a trace actually took, as
//! a Mermaid or Graphviz state diagram, each edge labelled with the event
//! kinds that took it and how often.

use super::event_kind;
use crate::machine::Step;
use std::collections::BTreeMap;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Mermaid `stateDiagram-v2`.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// `(from, to)` → event kind → count; `None` stands for the start or end.
type Edges = BTreeMap<(Option<String>, Option<String>), BTreeMap<&'static str, usize>>;

fn edges(steps: &[Step]) -> Edges {
    let mut edges: Edges = BTreeMap::new();
    for step in steps {
        let Some(event) = &step.event else {
            *edges
                .entry((None, Some(step.state_after.to_string())))
                .or_default()
                .entry("init")
                .or_default() += 1;
            continue;
        };
        if step.state_before != step.state_after {
            *edges
                .entry((
                    Some(step.state_before.to_string()),
                    Some(step.state_after.to_string()),
                ))
                .or_default()
                .entry(event_kind(event))
                .or_default() += 1;
        }
        if step
            .commands
            .iter()
            .any(|c| matches!(c, crate::machine::Command::Exit { .. }))
        {
            *edges
                .entry((Some(step.state_after.to_string()), None))
                .or_default()
                .entry(event_kind(event))
                .or_default() += 1;
        }
    }
    edges
}

fn label(kinds: &BTreeMap<&'static str, usize>) -> String {
    kinds
        .iter()
        .map(|(k, n)| {
            if *n == 1 {
                k.to_string()
            } else {
                format!("{k} ×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A state name as a diagram identifier.
fn ident(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_end_matches('_')
        .to_string()
}

/// Renders the diagram.
pub fn render(steps: &[Step], format: Format) -> String {
    let edges = edges(steps);
    let mut states: Vec<&String> = edges
        .keys()
        .flat_map(|(a, b)| [a.as_ref(), b.as_ref()])
        .flatten()
        .collect();
    states.sort();
    states.dedup();
    let mut out = String::new();
    match format {
        Format::Mermaid => {
            out.push_str("stateDiagram-v2\n");
            for s in &states {
                out.push_str(&format!("    state \"{s}\" as {}\n", ident(s)));
            }
            for ((from, to), kinds) in &edges {
                let end = |s: &Option<String>| s.as_deref().map(ident).unwrap_or("[*]".into());
                out.push_str(&format!(
                    "    {} --> {} : {}\n",
                    end(from),
                    end(to),
                    label(kinds)
                ));
            }
        }
        Format::Dot => {
            out.push_str(
                "digraph containerboot {\n    rankdir=LR;\n    node [shape=box, style=rounded];\n",
            );
            out.push_str(
                "    start [shape=point];\n    end [shape=doublecircle, label=\"\", width=0.2];\n",
            );
            for s in &states {
                out.push_str(&format!("    {} [label=\"{s}\"];\n", ident(s)));
            }
            for ((from, to), kinds) in &edges {
                let from = from.as_deref().map(ident).unwrap_or("start".into());
                let to = to.as_deref().map(ident).unwrap_or("end".into());
                out.push_str(&format!(
                    "    {from} -> {to} [label=\"{}\"];\n",
                    label(kinds)
                ));
            }
            out.push_str("}\n");
        }
    }
    out
}
