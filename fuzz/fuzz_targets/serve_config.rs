//! The serve config (`TS_SERVE_CONFIG`'s file): `parse_config`, then what
//! the serve session does with a config: `uses_https`,
//! `mentions_cert_domain` and `substitute` of the tailnet's certificate
//! domain.
//!
//! Input: the certificate domain, a NUL, the file's text (no NUL: the
//! domain is empty and the whole input is the text).
//!
//! Checks: no panic (deep nesting included); once substituted with a
//! domain that cannot form the placeholder with the text around it, no
//! placeholder is left; a config without the placeholder is unchanged by
//! substitution.
#![no_main]

use containerboot::machine::serve::{
    CERT_DOMAIN_PLACEHOLDER, mentions_cert_domain, parse_config, substitute, uses_https,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (domain, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let (Ok(domain), Ok(text)) = (std::str::from_utf8(domain), std::str::from_utf8(text)) else {
        return;
    };
    let Ok(config) = parse_config(text) else {
        return;
    };
    assert!(config.is_object());
    let https = uses_https(&config);
    let mentions = mentions_cert_domain(&config);
    let done = substitute(&config, domain);
    if !mentions {
        assert_eq!(
            done, config,
            "substitution changed a config without the placeholder"
        );
    }
    // A new placeholder would have to overlap an inserted domain: at its
    // start (the domain would start with a suffix of the placeholder, which
    // ends in `}`), at its end (it would end with a prefix, which starts
    // with `$`), or around it (every character of the domain would be one
    // of the placeholder's). A real cert domain (dots, lower case) is none
    // of these. (An empty one can join the text around it, as in upstream's
    // one-pass replace.)
    if !domain.contains(['$', '}']) && domain.chars().any(|c| !CERT_DOMAIN_PLACEHOLDER.contains(c))
    {
        assert!(
            !mentions_cert_domain(&done),
            "{CERT_DOMAIN_PLACEHOLDER} left after substitution"
        );
    }
    if !mentions {
        assert_eq!(uses_https(&done), https);
    }
    // What is sent to tailscaled serialises.
    serde_json::to_vec(&done).expect("a serve config serialises");
});
