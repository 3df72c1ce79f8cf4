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

#[test]
fn ingress_rules_gate_startup_complete() {
    let mut r = Run::new(&[
        ("TS_USERSPACE", "false"),
        ("TS_DEST_IP", "10.1.2.3"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ]);
    r.step(Event::Start);
    r.step(Event::KernelPrepared);
    r.step(Event::SocketReady);
    r.step(Event::BusOpened { watch: 1 });
    r.step(ok(Cli::Up));
    r.step(bus(2, Some(IpnState::Running), None));
    // No addresses yet: no rules, no startup complete.
    assert!(r.fx(bus(3, None, Some(netmap(&[])))).is_empty());
    assert_eq!(
        r.fx(bus(
            3,
            None,
            Some(netmap(&["100.64.0.1/32", "fd7a::1/128"]))
        )),
        [
            "rules [iptables -t nat -I PREROUTING 1 --destination 100.64.0.1 -j DNAT --to-destination 10.1.2.3; iptables -t mangle -A FORWARD -o tailscale0 -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu]"
        ]
    );
    assert_eq!(
        r.fx(Event::RulesApplied {
            purpose: RulePurpose::Ingress,
            error: None
        }),
        ["startup complete"]
    );
    // Same addresses again: no rules re-installed.
    assert!(
        r.fx(bus(
            3,
            None,
            Some(netmap(&["100.64.0.1/32", "fd7a::1/128"]))
        ))
        .is_empty()
    );
}

#[test]
fn egress_by_fqdn_skips_ipv6_and_waits_for_the_peer() {
    let mut r = Run::new(&[
        ("TS_USERSPACE", "false"),
        ("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ]);
    r.step(Event::Start);
    r.step(Event::KernelPrepared);
    r.step(Event::SocketReady);
    r.step(Event::BusOpened { watch: 1 });
    r.step(ok(Cli::Up));
    r.step(bus(2, Some(IpnState::Running), None));
    let s = r.step(bus(3, None, Some(netmap(&["100.64.0.1/32"]))));
    assert!(logs(&s)[0].contains("not found"));
    assert!(effects(&s).is_empty());
    let mut nm = netmap(&["100.64.0.1/32"]);
    nm.matching_peers.push(Node {
        stable_id: "nPEER".into(),
        name: "PEER.tailnet.ts.net.".into(),
        addresses: vec![
            "100.64.0.9/32".parse().unwrap(),
            "fd7a::9/128".parse().unwrap(),
        ],
    });
    let s = r.step(bus(3, None, Some(nm)));
    assert_eq!(effects(&s).len(), 1);
    assert!(logs(&s).iter().any(|l| l.contains("IPv6")));
    assert_eq!(
        r.fx(Event::RulesApplied {
            purpose: RulePurpose::Egress {
                destination: "100.64.0.9".into(),
                by_fqdn: true
            },
            error: None
        }),
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
