//! Installing proxy rules. Only the in-memory runner of
//! `TS_TEST_FAKE_NETFILTER=true` exists in this version: it logs each rule
//! as the iptables command it stands for.

use crate::machine::rules::{NetfilterBackend, Rule};

/// Installs `rules` in order with `backend`.
pub fn install(backend: NetfilterBackend, rules: &[Rule]) -> Result<(), String> {
    if backend != NetfilterBackend::Fake {
        return Err("real netfilter rules are not supported by this version of containerboot: set TS_TEST_FAKE_NETFILTER=true to have them logged instead".into());
    }
    for rule in rules {
        log::info!(
            "fake netfilter: would run: {}",
            rule.iptables_argv().join(" ")
        );
    }
    Ok(())
}
