//! Netmap to proxy rules as a value: which netfilter rules the node's
//! addresses and the egress target call for, and whether they are in
//! place. The running state owns one; it emits `InstallRules` and hears
//! back `RulesApplied`.

use super::command::Command;
use super::ctx::Ctx;
use super::event::{NetMapView, RulePurpose};
use super::rules::{self, NetfilterBackend};
use crate::settings::{EgressTarget, Settings};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What a netmap came to.
#[derive(Debug, PartialEq, Eq)]
pub enum NetmapOutcome {
    /// Rules were asked for as needed.
    Applied,
    /// The `TS_TAILNET_TARGET_FQDN` node is not in the netmap: nothing
    /// else is done with this netmap.
    TargetMissing,
}

/// The proxy rules installed or asked for, by the addresses they were
/// made for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyState {
    /// What installs the rules.
    backend: NetfilterBackend,
    /// The node's addresses the rules were made for.
    current_ips: Option<Vec<IpNetwork>>,
    /// The FQDN target's addresses the egress rules were made for.
    current_egress: Option<Vec<IpNetwork>>,
    /// `InstallRules` not yet answered.
    pending: usize,
}

impl ProxyState {
    /// Nothing installed yet; rules go to the backend `s` names.
    pub fn new(s: &Settings) -> ProxyState {
        let backend = if s.test.fake_netfilter {
            NetfilterBackend::Fake
        } else {
            NetfilterBackend::Iptables
        };
        ProxyState {
            backend,
            current_ips: None,
            current_egress: None,
            pending: 0,
        }
    }

    /// Asks for the rules a new netmap calls for; `Err` is fatal.
    pub fn on_netmap(
        &mut self,
        s: &Settings,
        nm: &NetMapView,
        cx: &mut Ctx,
    ) -> Result<NetmapOutcome, String> {
        let addrs = &nm.self_node.addresses;
        let ips_changed = self.current_ips.as_ref() != Some(addrs);

        if let Some(fqdn) = s.egress_fqdn() {
            let Some(peer) = nm.matching_peers.first() else {
                cx.info(format!("Tailscale node \"{fqdn}\" not found; it either does not exist, or not reachable because of ACLs"));
                return Ok(NetmapOutcome::TargetMissing);
            };
            let egress = &peer.addresses;
            if self.current_egress.as_ref() != Some(egress) && !egress.is_empty() {
                for target in egress {
                    let dst = target.ip();
                    if dst.is_ipv6() {
                        cx.info("Not installing egress forwarding rules for IPv6 as this is currently not supported");
                        continue;
                    }
                    self.egress(cx, dst, addrs, true)?;
                }
                self.current_egress = Some(egress.clone());
            }
        }
        if let Some(dst) = s.proxy.ingress
            && !addrs.is_empty()
            && ips_changed
        {
            cx.info("Installing proxy rules");
            let rules = rules::ingress(dst, addrs)
                .map_err(|e| format!("installing ingress proxy rules: {e}"))?;
            self.install(cx, RulePurpose::Ingress, rules);
        }
        if let Some(dst) = s.egress_ip()
            && ips_changed
            && !addrs.is_empty()
        {
            self.egress(cx, dst, addrs, false)?;
        }
        self.current_ips = Some(addrs.clone());
        Ok(NetmapOutcome::Applied)
    }

    /// The answer to one `InstallRules`; `Err` is fatal.
    pub fn on_rules_applied(
        &mut self,
        purpose: &RulePurpose,
        error: Option<&str>,
    ) -> Result<(), String> {
        self.pending = self.pending.saturating_sub(1);
        let Some(e) = error else {
            return Ok(());
        };
        let what = match purpose {
            RulePurpose::Ingress => "installing ingress proxy rules".to_string(),
            RulePurpose::Egress {
                destination,
                by_fqdn: true,
            } => format!("installing egress proxy rules for destination {destination}"),
            RulePurpose::Egress { .. } => "installing egress proxy rules".to_string(),
        };
        Err(format!("{what}: {e}"))
    }

    /// Whether the proxy is in place: no rules outstanding, and the node's
    /// addresses known when a proxy is configured.
    pub fn ready(&self, s: &Settings) -> bool {
        let have_ips = self.current_ips.as_ref().is_some_and(|a| !a.is_empty());
        self.pending == 0 && (!s.wants_proxy() || have_ips)
    }

    fn egress(
        &mut self,
        cx: &mut Ctx,
        dst: IpAddr,
        ours: &[IpNetwork],
        by_fqdn: bool,
    ) -> Result<(), String> {
        cx.info(format!("Installing forwarding rules for destination {dst}"));
        let purpose = RulePurpose::Egress {
            destination: dst.to_string(),
            by_fqdn,
        };
        let rules = rules::egress(dst, ours).map_err(|e| {
            if by_fqdn {
                format!("installing egress proxy rules for destination {dst}: {e}")
            } else {
                format!("installing egress proxy rules: {e}")
            }
        })?;
        self.install(cx, purpose, rules);
        Ok(())
    }

    fn install(&mut self, cx: &mut Ctx, purpose: RulePurpose, rules: Vec<rules::Rule>) {
        self.pending += 1;
        cx.emit(Command::InstallRules {
            backend: self.backend,
            purpose,
            rules,
        });
    }
}

/// Which forwarding sysctls kernel mode needs (docs/protocols.md §6): from
/// the families of `TS_DEST_IP`, `TS_TAILNET_TARGET_IP` and `TS_ROUTES`;
/// an FQDN target counts as IPv4, as upstream.
pub fn forwarding_families(s: &Settings) -> (bool, bool) {
    let (mut v4, mut v6) = (false, false);
    let mut note = |ip: IpAddr| {
        if ip.is_ipv4() { v4 = true } else { v6 = true }
    };
    if let Some(ip) = s.proxy.ingress {
        note(ip);
    }
    match &s.proxy.egress {
        Some(EgressTarget::Ip(ip)) => note(*ip),
        Some(EgressTarget::Fqdn(_)) => note(IpAddr::from([0, 0, 0, 0])),
        None => {}
    }
    for net in s.routes.iter().flatten() {
        note(net.ip());
    }
    (v4, v6)
}
