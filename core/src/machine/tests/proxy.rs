//! Kernel mode: forwarding, ingress and egress rules, startup complete.

use super::harness::*;

#[test]
fn kernel_mode_prepares_forwarding_by_family() {
    let mut r = Run::new(&[
        ("TS_USERSPACE", "false"),
        ("TS_ROUTES", "10.0.0.0/8, fd00::/64"),
    ]);
    assert_eq!(r.fx(Event::Start), ["prepare v4=true v6=true"]);
    let fx = r.fx(Event::KernelPrepared);
    assert_eq!(
        fx[0],
        "spawn tailscaled --socket=/tmp/tailscaled.sock --state=mem: --statedir=/tmp"
    );
    let mut r = Run::new(&[("TS_USERSPACE", "false")]);
    r.step(Event::Start);
    let s = r.step(Event::KernelPrepFailed {
        step: PrepStep::Forwarding,
        error: "enabling \"x\": read-only".into(),
    });
    assert_eq!(logs(&s).len(), 3);
    assert!(logs(&s)[2].contains("privileged=true"));
    assert_eq!(effects(&s), ["exit 1"]);
}

/// A kernel-mode run with `vars`, Running and watching (watch 3).
fn running(vars: &[(&str, &str)]) -> Run {
    let mut all = vec![("TS_USERSPACE", "false")];
    all.extend_from_slice(vars);
    let mut r = Run::new(&all);
    r.step(Event::Start);
    r.step(Event::KernelPrepared);
    r.step(Event::SocketReady);
    r.step(Event::BusOpened { watch: 1 });
    r.step(ok(Cli::Up));
    r.step(bus(2, Some(IpnState::Running), None));
    r
}

fn done(backend: NetfilterBackend, added: usize, removed: usize, kept: usize) -> Event {
    Event::RulesReconciled {
        outcome: ReconcileOutcome::Done {
            backend,
            why: "test".into(),
            counts: RuleCounts {
                added,
                removed,
                kept,
            },
        },
    }
}

fn failed(error: &str) -> Event {
    Event::RulesReconciled {
        outcome: ReconcileOutcome::Failed {
            error: error.into(),
        },
    }
}

const INGRESS_RULES: &str = "[iptables -t nat -I PREROUTING 1 --destination 100.64.0.1 -j DNAT --to-destination 10.1.2.3; iptables -t mangle -A FORWARD -o tailscale0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu]";

#[test]
fn ingress_rules_gate_startup_complete() {
    let mut r = running(&[
        ("TS_DEST_IP", "10.1.2.3"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ]);
    // No addresses yet: no rules, no startup complete.
    assert!(r.fx(bus(3, None, Some(netmap(&[])))).is_empty());
    let nm = || bus(3, None, Some(netmap(&["100.64.0.1/32", "fd7a::1/128"])));
    assert_eq!(r.fx(nm()), [format!("reconcile fake {INGRESS_RULES}")]);
    assert_eq!(
        r.fx(done(NetfilterBackend::Fake, 2, 0, 0)),
        ["startup complete"]
    );
    // The same netmap again: the rules are read back (and found intact).
    assert_eq!(r.fx(nm()), [format!("reconcile fake {INGRESS_RULES}")]);
    let s = r.step(done(NetfilterBackend::Fake, 0, 0, 2));
    assert!(s.commands.is_empty(), "{:?}", s.commands);
}

#[test]
fn the_audit_reads_the_rules_back_and_says_what_it_repaired() {
    let mut r = running(&[("TS_DEST_IP", "10.1.2.3"), ("TS_FIREWALL_RECHECK", "30s")]);
    r.step(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    let s = r.step(done(NetfilterBackend::Iptables, 2, 0, 0));
    assert_eq!(effects(&s), ["startup complete"]);
    assert_eq!(logs(&s), ["netfilter: using iptables (test)"]);
    assert_eq!(r.m.next_deadline(), Some(r.now + 30_000));
    let t0 = r.now;
    let s = r.advance_to_next_deadline();
    assert_eq!(r.now - t0, 30_000);
    assert_eq!(effects(&s), [format!("reconcile iptables {INGRESS_RULES}")]);
    // Someone deleted one of ours and added a duplicate: repaired, said once.
    let s = r.step(done(NetfilterBackend::Iptables, 1, 1, 1));
    assert_eq!(
        logs(&s),
        [
            "netfilter: repaired the proxy rules, which had been changed outside containerboot: 1 restored, 1 removed (1 intact)"
        ]
    );
    // Intact at the next audit: nothing said.
    r.advance_to_next_deadline();
    let s = r.step(done(NetfilterBackend::Iptables, 0, 0, 2));
    assert!(s.commands.is_empty(), "{:?}", s.commands);
}

#[test]
fn no_audit_timer_with_recheck_off() {
    let mut r = running(&[("TS_DEST_IP", "10.1.2.3"), ("TS_FIREWALL_RECHECK", "0")]);
    r.step(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    r.step(done(NetfilterBackend::Iptables, 2, 0, 0));
    assert_eq!(r.m.next_deadline(), None, "no periodic wake-up in Running");
}

#[test]
fn a_reconcile_failure_at_boot_is_fatal_and_later_retried() {
    let error = "netfilter: iptables-restore failed: can't initialize iptables table `nat': Permission denied (you must be root): run the container with the NET_ADMIN capability";
    let mut r = running(&[("TS_DEST_IP", "10.1.2.3")]);
    r.step(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    let s = r.step(failed(error));
    assert_eq!(logs(&s), [error]);
    assert_eq!(effects(&s), ["signal Term"]);
    assert_eq!(
        *r.m.state(),
        State::Shutdown {
            code: 1,
            killed: false
        }
    );

    // Once Running, the same failure is logged once and retried with backoff.
    let mut r = running(&[("TS_DEST_IP", "10.1.2.3"), ("TS_FIREWALL_RECHECK", "0")]);
    r.step(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    r.step(done(NetfilterBackend::Iptables, 2, 0, 0));
    r.step(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    let s = r.step(failed(error));
    assert!(logs(&s)[0].starts_with(error), "{:?}", logs(&s));
    let mut waits = Vec::new();
    for _ in 0..3 {
        let t0 = r.now;
        let s = r.advance_to_next_deadline();
        waits.push(r.now - t0);
        assert_eq!(effects(&s), [format!("reconcile iptables {INGRESS_RULES}")]);
        let s = r.step(failed(error));
        assert!(logs(&s).is_empty(), "logged once: {:?}", logs(&s));
    }
    assert!(waits[1] > waits[0] && waits[2] > waits[1], "{waits:?}");
    r.advance_to_next_deadline();
    let s = r.step(done(NetfilterBackend::Iptables, 0, 0, 2));
    assert_eq!(
        logs(&s),
        ["netfilter: rules in place after 4 failed attempts"]
    );
    assert_eq!(
        *r.m.state(),
        State::Running {
            phase: RunPhase::Watching,
            proxy: match r.m.state() {
                State::Running { proxy, .. } => proxy.clone(),
                _ => unreachable!(),
            },
            announced: true,
        }
    );
}

#[test]
fn a_netmap_during_a_reconcile_asks_once_more_after_it() {
    let mut r = running(&[
        ("TS_TAILNET_TARGET_IP", "100.64.0.9"),
        ("TS_FIREWALL_RECHECK", "0"),
    ]);
    let first = r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    assert_eq!(first.len(), 1);
    // Two more netmaps while the first reconcile runs: one more reconcile,
    // after it, with the latest addresses.
    assert!(
        r.fx(bus(3, None, Some(netmap(&["100.64.0.2/32"]))))
            .is_empty()
    );
    assert!(
        r.fx(bus(3, None, Some(netmap(&["100.64.0.3/32"]))))
            .is_empty()
    );
    let s = r.step(done(NetfilterBackend::Iptables, 3, 0, 0));
    let fx = effects(&s);
    assert_eq!(fx.len(), 1, "{fx:?}");
    assert!(fx[0].contains("--to-source 100.64.0.3"), "{fx:?}");
    // Not ready until the latest set is confirmed.
    assert!(!fx.iter().any(|e| e == "startup complete"));
    assert_eq!(
        r.fx(done(NetfilterBackend::Iptables, 1, 1, 2)),
        ["startup complete"]
    );
}

#[test]
fn auto_is_resolved_once_and_then_used() {
    let mut r = running(&[
        ("TS_DEST_IP", "10.1.2.3"),
        ("TS_DEBUG_FIREWALL_MODE", "auto"),
        ("TS_FIREWALL_RECHECK", "0"),
    ]);
    let fx = r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    assert!(fx[0].starts_with("reconcile auto ["), "{fx:?}");
    let s = r.step(Event::RulesReconciled {
        outcome: ReconcileOutcome::Done {
            backend: NetfilterBackend::Nftables,
            why: "auto: the host's rules are in nftables (kube-proxy)".into(),
            counts: RuleCounts::default(),
        },
    });
    assert_eq!(
        logs(&s),
        ["netfilter: using nftables (auto: the host's rules are in nftables (kube-proxy))"]
    );
    let fx = r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    assert!(fx[0].starts_with("reconcile nftables ["), "{fx:?}");
    let s = r.step(done(NetfilterBackend::Nftables, 0, 0, 2));
    assert!(logs(&s).is_empty(), "said once: {:?}", logs(&s));
}

#[test]
fn egress_by_fqdn_covers_ipv6_only_with_ipv6_forwarding() {
    let peer = Node {
        id: 0,
        stable_id: "nPEER".into(),
        name: "PEER.tailnet.ts.net.".into(),
        addresses: vec![
            "100.64.0.9/32".parse().unwrap(),
            "fd7a::9/128".parse().unwrap(),
        ],
    };
    // As upstream, an FQDN target turns on IPv4 forwarding only: its IPv6
    // address is skipped, and said why (a failing ip6 table must not take
    // an IPv4 egress proxy down).
    let mut r = running(&[
        ("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ]);
    let s = r.step(bus(
        3,
        None,
        Some(netmap(&["100.64.0.1/32", "fd7a::1/128"])),
    ));
    assert!(logs(&s)[0].contains("not found"));
    assert!(effects(&s).is_empty());
    let mut nm = netmap(&["100.64.0.1/32", "fd7a::1/128"]);
    nm.matching_peers.push(peer.clone());
    let s = r.step(bus(3, None, Some(nm)));
    let fx = effects(&s);
    assert_eq!(fx.len(), 1);
    assert!(!fx[0].contains("ip6tables"), "{fx:?}");
    assert!(
        logs(&s).iter().any(|l| l.starts_with("Not installing egress forwarding rules for IPv6 destination fd7a::9: IPv6 forwarding is not turned on")),
        "{:?}",
        logs(&s)
    );
    assert_eq!(
        r.fx(done(NetfilterBackend::Fake, 3, 0, 0)),
        ["startup complete"]
    );
    // With IPv6 forwarding (an IPv6 route), both families get their rules;
    // a family the node has no address of is skipped with a warning.
    let mut r = running(&[
        ("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net"),
        ("TS_ROUTES", "fd00::/64"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ]);
    let mut nm = netmap(&["100.64.0.1/32"]);
    nm.matching_peers.push(peer.clone());
    let s = r.step(bus(3, None, Some(nm)));
    assert!(
        logs(&s).iter().any(
            |l| l.starts_with("Not installing egress forwarding rules for destination fd7a::9")
        ),
        "{:?}",
        logs(&s)
    );
    r.step(done(NetfilterBackend::Fake, 3, 0, 0));
    let mut nm = netmap(&["100.64.0.1/32", "fd7a::1/128"]);
    nm.matching_peers.push(peer);
    let fx = r.fx(bus(3, None, Some(nm)));
    assert!(
        fx[0].contains(
            "ip6tables -t nat -I PREROUTING 1 ! -i tailscale0 -j DNAT --to-destination fd7a::9"
        ),
        "{fx:?}"
    );
    assert!(
        fx[0].contains(
            "iptables -t nat -I PREROUTING 1 ! -i tailscale0 -j DNAT --to-destination 100.64.0.9"
        ),
        "{fx:?}"
    );
}

#[test]
fn repeated_netmaps_during_a_reconcile_do_not_hold_startup_back() {
    let mut r = running(&[("TS_DEST_IP", "10.1.2.3"), ("TS_FIREWALL_RECHECK", "0")]);
    let nm = || bus(3, None, Some(netmap(&["100.64.0.1/32"])));
    assert_eq!(r.fx(nm()).len(), 1);
    r.step(done(NetfilterBackend::Iptables, 2, 0, 0));
    // Startup is held back by nothing now; a busy tailnet keeps sending
    // the same netmap: one read-back at a time, none queued behind it.
    let mut r = running(&[("TS_DEST_IP", "10.1.2.3"), ("TS_FIREWALL_RECHECK", "0")]);
    assert_eq!(r.fx(nm()).len(), 1);
    for _ in 0..5 {
        assert!(r.fx(nm()).is_empty());
    }
    assert_eq!(
        r.fx(done(NetfilterBackend::Iptables, 2, 0, 0)),
        ["startup complete"]
    );
}

#[test]
fn fqdn_match_ignores_case_and_trailing_dot() {
    assert!(event::fqdn_matches(
        "Peer.Tailnet.ts.net.",
        "peer.tailnet.ts.net"
    ));
    assert!(event::fqdn_matches(
        "peer.tailnet.ts.net",
        "peer.tailnet.ts.net."
    ));
    assert!(!event::fqdn_matches(
        "peer2.tailnet.ts.net.",
        "peer.tailnet.ts.net"
    ));
}

/// A newer daemon's netmap changes: `SelfChange` and peer deltas after the
/// first whole netmap.
fn delta(self_change: Option<NetMapView>, changed: Vec<Node>, gone: Vec<u64>) -> Event {
    Event::Bus {
        watch: 3,
        message: BusMessage {
            self_change: self_change.map(|nm| nm.self_node),
            peers_changed: changed,
            peers_gone: gone,
            ..Default::default()
        },
    }
}

#[test]
fn netmap_deltas_move_the_rules_like_whole_netmaps() {
    let peer = |id: u64, addr: &str| Node {
        id,
        stable_id: format!("nPEER{id}"),
        name: "peer.tailnet.ts.net.".into(),
        addresses: vec![addr.parse().unwrap()],
    };
    let mut r = Run::new(&[
        ("TS_USERSPACE", "false"),
        ("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ]);
    r.step(Event::Start);
    r.step(Event::KernelPrepared);
    // Peer deltas are asked for on every watch, as a peer matters here.
    let fx = r.fx(Event::SocketReady);
    assert!(
        fx.iter()
            .any(|f| f.starts_with("watch#1 mask=") && f.ends_with("|PeerChanges")),
        "{fx:?}"
    );
    r.step(Event::BusOpened { watch: 1 });
    r.step(ok(Cli::Up));
    let fx = r.fx(bus(2, Some(IpnState::Running), None));
    assert!(
        fx.iter()
            .any(|f| f == "watch#3 mask=InitialState|InitialNetMap|PeerChanges"),
        "{fx:?}"
    );

    // A delta before any whole netmap has nothing to apply to.
    let s = r.step(delta(None, vec![peer(7, "100.64.0.7/32")], vec![]));
    assert!(effects(&s).is_empty(), "{:?}", effects(&s));

    let mut nm = netmap(&["100.64.0.1/32"]);
    nm.matching_peers.push(peer(7, "100.64.0.7/32"));
    let fx = r.fx(bus(3, None, Some(nm)));
    assert!(fx[0].contains("--to-destination 100.64.0.7"), "{fx:?}");
    r.step(done(NetfilterBackend::Fake, 3, 0, 0));

    // The target's new address, as a replaced peer.
    let fx = r.fx(delta(None, vec![peer(7, "100.64.0.8/32")], vec![]));
    assert!(fx[0].contains("--to-destination 100.64.0.8"), "{fx:?}");
    assert!(!fx[0].contains("100.64.0.7"), "{fx:?}");
    r.step(done(NetfilterBackend::Fake, 1, 1, 2));

    // This node's new address, as a SelfChange: the SNAT follows.
    let fx = r.fx(delta(Some(netmap(&["100.64.0.2/32"])), vec![], vec![]));
    assert!(fx[0].contains("--to-source 100.64.0.2"), "{fx:?}");
    assert!(
        fx[0].contains("--to-destination 100.64.0.8"),
        "the peer is kept: {fx:?}"
    );
    r.step(done(NetfilterBackend::Fake, 1, 1, 2));

    // The peer removed: no target any more, said so, no rules asked for.
    let s = r.step(delta(None, vec![], vec![7]));
    assert!(effects(&s).is_empty(), "{:?}", effects(&s));
    assert!(
        logs(&s).iter().any(|l| l.contains("not found")),
        "{:?}",
        logs(&s)
    );
    // And back under another ID.
    let fx = r.fx(delta(None, vec![peer(9, "100.64.0.9/32")], vec![]));
    assert!(fx[0].contains("--to-destination 100.64.0.9"), "{fx:?}");
}

#[test]
fn without_an_fqdn_target_no_peer_deltas_are_asked_for() {
    let mut r = Run::new(&[("TS_AUTHKEY", "tskey-x")]);
    let fx = r.boot_to_bus();
    assert!(
        fx.iter()
            .any(|f| f == "watch#1 mask=InitialState|InitialPrefs|InitialNetMap"),
        "{fx:?}"
    );
}
