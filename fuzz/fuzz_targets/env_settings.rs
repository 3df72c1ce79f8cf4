//! The environment → settings: arbitrary bytes (non-UTF-8 included) as
//! variables, read by the shell's reader (`env::settings_from`, the code
//! behind `env::settings`).
//!
//! Input: entries separated by NUL (a value cannot hold one). An entry
//! whose first byte is below the number of known variables is that
//! variable, the rest its value; any other entry is `NAME=VALUE`. An entry
//! whose name starts with `/` is not a variable but the text of every file
//! a variable names (the config file, the serve config).
//!
//! Checks: no panic; every error names a known variable and says something;
//! the auth key's value (a `tskey-…`) appears in no error and not in the
//! settings' `Debug` or trace JSON; the settings survive the trip through the trace
//! header (serialise, read back, same JSON).
#![no_main]

use containerboot::env::settings_from;
use containerboot::settings::{Settings, VARIABLES};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    let mut vars: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut file: Option<Vec<u8>> = None;
    for entry in data.split(|&b| b == 0) {
        let Some(&first) = entry.first() else {
            continue;
        };
        let (name, value) = if (first as usize) < VARIABLES.len() {
            (VARIABLES[first as usize].0.as_bytes().to_vec(), &entry[1..])
        } else {
            match entry.iter().position(|&b| b == b'=') {
                Some(i) => (entry[..i].to_vec(), &entry[i + 1..]),
                None => (entry.to_vec(), &[][..]),
            }
        };
        if name.first() == Some(&b'/') {
            file = Some(value.to_vec());
        } else {
            vars.insert(name, value.to_vec());
        }
    }
    let var = |name: &str| {
        vars.get(name.as_bytes())
            .map(|v| OsString::from_vec(v.clone()))
    };
    let read = |path: &std::path::Path| match &file {
        Some(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| format!("{}: not UTF-8 text", path.display())),
        None => Err(format!("{}: no such file", path.display())),
    };
    let result = settings_from(&var, &read);

    // The auth key, when it looks like one (`tskey-`, so it is no field
    // name or message text by chance), is long enough, and is given to no
    // other variable or file.
    let secret = vars
        .get(&b"TS_AUTHKEY"[..])
        .or_else(|| vars.get(&b"TS_AUTH_KEY"[..]))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|s| s.len() >= 12 && s.starts_with("tskey-"))
        .filter(|s| {
            let others = vars
                .iter()
                .filter(|(k, _)| k.as_slice() != b"TS_AUTHKEY" && k.as_slice() != b"TS_AUTH_KEY")
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .chain(file.iter().map(|f| (&b"/"[..], f.as_slice())));
            let needle = s.as_bytes();
            !others.into_iter().any(|(k, v)| {
                k.windows(needle.len()).any(|w| w == needle)
                    || v.windows(needle.len()).any(|w| w == needle)
            })
        })
        .map(str::to_string);

    match result {
        Ok(settings) => {
            let json = serde_json::to_string(&settings).expect("settings serialise");
            let debug = format!("{settings:?}");
            if let Some(s) = &secret {
                assert!(!json.contains(s.as_str()), "the auth key in the trace JSON");
                assert!(!debug.contains(s.as_str()), "the auth key in Debug");
            }
            let back: Settings = serde_json::from_str(&json).unwrap_or_else(|e| {
                panic!("the trace header's settings do not read back: {e}\n{json}")
            });
            let again = serde_json::to_string(&back).expect("settings serialise");
            assert_eq!(json, again, "the settings change through the trace header");
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a problem");
            for e in &errors.0 {
                assert!(
                    VARIABLES.iter().any(|(n, _)| *n == e.variable),
                    "an error about an unknown variable {:?}",
                    e.variable
                );
                assert!(!e.message.trim().is_empty(), "an empty message");
                if let Some(s) = &secret {
                    assert!(
                        !e.message.contains(s.as_str()),
                        "the auth key in an error: {}",
                        e.message
                    );
                }
            }
        }
    }
});
