//! An IPN bus body cut into arbitrary chunks → the Notify stream: the line
//! splitter of the bus watch (`sources::localapi::Lines`) and the decoding
//! `BusStream::next_message` does with each line (a blank line is
//! skipped, any other is one JSON `Notify`): the one-pass decoder
//! `BusMessage::decode`, checked against the full `Notify` reduced by
//! `BusMessage::from_notify`.
//!
//! Input: the first byte `n` says how many chunk sizes follow (n % 32, at
//! least one); each is 1..=256 bytes (0 means 256), used in turn; the rest
//! is the body. Bit 7 of the first byte sets an egress FQDN to match.
//!
//! Checks: no panic; the lines are exactly the body's lines whatever the
//! cuts (the same as cut once, as `split` gives them), nothing lost
//! (the last, unterminated bytes stay pending); each byte is looked at once
//! for a newline.
#![no_main]

use containerboot::ipn::Notify;
use containerboot::machine::BusMessage;
use containerboot::sources::localapi::Lines;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let n = ((head & 0x1f) as usize).max(1).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![1]
    } else {
        sizes
            .iter()
            .map(|&s| if s == 0 { 256 } else { s as usize })
            .collect()
    };
    let fqdn = (head & 0x80 != 0).then_some("peer.tailnet.ts.net");

    let mut lines = Lines::default();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let size = sizes[i % sizes.len()].min(body.len() - at);
        i += 1;
        lines.push(&body[at..at + size]);
        at += size;
        while let Some(line) = lines.next_line() {
            got.push(line);
        }
    }
    let mut want: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let unterminated = want.pop().unwrap_or(&[]);
    assert_eq!(got.len(), want.len(), "lines lost or made up");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_slice(), *w, "a line changed by the cuts");
    }
    assert_eq!(lines.pending(), unterminated.len(), "pending bytes");
    assert!(
        lines.examined <= body.len() as u64,
        "{} bytes looked at for {}",
        lines.examined,
        body.len()
    );

    for line in &got {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The product's one-pass decoder (`BusMessage::decode`) against
        // the reference, the full `Notify` reduced afterwards: wherever the
        // reference reads a line, the decoder reads it too and gives the
        // same message. (The decoder is more lenient where it skips what
        // it does not need, e.g. peers without an FQDN target.)
        let decoded = BusMessage::decode(line, fqdn);
        let shaped = serde_json::from_slice::<serde_json::Value>(line)
            .is_ok_and(|v| structs_are_objects(&v));
        if let (true, Ok(notify)) = (shaped, serde_json::from_slice::<Notify>(line)) {
            let reference = BusMessage::from_notify(notify, fqdn);
            let decoded = decoded
                .as_ref()
                .unwrap_or_else(|e| panic!("the decoder refuses what the full Notify reads: {e}"));
            assert_eq!(
                decoded, &reference,
                "the decoder and the full Notify disagree"
            );
        }
        if let Ok(message) = decoded {
            // What the machine gets goes into the trace: it must serialise
            // and read back the same.
            let json = serde_json::to_string(&message).expect("a bus message serialises");
            let back: BusMessage = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("a bus message does not read back: {e}\n{json}"));
            assert_eq!(back, message, "a bus message changed through the trace");
        }
    }
});

/// Whether every place the Go types have a struct holds an object (or
/// null). serde's derived structs also read a JSON array as their fields
/// in order, which Go (and the one-pass decoder) refuse: such lines are no
/// disagreement worth reporting.
fn structs_are_objects(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    let object_or_null =
        |v: Option<&Value>| matches!(v, None | Some(Value::Null | Value::Object(_)));
    let all_objects = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items
            .iter()
            .all(|i| matches!(i, Value::Object(_) | Value::Null)),
        Some(_) => true,
    };
    let Value::Object(n) = v else {
        return false;
    };
    let net_map_ok = match n.get("NetMap") {
        Some(Value::Object(nm)) => {
            object_or_null(nm.get("SelfNode"))
                && object_or_null(nm.get("DNS"))
                && all_objects(nm.get("Peers"))
        }
        other => object_or_null(other),
    };
    net_map_ok && object_or_null(n.get("SelfChange")) && all_objects(n.get("PeersChanged"))
}
