//! Netfilter rules for proxying (docs/protocols.md §5), as data.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Tailscale's tun interface.
pub const TUN_NAME: &str = "tailscale0";

/// What installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetfilterBackend {
    /// `TS_TEST_FAKE_NETFILTER=true`: an in-memory rule set; each change is
    /// logged as the iptables command it stands for, nothing is installed.
    Fake,
    /// iptables and ip6tables (`TS_DEBUG_FIREWALL_MODE=iptables`, the default).
    Iptables,
    /// nftables (`TS_DEBUG_FIREWALL_MODE=nftables`).
    Nftables,
    /// Whichever the host's other users already use
    /// (`TS_DEBUG_FIREWALL_MODE=auto`); the executor decides and says why.
    Auto,
}

impl std::fmt::Display for NetfilterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetfilterBackend::Fake => "fake",
            NetfilterBackend::Iptables => "iptables",
            NetfilterBackend::Nftables => "nftables",
            NetfilterBackend::Auto => "auto",
        })
    }
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4: `iptables`, nftables family `ip`.
    V4,
    /// IPv6: `ip6tables`, nftables family `ip6`.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Where in netfilter a rule sits: the base chain whose hook it extends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Hook {
    /// nat PREROUTING (DNAT).
    Prerouting,
    /// nat POSTROUTING (SNAT).
    Postrouting,
    /// mangle/filter FORWARD (MSS clamping).
    Forward,
}

/// The result of a reconciliation: how the installed rules of ours
/// compared with the desired set, and what was changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounts {
    /// Rules of ours already in place and kept.
    pub kept: usize,
    /// Desired rules that were missing (or altered) and were added.
    pub added: usize,
    /// Rules of ours that were not desired (stale, altered or duplicated)
    /// and were removed.
    pub removed: usize,
}

impl RuleCounts {
    /// Whether anything was changed.
    pub fn changed(&self) -> bool {
        self.added > 0 || self.removed > 0
    }
}

/// One proxy rule; the family follows the addresses in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    /// Traffic to our tailnet address `local` goes to `destination`.
    DnatIngress {
        /// This node's tailnet address.
        local: IpAddr,
        /// `TS_DEST_IP`.
        destination: IpAddr,
    },
    /// Traffic arriving other than from the tailnet goes to `destination`.
    DnatNonTailscale {
        /// The tailnet target.
        destination: IpAddr,
    },
    /// Traffic to `destination` leaves with our tailnet address `local`.
    SnatForDestination {
        /// This node's tailnet address.
        local: IpAddr,
        /// The tailnet target.
        destination: IpAddr,
    },
    /// Clamp TCP MSS to the path MTU on the tun interface.
    ClampMss {
        /// Chooses the family.
        destination: IpAddr,
    },
}

impl Rule {
    /// The rule's address family.
    pub fn family(&self) -> Family {
        match self {
            Rule::DnatIngress { destination, .. }
            | Rule::DnatNonTailscale { destination }
            | Rule::SnatForDestination { destination, .. }
            | Rule::ClampMss { destination } => Family::of(destination),
        }
    }

    /// The hook the rule extends.
    pub fn hook(&self) -> Hook {
        match self {
            Rule::DnatIngress { .. } | Rule::DnatNonTailscale { .. } => Hook::Prerouting,
            Rule::SnatForDestination { .. } => Hook::Postrouting,
            Rule::ClampMss { .. } => Hook::Forward,
        }
    }

    /// The same rule for any destination of its family where the rule does
    /// not depend on the destination (MSS clamping), so the set holds it
    /// once per family.
    fn canonical(self) -> Rule {
        match self {
            Rule::ClampMss { destination } => Rule::ClampMss {
                destination: match Family::of(&destination) {
                    Family::V4 => IpAddr::from([0, 0, 0, 0]),
                    Family::V6 => IpAddr::from([0u16; 8]),
                },
            },
            other => other,
        }
    }

    /// The iptables match and target, without table and chain: what the
    /// iptables backend writes after `-A <its chain>`.
    pub fn iptables_spec(&self) -> Vec<String> {
        let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Rule::DnatIngress { local, destination } => v(&[
                "-d",
                &host(local),
                "-j",
                "DNAT",
                "--to-destination",
                &destination.to_string(),
            ]),
            Rule::DnatNonTailscale { destination } => v(&[
                "!",
                "-i",
                TUN_NAME,
                "-j",
                "DNAT",
                "--to-destination",
                &destination.to_string(),
            ]),
            Rule::SnatForDestination { local, destination } => v(&[
                "-d",
                &host(destination),
                "-j",
                "SNAT",
                "--to-source",
                &local.to_string(),
            ]),
            Rule::ClampMss { .. } => v(&[
                "-o",
                TUN_NAME,
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--tcp-flags",
                "SYN,RST",
                "SYN",
                "-j",
                "TCPMSS",
                "--clamp-mss-to-pmtu",
            ]),
        }
    }

    /// The iptables command line for this rule, program first.
    pub fn iptables_argv(&self) -> Vec<String> {
        let program = |a: &IpAddr| if a.is_ipv4() { "iptables" } else { "ip6tables" };
        let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Rule::DnatIngress { local, destination } => v(&[
                program(destination),
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "--destination",
                &local.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &destination.to_string(),
            ]),
            Rule::DnatNonTailscale { destination } => v(&[
                program(destination),
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "!",
                "-i",
                TUN_NAME,
                "-j",
                "DNAT",
                "--to-destination",
                &destination.to_string(),
            ]),
            Rule::SnatForDestination { local, destination } => v(&[
                program(destination),
                "-t",
                "nat",
                "-I",
                "POSTROUTING",
                "1",
                "--destination",
                &destination.to_string(),
                "-j",
                "SNAT",
                "--to-source",
                &local.to_string(),
            ]),
            Rule::ClampMss { destination } => v(&[
                program(destination),
                "-t",
                "mangle",
                "-A",
                "FORWARD",
                "-o",
                TUN_NAME,
                "-p",
                "tcp",
                "--tcp-flags",
                "SYN,RST",
                "SYN",
                "-j",
                "TCPMSS",
                "--clamp-mss-to-pmtu",
            ]),
        }
    }
}

/// The first of our tailnet addresses that is a single IP of `dst`'s family.
pub fn local_address_for(dst: IpAddr, ours: &[IpNetwork]) -> Result<IpAddr, String> {
    ours.iter()
        .find(|p| p.prefix() == max_prefix(&p.ip()) && p.ip().is_ipv4() == dst.is_ipv4())
        .map(|p| p.ip())
        .ok_or_else(|| {
            let list: Vec<String> = ours.iter().map(|p| p.to_string()).collect();
            format!(
                "no tailscale IP matching family of {dst} found in [{}]",
                list.join(" ")
            )
        })
}

fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// An address as iptables-save prints a host match: with its full prefix.
fn host(ip: &IpAddr) -> String {
    format!("{ip}/{}", max_prefix(ip))
}

/// `rules` as a set: sorted, each rule once (MSS clamping once per family).
pub fn rule_set(rules: impl IntoIterator<Item = Rule>) -> Vec<Rule> {
    let mut set: Vec<Rule> = rules.into_iter().map(Rule::canonical).collect();
    set.sort();
    set.dedup();
    set
}

/// Rules forwarding tailnet traffic for our address to `dst` (`TS_DEST_IP`).
pub fn ingress(dst: IpAddr, ours: &[IpNetwork]) -> Result<Vec<Rule>, String> {
    let local = local_address_for(dst, ours)?;
    Ok(vec![
        Rule::DnatIngress {
            local,
            destination: dst,
        },
        Rule::ClampMss { destination: dst },
    ])
}

/// Rules forwarding non-tailnet traffic to the tailnet address `dst`.
pub fn egress(dst: IpAddr, ours: &[IpNetwork]) -> Result<Vec<Rule>, String> {
    let local = local_address_for(dst, ours)?;
    Ok(vec![
        Rule::DnatNonTailscale { destination: dst },
        Rule::SnatForDestination {
            local,
            destination: dst,
        },
        Rule::ClampMss { destination: dst },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ingress_picks_single_ip_of_same_family() {
        let ours = nets(&["10.0.0.0/8", "fd7a::1/128", "100.64.0.1/32"]);
        let rules = ingress("10.1.2.3".parse().unwrap(), &ours).unwrap();
        assert_eq!(
            rules[0].iptables_argv().join(" "),
            "iptables -t nat -I PREROUTING 1 --destination 100.64.0.1 -j DNAT --to-destination 10.1.2.3"
        );
        assert_eq!(
            rules[1].iptables_argv().join(" "),
            "iptables -t mangle -A FORWARD -o tailscale0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
        );
    }

    #[test]
    fn egress_v6_uses_ip6tables() {
        let ours = nets(&["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]);
        let rules = egress("fd7a:115c:a1e0::9".parse().unwrap(), &ours).unwrap();
        let lines: Vec<String> = rules.iter().map(|r| r.iptables_argv().join(" ")).collect();
        assert_eq!(
            lines[0],
            "ip6tables -t nat -I PREROUTING 1 ! -i tailscale0 -j DNAT --to-destination fd7a:115c:a1e0::9"
        );
        assert_eq!(
            lines[1],
            "ip6tables -t nat -I POSTROUTING 1 --destination fd7a:115c:a1e0::9 -j SNAT --to-source fd7a:115c:a1e0::1"
        );
    }

    #[test]
    fn no_matching_family_is_an_error() {
        let err = ingress("10.0.0.1".parse().unwrap(), &nets(&["fd7a::1/128"])).unwrap_err();
        assert_eq!(
            err,
            "no tailscale IP matching family of 10.0.0.1 found in [fd7a::1/128]"
        );
    }
}
