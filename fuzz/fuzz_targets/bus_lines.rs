//! An IPN bus body cut into arbitrary chunks → the Notify stream: the line
//! splitter of the bus watch (`sources::localapi::Lines`) and the decoding
//! `BusStream::next` does with each line (a blank line is skipped, any
//! other is one JSON `Notify`), then the reduction the bus source hands to
//! the machine (`BusMessage::from_notify`).
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
        if let Ok(notify) = serde_json::from_slice::<Notify>(line) {
            let message = BusMessage::from_notify(notify, fqdn);
            // What the machine gets goes into the trace: it must serialise
            // and read back the same.
            let json = serde_json::to_string(&message).expect("a bus message serialises");
            let back: BusMessage = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("a bus message does not read back: {e}\n{json}"));
            assert_eq!(back, message, "a bus message changed through the trace");
        }
    }
});
