//! Netmap to proxy rules as a value: the rule set the node's addresses and
//! the egress target call for (one pure function), the reconciliation that
//! puts it in place (one at a time; a netmap or an audit arriving meanwhile
//! asks once more afterwards), the drift audit's timer, and whether the
//! proxy is ready. The running state owns one; it emits `ReconcileRules`
//! and hears back `RulesReconciled`.

use super::command::{Command, Level};
use super::ctx::{Backoff, Ctx, Deadline, jitter};
use super::event::{NetMapView, ReconcileOutcome};
use super::rules::{self, NetfilterBackend, Rule, RuleCounts};
use crate::settings::{EgressTarget, FirewallMode, Settings};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// First wait before reconciling again after a failure once Running.
pub const FIREWALL_RETRY_FIRST_MS: u64 = 1_000;
/// Longest wait between reconciliation attempts once Running.
pub const FIREWALL_RETRY_CAP_MS: u64 = 60_000;

/// What a netmap came to.
#[derive(Debug, PartialEq, Eq)]
pub enum NetmapOutcome {
    /// The rule set was planned (and reconciled, when there is one).
    Applied,
    /// The `TS_TAILNET_TARGET_FQDN` node is not in the netmap: nothing
    /// else is done with this netmap.
    TargetMissing,
}

/// The proxy's rules: what is wanted, what is confirmed in place, and the
/// reconciliation under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyState {
    /// What installs the rules, as configured.
    backend: NetfilterBackend,
    /// The backend in use, once the executor has said (it resolves `Auto`).
    in_use: Option<NetfilterBackend>,
    /// `TS_FIREWALL_RECHECK`.
    recheck_ms: u64,
    /// The node's addresses the rules were last planned for.
    current_ips: Option<Vec<IpNetwork>>,
    /// The FQDN target's addresses the rules were last planned for.
    current_egress: Option<Vec<IpNetwork>>,
    /// The rule set wanted now (`None` before the node has addresses).
    desired: Option<Vec<Rule>>,
    /// The rule set the reconciliation under way carries.
    asked: Option<Vec<Rule>>,
    /// The rule set confirmed in place.
    applied: Option<Vec<Rule>>,
    /// Reconcile once more when the one under way answers.
    again: bool,
    /// Failed reconciliations in a row.
    failures: u32,
    backoff: Backoff,
    /// The last logged failure, so a retry storm logs once.
    last_error: Option<String>,
}

impl ProxyState {
    /// Nothing planned yet; rules go to the backend `s` names.
    pub fn new(s: &Settings) -> ProxyState {
        let backend = if s.test.fake_netfilter {
            NetfilterBackend::Fake
        } else {
            match s.firewall {
                FirewallMode::Iptables => NetfilterBackend::Iptables,
                FirewallMode::Nftables => NetfilterBackend::Nftables,
                FirewallMode::Auto => NetfilterBackend::Auto,
            }
        };
        ProxyState {
            backend,
            in_use: None,
            recheck_ms: s.firewall_recheck_ms,
            current_ips: None,
            current_egress: None,
            desired: None,
            asked: None,
            applied: None,
            again: false,
            failures: 0,
            backoff: Backoff::default(),
            last_error: None,
        }
    }

    /// Plans the rules a new netmap calls for and reconciles them (every
    /// netmap reads the installed rules back); `Err` is fatal.
    pub fn on_netmap(
        &mut self,
        s: &Settings,
        nm: &NetMapView,
        cx: &mut Ctx,
    ) -> Result<NetmapOutcome, String> {
        if !s.wants_proxy() {
            return Ok(NetmapOutcome::Applied);
        }
        let addrs = &nm.self_node.addresses;
        let ips_changed = self.current_ips.as_ref() != Some(addrs);
        let mut wanted = Vec::new();

        let peer = match s.egress_fqdn() {
            Some(fqdn) => match nm.matching_peers.first() {
                Some(peer) => Some(peer),
                None => {
                    cx.info(format!("Tailscale node \"{fqdn}\" not found; it either does not exist, or not reachable because of ACLs"));
                    return Ok(NetmapOutcome::TargetMissing);
                }
            },
            None => None,
        };
        if addrs.is_empty() {
            self.current_ips = Some(addrs.clone());
            return Ok(NetmapOutcome::Applied);
        }
        if let Some(peer) = peer {
            let egress = &peer.addresses;
            let changed = self.current_egress.as_ref() != Some(egress) || ips_changed;
            let ipv6_forwarding = forwarding_families(s).1;
            for target in egress {
                let dst = target.ip();
                if dst.is_ipv6() && !ipv6_forwarding {
                    if changed {
                        cx.info(format!("Not installing egress forwarding rules for IPv6 destination {dst}: IPv6 forwarding is not turned on (an IPv6 route in TS_ROUTES turns it on)"));
                    }
                    continue;
                }
                match rules::egress(dst, addrs) {
                    Ok(r) => {
                        if changed {
                            cx.info(format!("Installing forwarding rules for destination {dst}"));
                        }
                        wanted.extend(r);
                    }
                    // Upstream skips IPv6 targets; here a target of a
                    // family the node has no address of is skipped.
                    Err(e) if changed => cx.log(
                        Level::Warn,
                        format!(
                            "Not installing egress forwarding rules for destination {dst}: {e}"
                        ),
                    ),
                    Err(_) => {}
                }
            }
            self.current_egress = Some(egress.clone());
        }
        self.current_ips = Some(addrs.clone());
        if let Some(dst) = s.proxy.ingress {
            if ips_changed {
                cx.info("Installing proxy rules");
            }
            wanted.extend(
                rules::ingress(dst, addrs)
                    .map_err(|e| format!("installing ingress proxy rules: {e}"))?,
            );
        }
        if let Some(dst) = s.egress_ip() {
            if ips_changed {
                cx.info(format!("Installing forwarding rules for destination {dst}"));
            }
            wanted.extend(
                rules::egress(dst, addrs)
                    .map_err(|e| format!("installing egress proxy rules: {e}"))?,
            );
        }
        self.desired = Some(rules::rule_set(wanted));
        self.reconcile(cx);
        Ok(NetmapOutcome::Applied)
    }

    /// The audit timer (or a retry) fired: read the rules back, repair.
    pub fn recheck_due(&mut self, cx: &mut Ctx) {
        self.reconcile(cx);
    }

    /// A reconciliation answered. `announced`: whether startup is complete
    /// (before it, a failure is fatal; after it, retried with backoff).
    pub fn on_reconciled(
        &mut self,
        outcome: &ReconcileOutcome,
        announced: bool,
        cx: &mut Ctx,
    ) -> Result<(), String> {
        let Some(asked) = self.asked.take() else {
            cx.ignore("no reconciliation was under way");
            return Ok(());
        };
        match outcome {
            ReconcileOutcome::Done {
                backend,
                why,
                counts,
            } => {
                if self.in_use != Some(*backend) {
                    cx.info(format!("netfilter: using {backend} ({why})"));
                    self.in_use = Some(*backend);
                }
                if self.failures > 0 {
                    cx.info(format!(
                        "netfilter: rules in place after {} failed attempts",
                        self.failures
                    ));
                }
                // The same rule set as last time, changed all the same:
                // someone else altered our rules.
                if self.applied.as_ref() == Some(&asked) && counts.changed() {
                    cx.log(Level::Warn, repaired(counts));
                }
                self.failures = 0;
                self.backoff.reset();
                self.last_error = None;
                self.applied = Some(asked);
                if self.recheck_ms > 0 {
                    cx.arm(Deadline::FirewallRecheck, self.recheck_ms);
                }
                if std::mem::take(&mut self.again) {
                    self.reconcile(cx);
                }
                Ok(())
            }
            ReconcileOutcome::Failed { error } if !announced => Err(error.clone()),
            ReconcileOutcome::Failed { error } => {
                self.failures += 1;
                let backoff = self
                    .backoff
                    .next(FIREWALL_RETRY_FIRST_MS, FIREWALL_RETRY_CAP_MS);
                let wait = backoff - jitter(cx.now_ms, backoff / 4);
                if self.last_error.as_deref() != Some(error.as_str()) {
                    cx.log(
                        Level::Warn,
                        format!("{error}; trying again in {wait} ms (the same failure is not logged again)"),
                    );
                    self.last_error = Some(error.clone());
                } else {
                    cx.ignore(format!(
                        "same failure as before (attempt {}); trying again in {wait} ms",
                        self.failures
                    ));
                }
                cx.arm(Deadline::FirewallRecheck, wait);
                Ok(())
            }
        }
    }

    /// Whether the proxy is in place: the node's addresses known and the
    /// wanted rules confirmed, with nothing under way.
    pub fn ready(&self, s: &Settings) -> bool {
        if !s.wants_proxy() {
            return true;
        }
        // A read-back under way of the set already confirmed does not hold
        // startup back: netmaps may keep coming.
        self.desired.is_some() && self.applied == self.desired
    }

    /// Asks for the wanted rules to be put in place, or once more after the
    /// reconciliation under way.
    fn reconcile(&mut self, cx: &mut Ctx) {
        let Some(desired) = &self.desired else {
            return;
        };
        if self.asked.is_some() {
            // The one under way reads the rules back anyway: only a new
            // set needs another after it.
            if self.asked.as_ref() != Some(desired) {
                self.again = true;
            }
            return;
        }
        cx.timers.clear(Deadline::FirewallRecheck);
        self.asked = Some(desired.clone());
        cx.emit(Command::ReconcileRules {
            backend: self.in_use.unwrap_or(self.backend),
            rules: desired.clone(),
        });
    }
}

/// The warning for rules of ours found changed by someone else.
fn repaired(c: &RuleCounts) -> String {
    format!(
        "netfilter: repaired the proxy rules, which had been changed outside containerboot: {} restored, {} removed ({} intact)",
        c.added, c.removed, c.kept
    )
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
