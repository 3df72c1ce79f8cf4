//! The iptables backend against the kernel's netfilter, end to end: the
//! real containerboot binary and the simulator, each test in a network
//! namespace of its own (the test's thread unshares one before anything
//! else, and every iptables command, the test's and containerboot's, runs
//! in it). Read back with `iptables-save`/`ip6tables-save` in that
//! namespace.
//!
//! The default flavour is whatever `iptables` is on this machine; one test
//! runs the legacy flavour through PATH when `iptables-legacy-restore` is
//! installed.

mod support;

use rustix::process::Signal;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use support::harness::{self, Need};
use support::*;

const STARTUP: &str = "Startup complete, waiting for shutdown signal";
const REPAIRED: &str = "netfilter: repaired the proxy rules";

/// Moves this test's thread into a new network namespace with `lo` up, and
/// proves it did: no netfilter change below can reach the host's.
fn netns() {
    let host = std::fs::read_link("/proc/thread-self/ns/net").expect("our network namespace");
    // SAFETY: NEWNET only changes this thread's network namespace; no file
    // descriptor table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .expect("unshare(CLONE_NEWNET)");
    let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("the new namespace");
    assert_ne!(
        host, ours,
        "not in a network namespace of our own: refusing to touch netfilter"
    );
    sh(&["ip", "link", "set", "lo", "up"]);
}

/// Runs a program in this thread's namespace; its stdout. Panics on failure.
fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")));
    assert!(
        out.status.success(),
        "{}: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The programs a test reads and changes the rules with.
#[derive(Clone, Copy)]
struct Flavour {
    iptables: &'static str,
    ip6tables: &'static str,
    save: &'static str,
    save6: &'static str,
}

/// The `iptables` on PATH, whichever flavour it is.
const DEFAULT: Flavour = Flavour {
    iptables: "iptables",
    ip6tables: "ip6tables",
    save: "iptables-save",
    save6: "ip6tables-save",
};

const LEGACY: Flavour = Flavour {
    iptables: "iptables-legacy",
    ip6tables: "ip6tables-legacy",
    save: "iptables-legacy-save",
    save6: "ip6tables-legacy-save",
};

/// What `save` prints, for comparing: every table that holds a rule or a
/// chain not built in (tables sorted by name), with those rules and the
/// chains' declarations without counters. Built-in chains' policies,
/// comments and COMMIT are left out.
fn rules(save: &str) -> String {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in sh(&[save]).lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if line.starts_with("-A ") {
            tables.entry(table.clone()).or_default().push(line.into());
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let (name, policy) = (words.next().unwrap(), words.next().unwrap());
            if policy == "-" {
                tables
                    .entry(table.clone())
                    .or_default()
                    .push(format!(":{name}"));
            }
        }
    }
    let mut out = Vec::new();
    for (t, lines) in tables {
        out.push(format!("*{t}"));
        out.extend(lines);
    }
    out.join("\n")
}

/// Waits until `check` holds (a safety net of PATIENCE, not a timing).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kernel-mode world without the fake netfilter (as tests/boot.rs's
/// `kernel_world`: the forwarding sysctls and the tun device under
/// TS_TEST_ONLY_ROOT).
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
    w.var("TS_USERSPACE", "false");
    w
}

/// A directory of links named as the programs containerboot runs, to
/// `target(name)`; `None` leaves the name out.
fn programs_dir(w: &World, dir: &str, target: impl Fn(&str) -> Option<String>) -> String {
    let d = w.path(dir);
    std::fs::create_dir_all(&d).unwrap();
    for name in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        if let Some(t) = target(name) {
            std::os::unix::fs::symlink(t, d.join(name)).unwrap();
        }
    }
    d.display().to_string()
}

/// The legacy flavour under the plain names.
fn legacy_dir(w: &World) -> String {
    programs_dir(w, "legacy", |n| {
        Some(format!(
            "/usr/sbin/{}",
            n.replacen("tables", "tables-legacy", 1)
        ))
    })
}

/// Points containerboot's PATH at `dir` first.
fn path_first(w: &mut World, dir: &str) {
    let path = format!("{dir}:{}:/usr/sbin:/usr/bin:/sbin:/bin", w.bin.display());
    w.var("PATH", &path);
}

/// Boots to startup complete.
fn boot(w: &World) -> Running {
    let mut r = w.start();
    r.wait_for(STARTUP);
    r
}

/// Stops containerboot; it must exit 0.
fn stop(r: Running) -> Finished {
    let f = r.terminate();
    assert_eq!(f.code, Some(0), "log:\n{}", f.dump());
    f
}

/// The counts of every completed reconciliation so far, from the state
/// trace (SIGUSR1 writes it to TS_TRACE_FILE).
fn reconciled(w: &World, r: &mut Running) -> Vec<(u64, u64, u64)> {
    r.signal(Signal::USR1);
    r.wait_for("State trace (");
    let text = std::fs::read_to_string(w.path("trace.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let c = v
                .pointer("/event/RulesReconciled/outcome/Done/counts")?
                .clone();
            let n = |k: &str| c[k].as_u64().unwrap();
            Some((n("kept"), n("added"), n("removed")))
        })
        .collect()
}

/// A rule and a chain of someone else's, there before containerboot.
fn foreign_rules(f: Flavour) {
    for args in [
        "-t nat -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 80",
        "-t nat -N SOMEONE-ELSE",
        "-t nat -A SOMEONE-ELSE -j RETURN",
        "-t mangle -A FORWARD -o eth9 -j ACCEPT",
    ] {
        let mut argv = vec![f.iptables];
        argv.extend(args.split(' '));
        sh(&argv);
    }
    sh(&[
        f.ip6tables,
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "eth9",
        "-j",
        "MASQUERADE",
    ]);
}

/// Ingress to 192.0.2.10 over IPv4, egress to a tailnet IPv6 address: both
/// families at once, around someone else's rules.
fn ingress_v4_egress_v6(f: Flavour) {
    netns();
    foreign_rules(f);
    let mut w = world();
    w.var("TS_DEST_IP", "192.0.2.10")
        .var("TS_TAILNET_TARGET_IP", "fd7a:115c:a1e0::9");
    if f.iptables != DEFAULT.iptables {
        let dir = legacy_dir(&w);
        path_first(&mut w, &dir);
    }
    let r = boot(&w);
    let v4 = "\
*mangle
:TS-CB-FORWARD
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A FORWARD -o eth9 -j ACCEPT
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
*nat
:SOMEONE-ELSE
:TS-CB-PREROUTING
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A PREROUTING -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 80
-A SOMEONE-ELSE -j RETURN
-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 192.0.2.10";
    let v6 = "\
*mangle
:TS-CB-FORWARD
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
*nat
:TS-CB-POSTROUTING
:TS-CB-PREROUTING
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING
-A POSTROUTING -o eth9 -j MASQUERADE
-A TS-CB-POSTROUTING -d fd7a:115c:a1e0::9/128 -j SNAT --to-source fd7a:115c:a1e0::1
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination fd7a:115c:a1e0::9";
    assert_eq!(rules(f.save), v4);
    assert_eq!(rules(f.save6), v6);
    let fin = stop(r);
    let version = if f.iptables == DEFAULT.iptables {
        sh(&["iptables", "--version"])
    } else {
        sh(&["iptables-legacy", "--version"])
    };
    assert!(
        fin.has(&format!(
            "netfilter: using iptables (TS_DEBUG_FIREWALL_MODE=iptables (the default); {})",
            version.trim()
        )),
        "{}",
        fin.dump()
    );
    // Shutdown leaves the rules in place.
    assert_eq!(rules(f.save), v4);
    assert_eq!(rules(f.save6), v6);
}

fn ingress_v4_and_egress_v6_installed_around_foreign_rules() {
    ingress_v4_egress_v6(DEFAULT);
}

fn legacy_flavour() {
    ingress_v4_egress_v6(LEGACY);
}

fn ingress_v6_and_egress_v4() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "fd00::10")
        .var("TS_TAILNET_TARGET_IP", "100.64.0.9");
    let r = boot(&w);
    assert_eq!(
        rules("iptables-save"),
        "\
*mangle
:TS-CB-FORWARD
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
*nat
:TS-CB-POSTROUTING
:TS-CB-PREROUTING
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING
-A TS-CB-POSTROUTING -d 100.64.0.9/32 -j SNAT --to-source 100.64.0.1
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.64.0.9"
    );
    assert_eq!(
        rules("ip6tables-save"),
        "\
*mangle
:TS-CB-FORWARD
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
*nat
:TS-CB-PREROUTING
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A TS-CB-PREROUTING -d fd7a:115c:a1e0::1/128 -j DNAT --to-destination fd00::10"
    );
    stop(r);
}

/// A second containerboot in the same namespace adopts the rules of the
/// first: all kept, nothing added or removed, no duplicate.
fn restart_adopts_the_rules() {
    netns();
    let mut w = world();
    let trace = w.path("trace.jsonl").display().to_string();
    w.var("TS_DEST_IP", "192.0.2.10")
        .var("TS_TAILNET_TARGET_IP", "fd7a:115c:a1e0::9")
        .var("TS_TRACE_FILE", &trace);
    let mut r = boot(&w);
    // v4: DNAT, MSS clamp and their 2 jumps; v6: DNAT, SNAT, MSS clamp and
    // their 3 jumps.
    assert_eq!(reconciled(&w, &mut r), [(0, 10, 0)]);
    let (v4, v6) = (rules("iptables-save"), rules("ip6tables-save"));
    stop(r);
    std::fs::remove_file(w.root.join("var/run/tailscale/tailscaled.sock")).unwrap();
    let mut r = boot(&w);
    assert_eq!(reconciled(&w, &mut r), [(10, 0, 0)]);
    stop(r);
    assert_eq!(rules("iptables-save"), v4);
    assert_eq!(rules("ip6tables-save"), v6);
}

/// The self node's addresses change: the rules follow, and the family the
/// node no longer has an address of loses its chains and jumps.
fn netmap_change_replaces_the_set() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "192.0.2.10")
        .var("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net")
        // An IPv6 route turns IPv6 forwarding on, so the FQDN target's IPv6
        // address gets rules too.
        .var("TS_ROUTES", "fd00:1::/64")
        .script(serde_json::json!({
            "peers": [{"name": "peer.tailnet.ts.net.",
                       "addresses": ["100.64.0.9/32", "fd7a:115c:a1e0::9/128"]}],
            "later_self_node_after_ms": 4000,
            "later_self_node": {"addresses": ["100.64.0.7/32"]},
        }));
    let mut r = boot(&w);
    assert_eq!(
        rules("iptables-save"),
        "\
*mangle
:TS-CB-FORWARD
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
*nat
:TS-CB-POSTROUTING
:TS-CB-PREROUTING
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING
-A TS-CB-POSTROUTING -d 100.64.0.9/32 -j SNAT --to-source 100.64.0.1
-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 192.0.2.10
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.64.0.9"
    );
    assert!(rules("ip6tables-save").contains("--to-destination fd7a:115c:a1e0::9"));
    r.wait_for("Not installing egress forwarding rules for destination fd7a:115c:a1e0::9");
    let want = "\
*mangle
:TS-CB-FORWARD
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
*nat
:TS-CB-POSTROUTING
:TS-CB-PREROUTING
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING
-A TS-CB-POSTROUTING -d 100.64.0.9/32 -j SNAT --to-source 100.64.0.7
-A TS-CB-PREROUTING -d 100.64.0.7/32 -j DNAT --to-destination 192.0.2.10
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.64.0.9";
    eventually("the new IPv4 rules", || rules("iptables-save") == want);
    eventually("no IPv6 rules", || rules("ip6tables-save").is_empty());
    let f = stop(r);
    assert!(
        !f.has(REPAIRED),
        "a planned change is no repair:\n{}",
        f.dump()
    );
}

/// The audit (TS_FIREWALL_RECHECK) puts back a rule deleted by hand and
/// removes a jump duplicated by hand.
fn audit_repairs_what_others_changed() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "192.0.2.10")
        .var("TS_FIREWALL_RECHECK", "1s");
    let mut r = boot(&w);
    let installed = rules("iptables-save");
    sh(&["iptables", "-t", "nat", "-D", "TS-CB-PREROUTING", "1"]);
    assert_ne!(rules("iptables-save"), installed);
    let line = r.wait_for(REPAIRED);
    assert!(line.ends_with("1 restored, 0 removed (3 intact)"), "{line}");
    assert_eq!(rules("iptables-save"), installed);
    sh(&[
        "iptables",
        "-t",
        "mangle",
        "-A",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "containerboot",
        "-j",
        "TS-CB-FORWARD",
    ]);
    let line = r.wait_for(REPAIRED);
    assert!(line.ends_with("0 restored, 1 removed (4 intact)"), "{line}");
    assert_eq!(rules("iptables-save"), installed);
    stop(r);
    // IPv6 had nothing of ours and was never written.
    assert_eq!(rules("ip6tables-save"), "");
}

/// No iptables-restore on PATH: fatal before startup, saying what to do.
fn missing_iptables_restore_is_fatal_with_the_fix() {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "192.0.2.10");
    let dir = programs_dir(&w, "partial", |n| {
        (n != "iptables-restore").then(|| format!("/usr/sbin/{n}"))
    });
    // Only the partial directory and the simulator.
    let path = format!("{dir}:{}", w.bin.display());
    w.var("PATH", &path);
    let f = w.run_to_exit();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(!f.has(STARTUP), "{}", f.dump());
    assert!(
        f.has("netfilter: iptables backend: installing the IPv4 rules: iptables-restore is not on PATH"),
        "{}",
        f.dump()
    );
    assert!(f.has("install iptables"), "{}", f.dump());
    assert!(
        f.has("or set TS_DEBUG_FIREWALL_MODE=nftables"),
        "{}",
        f.dump()
    );
    assert_eq!(rules("iptables-save"), "");
}

/// Without CAP_NET_ADMIN: fatal before startup, naming the capability.
/// The legacy flavour reads an empty namespace without it and then says
/// only "unable to initialize table 'nat'", as for a missing module.
fn no_net_admin(flavour: Flavour) {
    netns();
    let mut w = world();
    w.var("TS_DEST_IP", "192.0.2.10");
    if flavour.iptables != DEFAULT.iptables {
        let dir = legacy_dir(&w);
        path_first(&mut w, &dir);
    }
    let r = w.start_under(&[
        "setpriv",
        "--inh-caps=-net_admin",
        "--bounding-set=-net_admin",
    ]);
    let f = r.wait();
    assert_eq!(f.code, Some(1), "{}", f.dump());
    assert!(!f.has(STARTUP), "{}", f.dump());
    assert!(f.has("netfilter: iptables backend: "), "{}", f.dump());
    assert!(f.has("--cap-add=NET_ADMIN"), "{}", f.dump());
    assert!(
        f.has("securityContext.capabilities.add: [\"NET_ADMIN\"]"),
        "{}",
        f.dump()
    );
    assert_eq!(rules(flavour.save), "");
}

fn no_net_admin_is_fatal_with_the_fix() {
    no_net_admin(DEFAULT);
}

fn no_net_admin_legacy() {
    no_net_admin(LEGACY);
}

/// `auto` with someone's rules in the legacy tables only: ours go there
/// too (the legacy programs by name), not into nf_tables.
fn auto_follows_legacy_rules() {
    netns();
    foreign_rules(LEGACY);
    let mut w = world();
    w.var("TS_DEST_IP", "192.0.2.10")
        .var("TS_DEBUG_FIREWALL_MODE", "auto");
    // `check` says beforehand what auto will choose here, changing nothing.
    let before = rules(LEGACY.save);
    let out = w.command().arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "on this host now: iptables (legacy) (auto: the host's rules are in legacy iptables"
        ),
        "{text}"
    );
    assert_eq!(rules(LEGACY.save), before, "check changed the rules");
    let r = boot(&w);
    let saved = rules(LEGACY.save);
    assert!(
        saved.contains("-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 192.0.2.10"),
        "{saved}"
    );
    if which("nft") {
        let nft = sh(&["nft", "list", "ruleset"]);
        assert!(
            !nft.contains("TS-CB") && !nft.contains("containerboot"),
            "{nft}"
        );
    }
    let f = stop(r);
    assert!(
        f.has("netfilter: using iptables (auto: the host's rules are in legacy iptables"),
        "{}",
        f.dump()
    );
}

/// `auto` with someone's rules in nftables only: ours are a table of our
/// own there.
fn auto_follows_nftables_rules() {
    netns();
    sh(&["nft", "add", "table", "inet", "someone"]);
    sh(&[
        "nft",
        "add",
        "chain",
        "inet",
        "someone",
        "input",
        "{ type filter hook input priority 0; policy accept; }",
    ]);
    sh(&[
        "nft", "add", "rule", "inet", "someone", "input", "tcp", "dport", "22", "accept",
    ]);
    let mut w = world();
    w.var("TS_DEST_IP", "192.0.2.10")
        .var("TS_DEBUG_FIREWALL_MODE", "auto");
    let r = boot(&w);
    let nft = sh(&["nft", "list", "table", "ip", "containerboot"]);
    assert!(
        nft.contains("ip daddr 100.64.0.1 dnat to 192.0.2.10"),
        "{nft}"
    );
    assert!(sh(&["nft", "list", "table", "inet", "someone"]).contains("tcp dport 22 accept"));
    let f = stop(r);
    assert!(
        f.has("netfilter: using nftables (auto: the host's rules are in nftables"),
        "{}",
        f.dump()
    );
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() -> std::process::ExitCode {
    harness::run(harness::tests! {
        needs: [
            Need::Root,
            Need::Program("ip"),
            Need::Program("iptables-restore"),
            Need::Program("ip6tables-restore"),
        ],
        tests: [
            ingress_v4_and_egress_v6_installed_around_foreign_rules,
            ingress_v6_and_egress_v4,
            legacy_flavour [Need::Program("iptables-legacy-restore")],
            restart_adopts_the_rules,
            netmap_change_replaces_the_set,
            audit_repairs_what_others_changed,
            missing_iptables_restore_is_fatal_with_the_fix,
            no_net_admin_is_fatal_with_the_fix [Need::Program("setpriv")],
            no_net_admin_legacy [
                Need::Program("setpriv"),
                Need::Program("iptables-legacy-restore"),
            ],
            auto_follows_legacy_rules [Need::Program("iptables-legacy-restore")],
            auto_follows_nftables_rules [Need::Program("nft")],
        ],
    })
}
