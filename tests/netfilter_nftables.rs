//! The nftables backend against the real nftables, end to end: the real
//! containerboot, the simulator as tailscaled, `TS_USERSPACE=false`,
//! `TS_DEBUG_FIREWALL_MODE=nftables`, each test in a network namespace of
//! its own (the test's thread unshares one, so containerboot, `nft` and
//! everything else the test starts live there): no rule of the host's is
//! ever read or changed.
//!
//! The simulator's node has 100.64.0.1/32 and fd7a:115c:a1e0::1/128. The
//! expected rule sets are written out in nft's own JSON, independently of
//! the backend's encoder.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use support::harness::Need;
use support::*;

const STARTUP: &str = "Startup complete, waiting for shutdown signal";

/// Moves this test's thread into a new network namespace with `lo` up.
fn netns() {
    // SAFETY: NEWNET only changes this thread's network namespace; no file
    // descriptor table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .expect("unshare(CLONE_NEWNET)");
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .expect("ip link set lo up");
    assert!(out.status.success(), "{out:?}");
    // The proof of isolation: nothing but loopback, and an empty ruleset.
    assert_eq!(ruleset(), Vec::<Value>::new(), "a fresh namespace");
}

/// A kernel-mode world using the nftables backend (as tests/boot.rs's
/// `kernel_world`: the forwarding sysctls and the tun device exist under
/// `TS_TEST_ONLY_ROOT`).
fn world() -> World {
    let mut w = World::new();
    for (file, value) in [
        ("proc/sys/net/ipv4/ip_forward", "0"),
        ("proc/sys/net/ipv6/conf/all/forwarding", "0"),
    ] {
        let p = w.root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, value).unwrap();
    }
    std::fs::create_dir_all(w.root.join("dev/net")).unwrap();
    std::fs::write(w.root.join("dev/net/tun"), "").unwrap();
    w.var("TS_USERSPACE", "false")
        .var("TS_DEBUG_FIREWALL_MODE", "nftables");
    w
}

/// Boots to startup complete (the rules are in place by then).
fn boot(w: &World) -> Running {
    let mut r = w.start();
    r.wait_for(STARTUP);
    r
}

fn stop(r: Running) -> Finished {
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "log:\n{}", f.dump());
    f
}

/// Runs nft in this thread's namespace; its standard output.
fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs an nft script (`nft -f -`).
fn nft_script(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f -:\n{script}");
}

/// `nft -j list ruleset` without the metainfo and without handles.
fn ruleset() -> Vec<Value> {
    let doc: Value = serde_json::from_str(&nft(&["-j", "list", "ruleset"])).unwrap();
    doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .map(|o| {
            let mut o = o.clone();
            for v in o.as_object_mut().unwrap().values_mut() {
                v.as_object_mut().unwrap().remove("handle");
            }
            o
        })
        .collect()
}

/// Whether a listed object belongs to a table of ours.
fn is_ours(o: &Value) -> bool {
    let (_, v) = o.as_object().unwrap().iter().next().unwrap();
    let table = v.get("table").unwrap_or(&v["name"]);
    matches!(v["family"].as_str(), Some("ip" | "ip6")) && table == "containerboot"
}

/// Our tables as listed, by family.
fn ours() -> BTreeMap<String, Vec<Value>> {
    let mut by_family: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for o in ruleset().into_iter().filter(is_ours) {
        let (_, v) = o.as_object().unwrap().iter().next().unwrap();
        let family = v["family"].as_str().unwrap().to_string();
        by_family.entry(family).or_default().push(o);
    }
    by_family
}

/// Everything in the ruleset that is not ours.
fn foreign() -> Vec<Value> {
    ruleset().into_iter().filter(|o| !is_ours(o)).collect()
}

/// The text form, for failure messages.
fn text() -> String {
    nft(&["list", "ruleset"])
}

/// The statements of `ip daddr LOCAL dnat to DST` (family `ip` or `ip6`).
fn dnat_ingress(family: &str, local: &str, dst: &str) -> Value {
    json!([
        {"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "daddr"}}, "right": local}},
        {"dnat": {"addr": dst}}
    ])
}

/// `iifname != "tailscale0" dnat to DST`.
fn dnat_not_from_tailnet(dst: &str) -> Value {
    json!([
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "tailscale0"}},
        {"dnat": {"addr": dst}}
    ])
}

/// `ip daddr DST snat to LOCAL`.
fn snat(family: &str, dst: &str, local: &str) -> Value {
    json!([
        {"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "daddr"}}, "right": dst}},
        {"snat": {"addr": local}}
    ])
}

/// `oifname "tailscale0" tcp flags syn / syn,rst tcp option maxseg size
/// set rt mtu`.
fn clamp() -> Value {
    json!([
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "tailscale0"}},
        {"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "rst"]]}, "right": "syn"}},
        {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": {"rt": {"key": "mtu"}}}}
    ])
}

/// Our table in `family` as nft lists it: the table, the three base
/// chains, then the rules of each chain.
fn table(
    family: &str,
    prerouting: &[Value],
    postrouting: &[Value],
    forward: &[Value],
) -> Vec<Value> {
    let t = "containerboot";
    let mut v = vec![
        json!({"table": {"family": family, "name": t}}),
        json!({"chain": {"family": family, "table": t, "name": "prerouting",
            "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}),
        json!({"chain": {"family": family, "table": t, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}),
        json!({"chain": {"family": family, "table": t, "name": "forward",
            "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"}}),
    ];
    for (chain, rules) in [
        ("prerouting", prerouting),
        ("postrouting", postrouting),
        ("forward", forward),
    ] {
        for expr in rules {
            v.push(json!({"rule": {"family": family, "table": t, "chain": chain, "expr": expr}}));
        }
    }
    v
}

fn expect(tables: Vec<Vec<Value>>) -> BTreeMap<String, Vec<Value>> {
    tables
        .into_iter()
        .map(|t| (t[0]["table"]["family"].as_str().unwrap().to_string(), t))
        .collect()
}

fn assert_ours(want: &BTreeMap<String, Vec<Value>>) {
    assert_eq!(&ours(), want, "the ruleset:\n{}", text());
}

/// Waits (PATIENCE at most: a safety net, not a timing assertion) until
/// our tables are `want`.
fn eventually_ours(want: &BTreeMap<String, Vec<Value>>) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while &ours() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "our tables never became {want:#?}; the ruleset:\n{}",
            text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn ingress_v4() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "10.1.2.3");
    let f = stop(boot(&w));
    assert_ours(&expect(vec![table(
        "ip",
        &[dnat_ingress("ip", "100.64.0.1", "10.1.2.3")],
        &[],
        &[clamp()],
    )]));
    assert!(f.has("netfilter: using nftables (TS_DEBUG_FIREWALL_MODE=nftables; nft v"));
}

fn ingress_v6() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "fd00::3");
    stop(boot(&w));
    assert_ours(&expect(vec![table(
        "ip6",
        &[dnat_ingress("ip6", "fd7a:115c:a1e0::1", "fd00::3")],
        &[],
        &[clamp()],
    )]));
}

fn egress_v4() {
    netns();
    let mut w = world();
    w.var("TS_TAILNET_TARGET_IP", "100.99.99.99");
    stop(boot(&w));
    assert_ours(&expect(vec![table(
        "ip",
        &[dnat_not_from_tailnet("100.99.99.99")],
        &[snat("ip", "100.99.99.99", "100.64.0.1")],
        &[clamp()],
    )]));
    // The egress DNAT matches where packets come from, never `oifname`.
    assert!(text().contains("iifname != \"tailscale0\" dnat to 100.99.99.99"));
}

fn egress_v6() {
    netns();
    let mut w = world();
    w.var("TS_TAILNET_TARGET_IP", "fd7a:115c:a1e0::9");
    stop(boot(&w));
    assert_ours(&expect(vec![table(
        "ip6",
        &[dnat_not_from_tailnet("fd7a:115c:a1e0::9")],
        &[snat("ip6", "fd7a:115c:a1e0::9", "fd7a:115c:a1e0::1")],
        &[clamp()],
    )]));
}

/// Ingress and egress at once, in both families.
fn ingress_v6_and_egress_v4() -> BTreeMap<String, Vec<Value>> {
    expect(vec![
        table(
            "ip",
            &[dnat_not_from_tailnet("100.99.99.99")],
            &[snat("ip", "100.99.99.99", "100.64.0.1")],
            &[clamp()],
        ),
        table(
            "ip6",
            &[dnat_ingress("ip6", "fd7a:115c:a1e0::1", "fd00::3")],
            &[],
            &[clamp()],
        ),
    ])
}

fn ingress_and_egress_in_both_families() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "fd00::3")
        .var("TS_TAILNET_TARGET_IP", "100.99.99.99");
    let f = stop(boot(&w));
    assert_ours(&ingress_v6_and_egress_v4());
    // Written in one transaction, logged once per family.
    assert!(f.has("nftables: write table ip containerboot (kept 0, added 3, removed 0)"));
    assert!(f.has("nftables: write table ip6 containerboot (kept 0, added 2, removed 0)"));
    eprintln!(
        "the ruleset of ingress (fd00::3) + egress (100.99.99.99):\n{}",
        text()
    );
}

fn foreign_tables_and_rules_survive_untouched() {
    netns();
    // Other software's tables, including one of our name in a family we
    // never use, and a conventional nat table with a rule of its own.
    nft_script(
        r#"
        table ip nat {
            chain PREROUTING {
                type nat hook prerouting priority dstnat; policy accept;
                ip daddr 192.0.2.1 tcp dport 80 dnat to 192.0.2.2
            }
        }
        table inet containerboot {
            chain input {
                type filter hook input priority 0; policy accept;
                counter
            }
        }
        table ip6 filter {
            set blocked { type ipv6_addr; elements = { 2001:db8::1 }; }
            chain FORWARD {
                type filter hook forward priority filter; policy accept;
                ip6 saddr @blocked drop
            }
        }
        "#,
    );
    let before = foreign();
    assert_eq!(before.len(), 10, "{}", text());
    let mut w = world();
    w.var("TS_DEST_IP", "fd00::3")
        .var("TS_TAILNET_TARGET_IP", "100.99.99.99");
    stop(boot(&w));
    assert_eq!(foreign(), before, "the ruleset:\n{}", text());
    assert_ours(&ingress_v6_and_egress_v4());
}

fn restart_adds_no_duplicates() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "fd00::3")
        .var("TS_TAILNET_TARGET_IP", "100.99.99.99");
    stop(boot(&w));
    assert_ours(&ingress_v6_and_egress_v4());
    let _ = std::fs::remove_file(w.root.join("var/run/tailscale/tailscaled.sock"));
    let f = stop(boot(&w));
    assert_ours(&ingress_v6_and_egress_v4());
    // Read back, found equal, nothing run.
    assert!(!f.has("nftables: write table"), "{}", f.dump());
    assert!(!f.has("nftables: delete table"), "{}", f.dump());
}

fn netmap_change_leaves_only_the_new_set() {
    netns();
    let mut w = world();
    // Ingress over IPv4, egress to both addresses of a peer; then the node
    // gets a new IPv4 address and loses its IPv6 one.
    w.var("TS_DEST_IP", "10.1.2.3")
        .var("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net")
        // An IPv6 route turns IPv6 forwarding on, so the FQDN target's IPv6
        // address gets rules too.
        .var("TS_ROUTES", "fd00:1::/64")
        .script(json!({
            "peers": [{"stable_id": "nPEER", "name": "peer.tailnet.ts.net.",
                       "addresses": ["100.64.0.9/32", "fd7a:115c:a1e0::9/128"]}],
            "later_self_node_after_ms": 300,
            "later_self_node": {"addresses": ["100.64.0.2/32"]},
        }));
    let mut r = w.start();
    r.wait_for(STARTUP);
    r.wait_for("nftables: delete table ip6 containerboot (removed 3)");
    eventually_ours(&expect(vec![table(
        "ip",
        &[
            dnat_ingress("ip", "100.64.0.2", "10.1.2.3"),
            dnat_not_from_tailnet("100.64.0.9"),
        ],
        &[snat("ip", "100.64.0.9", "100.64.0.2")],
        &[clamp()],
    )]));
    let f = stop(r);
    // Before the change, both families had their rules.
    assert!(
        f.has("nftables: write table ip6 containerboot (kept 0, added 3, removed 0)"),
        "{}",
        f.dump()
    );
    // The ingress DNAT and the SNAT had the old address: replaced.
    assert!(
        f.has("nftables: write table ip containerboot (kept 2, added 2, removed 2)"),
        "{}",
        f.dump()
    );
}

fn audit_repairs_a_rule_deleted_by_hand() {
    netns();
    let mut w = world();
    w.var("TS_TAILNET_TARGET_IP", "100.99.99.99")
        .var("TS_FIREWALL_RECHECK", "1s");
    let mut r = boot(&w);
    let want = expect(vec![table(
        "ip",
        &[dnat_not_from_tailnet("100.99.99.99")],
        &[snat("ip", "100.99.99.99", "100.64.0.1")],
        &[clamp()],
    )]);
    assert_ours(&want);
    // Someone deletes the SNAT rule.
    let listed: Value = serde_json::from_str(&nft(&[
        "-j",
        "list",
        "chain",
        "ip",
        "containerboot",
        "postrouting",
    ]))
    .unwrap();
    let handle = listed["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o.get("rule"))
        .expect("the SNAT rule")["handle"]
        .to_string();
    nft(&[
        "delete",
        "rule",
        "ip",
        "containerboot",
        "postrouting",
        "handle",
        &handle,
    ]);
    // (Not checked missing here: the audit may already have run.)
    let line = r.wait_for("netfilter: repaired");
    assert!(line.contains("1 restored, 0 removed (2 intact)"), "{line}");
    assert_ours(&want);
    stop(r);
}

fn missing_nft_is_fatal_with_the_fix() {
    netns();
    let mut w = world();
    // Only the simulator on PATH: no nft.
    let bin = w.bin.display().to_string();
    w.var("TS_TAILNET_TARGET_IP", "100.99.99.99")
        .var("PATH", &bin);
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(!f.has(STARTUP), "{}", f.dump());
    assert!(
        f.has("netfilter: nftables: finding nft's version (`nft --version`) failed"),
        "{}",
        f.dump()
    );
    assert!(f.has("install the nftables package"), "{}", f.dump());
    assert!(f.has("TS_DEBUG_FIREWALL_MODE=iptables"), "{}", f.dump());
    assert_eq!(ruleset(), Vec::<Value>::new());
}

fn without_net_admin_is_fatal_with_the_fix() {
    netns();
    let mut w = world();
    w.var("TS_TAILNET_TARGET_IP", "100.99.99.99");
    let f = w
        .start_through(&[
            "setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
        ])
        .wait();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(!f.has(STARTUP), "{}", f.dump());
    assert!(f.has("Operation not permitted"), "{}", f.dump());
    assert!(
        f.has("needs the NET_ADMIN capability")
            && f.has("--cap-add=NET_ADMIN")
            && f.has("securityContext.capabilities.add: [\"NET_ADMIN\"]"),
        "{}",
        f.dump()
    );
    assert_eq!(ruleset(), Vec::<Value>::new());
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [Need::Root, Need::Program("nft"), Need::Program("ip")],
        tests: [
            ingress_v4,
            ingress_v6,
            egress_v4,
            egress_v6,
            ingress_and_egress_in_both_families,
            foreign_tables_and_rules_survive_untouched,
            restart_adds_no_duplicates,
            netmap_change_leaves_only_the_new_set,
            audit_repairs_a_rule_deleted_by_hand,
            missing_nft_is_fatal_with_the_fix,
            without_net_admin_is_fatal_with_the_fix [Need::Program("setpriv")],
        ],
    })
}
