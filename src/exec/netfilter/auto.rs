//! `TS_DEBUG_FIREWALL_MODE=auto`: look at where the host's other users
//! (kube-proxy, Docker, a CNI) keep their rules, and put ours beside them,
//! so they never land in tables nobody else uses (upstream issue 18338:
//! legacy iptables rules beside an nftables kube-proxy on k3s).
//!
//! Two censuses are taken, each leaving out the rules of our own: the
//! nf_tables rule set (`nft -j list ruleset`, which also shows what
//! iptables' nf_tables flavour wrote) and the legacy xtables
//! (`iptables-legacy-save`, `ip6tables-legacy-save`). Our own rules from an
//! earlier run in the same network namespace win: they are adopted where
//! they are. Otherwise, as upstream: rules in only one of the two decide;
//! neither or both choose nftables when `nft` is there.

use super::run;
use crate::children::Reaper;

/// Which backend `auto` picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// nftables, through `nft`.
    Nftables,
    /// iptables, through whatever flavour `iptables` is.
    Iptables,
    /// iptables, through the `*-legacy-*` programs by name.
    IptablesLegacy,
}

/// What was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Rules in nf_tables other than ours; `None` when `nft` could not
    /// list them (not installed, or not permitted).
    pub nft: Option<usize>,
    /// Rules in the legacy xtables other than ours; `None` when the legacy
    /// programs are not installed.
    pub legacy: Option<usize>,
    /// Our own `containerboot` nftables tables exist.
    pub ours_nft: bool,
    /// Our own `TS-CB-*` chains exist in iptables' nf_tables flavour.
    pub ours_iptables_nft: bool,
    /// Our own `TS-CB-*` chains exist in the legacy tables.
    pub ours_legacy: bool,
}

/// The choice for `c`, and why, in words for the log.
pub fn decide(c: &Census) -> (Choice, String) {
    let ours = [
        (c.ours_nft, Choice::Nftables, "nftables tables"),
        (
            c.ours_iptables_nft,
            Choice::Iptables,
            "iptables chains (nf_tables)",
        ),
        (
            c.ours_legacy,
            Choice::IptablesLegacy,
            "iptables chains (legacy)",
        ),
    ];
    let found: Vec<_> = ours.iter().filter(|o| o.0).collect();
    if let [(_, choice, what)] = found.as_slice() {
        return (
            *choice,
            format!("auto: containerboot's {what} from an earlier run are there"),
        );
    }
    let (nft, legacy) = (c.nft.unwrap_or(0), c.legacy.unwrap_or(0));
    let counts = format!("{nft} nftables rules, {legacy} legacy iptables rules of others");
    match (nft > 0, legacy > 0) {
        (true, false) if c.nft.is_some() => (
            Choice::Nftables,
            format!("auto: the host's rules are in nftables ({counts})"),
        ),
        (false, true) => (
            Choice::IptablesLegacy,
            format!("auto: the host's rules are in legacy iptables ({counts})"),
        ),
        _ if c.nft.is_some() => (
            Choice::Nftables,
            format!("auto: nftables is available and no single one is in use ({counts})"),
        ),
        _ => (
            Choice::Iptables,
            format!("auto: nft is not available ({counts})"),
        ),
    }
}

/// Takes the census on this host.
pub fn census(reaper: &Reaper) -> Census {
    let mut c = Census::default();
    if let Ok(o) = run::run(reaper, &["nft", "-j", "list", "ruleset"], None)
        && o.success()
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&o.stdout)
    {
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        let mut n = 0;
        for item in &items {
            if let Some(t) = item.get("table") {
                if t["name"] == "containerboot" {
                    c.ours_nft = true;
                }
            } else if let Some(ch) = item.get("chain") {
                if ch["name"].as_str().is_some_and(is_our_chain) {
                    c.ours_iptables_nft = true;
                }
            } else if let Some(r) = item.get("rule") {
                let ours = r["table"] == "containerboot"
                    || r["chain"].as_str().is_some_and(is_our_chain)
                    || r.to_string().contains("\"TS-CB-");
                if !ours {
                    n += 1;
                }
            }
        }
        c.nft = Some(n);
    }
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        if let Ok(o) = run::run(reaper, &[save], None)
            && o.success()
        {
            let (others, ours) = count_save(&o.stdout);
            c.legacy = Some(c.legacy.unwrap_or(0) + others);
            c.ours_legacy |= ours;
        }
    }
    c
}

fn is_our_chain(name: &str) -> bool {
    name.starts_with("TS-CB-")
}

/// Rules of others in an `iptables-save` text, and whether any of ours is
/// there.
fn count_save(text: &str) -> (usize, bool) {
    let mut others = 0;
    let mut ours = false;
    for line in text.lines() {
        if line.starts_with(":TS-CB-") || line.contains("TS-CB-") {
            ours = true;
        } else if line.starts_with("-A ") {
            others += 1;
        }
    }
    (others, ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(nft: Option<usize>, legacy: Option<usize>) -> Census {
        Census {
            nft,
            legacy,
            ..Census::default()
        }
    }

    #[test]
    fn the_rules_of_others_decide() {
        assert_eq!(decide(&census(Some(12), Some(0))).0, Choice::Nftables);
        assert_eq!(decide(&census(Some(12), None)).0, Choice::Nftables);
        assert_eq!(decide(&census(Some(0), Some(7))).0, Choice::IptablesLegacy);
        assert_eq!(decide(&census(None, Some(7))).0, Choice::IptablesLegacy);
        // Neither or both: nftables when nft is there, as upstream.
        assert_eq!(decide(&census(Some(0), Some(0))).0, Choice::Nftables);
        assert_eq!(decide(&census(Some(3), Some(3))).0, Choice::Nftables);
        assert_eq!(decide(&census(None, None)).0, Choice::Iptables);
        let (_, why) = decide(&census(Some(0), Some(7)));
        assert_eq!(
            why,
            "auto: the host's rules are in legacy iptables (0 nftables rules, 7 legacy iptables rules of others)"
        );
    }

    #[test]
    fn our_own_earlier_rules_are_adopted_where_they_are() {
        let mut c = census(Some(40), Some(0));
        c.ours_legacy = true;
        assert_eq!(decide(&c).0, Choice::IptablesLegacy);
        let mut c = census(Some(0), Some(9));
        c.ours_nft = true;
        assert_eq!(decide(&c).0, Choice::Nftables);
        let mut c = census(Some(0), Some(9));
        c.ours_iptables_nft = true;
        assert_eq!(decide(&c).0, Choice::Iptables);
        // In two places: the others' rules decide.
        let mut c = census(Some(0), Some(9));
        c.ours_nft = true;
        c.ours_legacy = true;
        assert_eq!(decide(&c).0, Choice::IptablesLegacy);
    }

    #[test]
    fn a_save_text_is_counted_without_ours() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:TS-CB-PREROUTING - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING\n-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.0.0.1\nCOMMIT\n";
        assert_eq!(count_save(text), (1, true));
        assert_eq!(
            count_save("*filter\n-A INPUT -j ACCEPT\nCOMMIT\n"),
            (1, false)
        );
    }
}
