//! `TS_TEST_FAKE_NETFILTER=true`: the rule set kept in memory. Each change
//! is logged as the iptables command it stands for, so a test sees exactly
//! what a kernel backend would have been asked to change.

use crate::machine::rules::{Rule, RuleCounts};

/// The rules "installed", as a set.
#[derive(Default)]
pub struct FakeRules {
    installed: Vec<Rule>,
}

impl FakeRules {
    /// Makes the set equal `desired`, logging each rule added or removed.
    pub fn reconcile(&mut self, desired: &[Rule]) -> RuleCounts {
        let mut counts = RuleCounts::default();
        for rule in &self.installed {
            if !desired.contains(rule) {
                log::info!(
                    "fake netfilter: would delete: {}",
                    rule.iptables_argv().join(" ")
                );
                counts.removed += 1;
            }
        }
        for rule in desired {
            if self.installed.contains(rule) {
                counts.kept += 1;
            } else {
                log::info!(
                    "fake netfilter: would run: {}",
                    rule.iptables_argv().join(" ")
                );
                counts.added += 1;
            }
        }
        self.installed = desired.to_vec();
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_changes() {
        let a = Rule::ClampMss {
            destination: "0.0.0.0".parse().unwrap(),
        };
        let b = Rule::DnatNonTailscale {
            destination: "100.64.0.9".parse().unwrap(),
        };
        let mut f = FakeRules::default();
        assert_eq!(
            f.reconcile(std::slice::from_ref(&a)),
            RuleCounts {
                kept: 0,
                added: 1,
                removed: 0
            }
        );
        assert_eq!(
            f.reconcile(std::slice::from_ref(&b)),
            RuleCounts {
                kept: 0,
                added: 1,
                removed: 1
            }
        );
        assert_eq!(
            f.reconcile(&[b]),
            RuleCounts {
                kept: 1,
                added: 0,
                removed: 0
            }
        );
    }
}
