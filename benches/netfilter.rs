//! Netmap change → proxy rules in place, per netfilter backend, beside an
//! emulation of upstream's one-`iptables`-process-per-rule pattern. Needs
//! root (each subject works in a network namespace of its own, which this
//! bench creates: nothing here can reach the host's netfilter), `iptables`;
//! `iptables-legacy` and `nft` are measured when installed. Without root or
//! `iptables` it prints SKIPPED and exits 0. Run with
//! `cargo bench --bench netfilter`; `NETFILTER_BENCH_CHANGES` (default 50)
//! and `NETFILTER_BENCH_PROFILE_REPS` (default 20) change the counts.
//! Method and results: BENCHMARKS.md.
//!
//! **The change.** The settings are `TS_DEST_IP=10.1.2.3` (ingress) and
//! `TS_TAILNET_TARGET_FQDN` naming a peer with 100.99.99.99 and
//! fd7a:115c:a1e0::9 (egress, both families). Change `i` is a netmap whose
//! self node has the addresses 100.64.0.N/32 and fd7a:115c:a1e0::N/128
//! (N = i + 1): the core's `ProxyState` turns it into the rule set (4 IPv4
//! and 3 IPv6 rules; the ingress DNAT and the SNAT of each family change
//! with every netmap), and each subject is handed that rule set. A first
//! netmap (N = 1) installs the rules untimed.
//!
//! **What is timed.** For containerboot's backends, the wall time of
//! `Backend::reconcile()` (read back, plan, apply): what stands between the
//! netmap and the rules in place. Beside it the core's own step
//! (`ProxyState::on_netmap`, which decides the rule set). The subjects are
//! interleaved (change i for each, then change i+1), so a slow phase of the
//! shared machine hits them all alike.
//!
//! **Upstream, emulated.** Upstream's containerboot drives go-iptables,
//! which execs one `iptables` (or `ip6tables`) per operation, with
//! `--wait` appended. Two emulations, each exec run through the same
//! runner and reaper as containerboot's own programs:
//! - *per-rule pattern, same end state*: for the same change, delete each
//!   rule no longer wanted (`-D`, one exec each), then for each wanted rule
//!   check it (`-C`) and insert it if missing (`-I ... 1`, `-A` for the MSS
//!   rule), one exec each: 13 execs for this change (3 `-D`, 7 `-C`,
//!   3 `-I`).
//! - *upstream's code path*: what upstream's `cmd/containerboot` runs on a
//!   netmap whose addresses changed (util/linuxfw's `iptablesRunner`): per
//!   egress address `DNATNonTailscaleTraffic` (`-I`), `EnsureSNATForDst`
//!   (`-S POSTROUTING`, `-D` of the SNAT with the old source, `-I`) and
//!   `ClampMSSToPMTU` (`-A`), then `AddDNATRule` (`-I`) and
//!   `ClampMSSToPMTU` (`-A`) for the ingress: 12 execs. It removes neither
//!   the old ingress DNAT nor duplicates, so its chains grow by 6 rules a
//!   change; that is its end state, not ours.
//!
//! **Profile.** Afterwards, each program a backend runs per change is
//! timed alone (same runner), with `true` as the floor (what one process
//! costs here), and each writing program once more with a transaction
//! that changes nothing: the difference is the kernel's part of a change
//! (for nf_tables mostly the wait at the program's exit, when its netlink
//! socket is released, for the transaction's deferred release: an RCU
//! grace period).
//!
//! Every program runs through `containerboot::children::Reaper`, reaped on
//! SIGCHLD by a thread running the same loop as the shell's SIGCHLD source
//! (`src/sources/signals.rs`). No program is run any other way once that
//! thread is up (a second `waitpid` would race it).

use containerboot::children::Reaper;
use containerboot::exec::netfilter::iptables::{self, Iptables};
use containerboot::exec::netfilter::nftables::Nftables;
use containerboot::exec::netfilter::{Backend, run};
use containerboot::ipn::Node;
use containerboot::machine::ctx::Ctx;
use containerboot::machine::event::NetMapView;
use containerboot::machine::proxy::ProxyState;
use containerboot::machine::rules::{Family, NetfilterBackend, Rule, RuleCounts};
use containerboot::machine::{Command, ProcessExit, ReconcileOutcome};
use containerboot::settings::Settings;
use smol::stream::StreamExt;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const INGRESS: &str = "10.1.2.3";
const TARGET_FQDN: &str = "target.example.ts.net";
const TARGET_V4: &str = "100.99.99.99";
const TARGET_V6: &str = "fd7a:115c:a1e0::9";

fn self_addresses(n: u32) -> Vec<ipnetwork::IpNetwork> {
    vec![
        format!("100.64.{}.{}/32", n / 256, n % 256)
            .parse()
            .unwrap(),
        format!("fd7a:115c:a1e0::{n:x}/128").parse().unwrap(),
    ]
}

fn netmap(n: u32) -> NetMapView {
    NetMapView {
        self_node: Node {
            id: 0,
            stable_id: "nSELF".into(),
            name: "proxy.example.ts.net.".into(),
            addresses: self_addresses(n),
        },
        matching_peers: vec![Node {
            id: 0,
            stable_id: "nTARGET".into(),
            name: format!("{TARGET_FQDN}."),
            addresses: vec![
                format!("{TARGET_V4}/32").parse().unwrap(),
                format!("{TARGET_V6}/128").parse().unwrap(),
            ],
        }],
        cert_domain: None,
    }
}

fn settings() -> Settings {
    let vars: BTreeMap<&str, &str> = [
        ("TS_USERSPACE", "false"),
        ("TS_DEST_IP", INGRESS),
        ("TS_TAILNET_TARGET_FQDN", TARGET_FQDN),
        // IPv6 forwarding on, so the target's IPv6 address gets rules too.
        ("TS_ROUTES", "fd00:1::/64"),
    ]
    .into_iter()
    .collect();
    Settings::from_lookup(|k| vars.get(k).map(|v| v.to_string()))
        .unwrap_or_else(|e| panic!("settings: {e:?}"))
}

/// The core: the proxy state and the settings, fed one netmap at a time.
struct Core {
    settings: Settings,
    proxy: ProxyState,
}

impl Core {
    fn new() -> Core {
        let settings = settings();
        let proxy = ProxyState::new(&settings);
        Core { settings, proxy }
    }

    /// The rule set netmap `n` calls for, and how long the core took.
    fn netmap(&mut self, n: u32) -> (Vec<Rule>, Duration) {
        let nm = netmap(n);
        let mut cx = Ctx {
            now_ms: u64::from(n),
            ..Ctx::default()
        };
        let start = Instant::now();
        self.proxy
            .on_netmap(&self.settings, &nm, &mut cx)
            .expect("on_netmap");
        let took = start.elapsed();
        let rules = cx
            .commands
            .into_iter()
            .find_map(|c| match c {
                Command::ReconcileRules { rules, .. } => Some(rules),
                _ => None,
            })
            .expect("the netmap asks for a reconciliation");
        (rules, took)
    }

    /// The reconciliation answered: the next netmap may ask again.
    fn done(&mut self, counts: RuleCounts) {
        let outcome = ReconcileOutcome::Done {
            backend: NetfilterBackend::Iptables,
            why: "bench".into(),
            counts,
        };
        let mut cx = Ctx::default();
        self.proxy
            .on_reconciled(&outcome, true, &mut cx)
            .expect("on_reconciled");
    }
}

/// Moves this thread into a new network namespace, and proves it did: no
/// netfilter change below can reach the host's. (As tests/netfilter_*.rs.)
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
}

/// Runs `argv` through the reaper; its output, or the failure as text.
fn exec(reaper: &Reaper, argv: &[&str], stdin: Option<&str>) -> Result<run::Output, String> {
    run::run(reaper, argv, stdin)
}

fn exec_ok(reaper: &Reaper, argv: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let out = exec(reaper, argv, stdin)?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{}: {}: {}",
            argv.join(" "),
            out.status,
            out.stderr.trim()
        ))
    }
}

/// The kernel's own word on when a change is in place. nf_tables announces
/// every committed transaction to the listeners of its multicast group
/// (`NFNLGRP_NFTABLES`) with an `NFT_MSG_NEWGEN` message, sent after the
/// new generation is live (packets already see the new rules) and before
/// the committing program gets its answer. A program then still has to
/// exit, and its exit waits for the kernel's deferred release of the
/// transaction (see "Where the time goes" in BENCHMARKS.md): the time a
/// caller waits is longer than the time the rules take to be in place.
///
/// A thread reads the group and stamps each `NEWGEN` as it arrives (an
/// upper bound: the thread may be scheduled late, never early). To know
/// it has seen everything up to now, the bench sends a fence: a
/// `NFT_MSG_GETGEN` request on the same socket, whose answer (also a
/// `NEWGEN`, with the fence's sequence number) is queued after every
/// notification already queued. The socket lives in the namespace of the
/// thread that opens it: only that subject's commits are seen.
struct Commits {
    fd: Arc<rustix::fd::OwnedFd>,
    seen: mpsc::Receiver<Seen>,
    fence: u32,
}

enum Seen {
    Commit(Instant),
    Fence(u32),
    /// The kernel refused a fence (errno).
    FenceRefused(u32, i32),
    /// The socket's buffer overflowed: notifications were lost.
    Lost,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFNLGRP_NFTABLES: u32 = 7;
const NLMSG_ERROR: u16 = 2;
/// Fence sequence numbers: far above the `time()`-based ones nft and
/// iptables-nft put on their batches.
const FENCE_BASE: u32 = 0xf000_0000;

impl Commits {
    fn open() -> Commits {
        use rustix::net::netlink;
        let fd = rustix::net::socket(
            rustix::net::AddressFamily::NETLINK,
            rustix::net::SocketType::RAW,
            Some(netlink::NETFILTER),
        )
        .expect("a NETLINK_NETFILTER socket");
        rustix::net::bind(
            &fd,
            &netlink::SocketAddrNetlink::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
        )
        .expect("join NFNLGRP_NFTABLES");
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 4 << 20);
        let fd = Arc::new(fd);
        let (tx, seen) = mpsc::channel();
        let reader = fd.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match rustix::net::recv(
                    &*reader,
                    &mut buf[..],
                    rustix::net::RecvFlags::empty(),
                ) {
                    Ok((n, _)) => n,
                    Err(rustix::io::Errno::NOBUFS) => {
                        if tx.send(Seen::Lost).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return,
                };
                let now = Instant::now();
                let mut at = 0;
                // struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
                while at + 16 <= n {
                    let word =
                        |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
                    let len = word(0) as usize;
                    let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                    let seq = word(8);
                    if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
                        let what = if seq >= FENCE_BASE {
                            Seen::Fence(seq)
                        } else {
                            Seen::Commit(now)
                        };
                        if tx.send(what).is_err() {
                            return;
                        }
                    } else if kind == NLMSG_ERROR && seq >= FENCE_BASE && at + 20 <= n {
                        let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                        if tx.send(Seen::FenceRefused(seq, errno)).is_err() {
                            return;
                        }
                    }
                    if len < 16 {
                        break;
                    }
                    at += (len + 3) & !3;
                }
            }
        });
        Commits {
            fd,
            seen,
            fence: FENCE_BASE,
        }
    }

    /// The commits announced since the last call, in order.
    fn since_last(&mut self) -> Result<Vec<Instant>, String> {
        self.fence += 1;
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&20u32.to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
        msg.extend_from_slice(&1u16.to_ne_bytes()); // NLM_F_REQUEST
        msg.extend_from_slice(&self.fence.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg: family AF_UNSPEC, version 0, res_id 0.
        msg.extend_from_slice(&[0, 0, 0, 0]);
        rustix::net::sendto(
            &*self.fd,
            &msg,
            rustix::net::SendFlags::empty(),
            &rustix::net::netlink::SocketAddrNetlink::new(0, 0),
        )
        .map_err(|e| format!("NFT_MSG_GETGEN: {e}"))?;
        let mut commits = Vec::new();
        loop {
            match self.seen.recv_timeout(Duration::from_secs(5)) {
                Ok(Seen::Commit(t)) => commits.push(t),
                Ok(Seen::Fence(seq)) if seq == self.fence => return Ok(commits),
                Ok(Seen::Fence(_)) => {}
                Ok(Seen::FenceRefused(seq, errno)) if seq == self.fence => {
                    return Err(format!(
                        "the kernel refused NFT_MSG_GETGEN: errno {}",
                        -errno
                    ));
                }
                Ok(Seen::FenceRefused(..)) => {}
                Ok(Seen::Lost) => return Err("nf_tables notifications lost (ENOBUFS)".into()),
                Err(_) => return Err("no answer to the fence".into()),
            }
        }
    }
}

/// One thing measured: it makes the rules of a change be in place.
trait Subject {
    /// Puts `rules` in place; a short account of what it did.
    fn apply(&mut self, rules: &[Rule]) -> Result<String, String>;
    /// The rules as installed, as text (after the run, untimed).
    fn dump(&self) -> String;
    /// Each program run per change, timed alone: (what, ms per run).
    /// `other` is a rule set that differs from the current one.
    fn profile(&mut self, _other: &[Rule], _reps: usize) -> Vec<(String, Vec<f64>)> {
        Vec::new()
    }
}

/// The iptables programs of a flavour.
#[derive(Clone, Copy)]
struct Flavour {
    legacy: bool,
}

impl Flavour {
    fn iptables(self, family: Family) -> &'static str {
        match (family, self.legacy) {
            (Family::V4, false) => "iptables",
            (Family::V6, false) => "ip6tables",
            (Family::V4, true) => "iptables-legacy",
            (Family::V6, true) => "ip6tables-legacy",
        }
    }
    fn save(self, family: Family) -> &'static str {
        match (family, self.legacy) {
            (Family::V4, false) => "iptables-save",
            (Family::V6, false) => "ip6tables-save",
            (Family::V4, true) => "iptables-legacy-save",
            (Family::V6, true) => "ip6tables-legacy-save",
        }
    }
    fn restore(self, family: Family) -> &'static str {
        match (family, self.legacy) {
            (Family::V4, false) => "iptables-restore",
            (Family::V6, false) => "ip6tables-restore",
            (Family::V4, true) => "iptables-legacy-restore",
            (Family::V6, true) => "ip6tables-legacy-restore",
        }
    }
    fn dump(self, reaper: &Reaper) -> String {
        let mut text = String::new();
        for family in [Family::V4, Family::V6] {
            text.push_str(&exec_ok(reaper, &[self.save(family)], None).unwrap_or_else(|e| e));
        }
        text
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `f` `reps` times (ms).
fn times(reps: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            ms(start.elapsed())
        })
        .collect()
}

fn floor(reaper: &Reaper, reps: usize) -> (String, Vec<f64>) {
    (
        "`true` (one process: spawn, exit, reap)".into(),
        times(reps, || {
            exec_ok(reaper, &["true"], None).unwrap();
        }),
    )
}

fn account(c: &RuleCounts) -> String {
    format!("kept {} added {} removed {}", c.kept, c.added, c.removed)
}

/// containerboot's iptables backend.
struct OursIptables {
    backend: Iptables,
    reaper: Arc<Reaper>,
    flavour: Flavour,
    /// The rule set last put in place.
    current: Vec<Rule>,
}

impl Subject for OursIptables {
    fn apply(&mut self, rules: &[Rule]) -> Result<String, String> {
        let counts = self.backend.reconcile(rules)?;
        self.current = rules.to_vec();
        Ok(account(&counts))
    }

    fn dump(&self) -> String {
        self.flavour.dump(&self.reaper)
    }

    fn profile(&mut self, other: &[Rule], reps: usize) -> Vec<(String, Vec<f64>)> {
        let r = &self.reaper;
        let mut out = vec![floor(r, reps)];
        let current = self.current.clone();
        for family in [Family::V4, Family::V6] {
            let save = self.flavour.save(family);
            out.push((
                format!("`{save}` (read back)"),
                times(reps, || {
                    exec_ok(r, &[save], None).unwrap();
                }),
            ));
        }
        // The in-process part: parse the read-back and plan.
        let text = exec_ok(r, &[self.flavour.save(Family::V4)], None).unwrap();
        let v4 = |rules: &[Rule]| -> Vec<Rule> {
            rules
                .iter()
                .filter(|r| r.family() == Family::V4)
                .cloned()
                .collect()
        };
        let want = v4(other);
        out.push((
            "parse + plan, IPv4 (in process)".into(),
            times(reps, || {
                let p = iptables::plan(&want, &iptables::parse_save(&text));
                assert!(p.script.is_some());
            }),
        ));
        // The transaction of a change, alternately to `other` and back.
        for family in [Family::V4, Family::V6] {
            let (save, restore) = (self.flavour.save(family), self.flavour.restore(family));
            let of = |rules: &[Rule]| -> Vec<Rule> {
                rules
                    .iter()
                    .filter(|r| r.family() == family)
                    .cloned()
                    .collect()
            };
            let sets = [of(other), of(&current)];
            let mut samples = Vec::new();
            for i in 0..reps {
                let text = exec_ok(r, &[save], None).unwrap();
                let p = iptables::plan(&sets[i % 2], &iptables::parse_save(&text));
                let script = p.script.expect("a change");
                let start = Instant::now();
                exec_ok(r, &[restore, "--noflush", "--wait=10"], Some(&script)).unwrap();
                samples.push(ms(start.elapsed()));
            }
            out.push((format!("`{restore} --noflush` (apply the change)"), samples));
            // The same program, its transaction empty: what is left of
            // the apply without the kernel's work for a change.
            out.push((
                format!("`{restore} --noflush`, a transaction that changes nothing"),
                times(reps, || {
                    exec_ok(
                        r,
                        &[restore, "--noflush", "--wait=10"],
                        Some("*nat\nCOMMIT\n"),
                    )
                    .unwrap();
                }),
            ));
        }
        // Leave the rules as the run left them.
        self.backend.reconcile(&current).unwrap();
        out
    }
}

/// containerboot's nftables backend.
struct OursNftables {
    backend: Nftables,
    reaper: Arc<Reaper>,
    /// The rule set last put in place.
    current: Vec<Rule>,
}

impl OursNftables {
    /// What `nft -j -f -` is given to replace our table of `family` with
    /// what is installed now: the listing turned into `add` commands after
    /// `add table; delete table` (as the backend's transaction).
    fn replace_batch(&self, family: &str) -> String {
        let text = exec_ok(
            &self.reaper,
            &["nft", "-j", "list", "table", family, "containerboot"],
            None,
        )
        .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let table = serde_json::json!({"family": family, "name": "containerboot"});
        let mut commands = vec![
            serde_json::json!({"add": {"table": table}}),
            serde_json::json!({"delete": {"table": table}}),
        ];
        for object in doc["nftables"].as_array().unwrap() {
            let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            if kind == "metainfo" {
                continue;
            }
            let mut body = body.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("handle");
            }
            commands.push(serde_json::json!({"add": {kind.clone(): body}}));
        }
        serde_json::json!({"nftables": commands}).to_string()
    }
}

impl Subject for OursNftables {
    fn apply(&mut self, rules: &[Rule]) -> Result<String, String> {
        let counts = self.backend.reconcile(rules)?;
        self.current = rules.to_vec();
        Ok(account(&counts))
    }

    fn dump(&self) -> String {
        exec_ok(&self.reaper, &["nft", "list", "ruleset"], None).unwrap_or_else(|e| e)
    }

    fn profile(&mut self, other: &[Rule], reps: usize) -> Vec<(String, Vec<f64>)> {
        let r = self.reaper.clone();
        let mut out = vec![floor(&r, reps)];
        let current = self.current.clone();
        for argv in [
            &["nft", "-j", "list", "tables"][..],
            &["nft", "-j", "list", "table", "ip", "containerboot"][..],
            &["nft", "-j", "list", "table", "ip6", "containerboot"][..],
        ] {
            out.push((
                format!("`{}` (read back)", argv.join(" ")),
                times(reps, || {
                    exec_ok(&r, argv, None).unwrap();
                }),
            ));
        }
        // The transaction: both tables replaced by `other`'s, alternately
        // with the current ones.
        let batch = |s: &Self| -> String {
            let (a, b) = (s.replace_batch("ip"), s.replace_batch("ip6"));
            let mut a: serde_json::Value = serde_json::from_str(&a).unwrap();
            let b: serde_json::Value = serde_json::from_str(&b).unwrap();
            let items = a["nftables"].as_array_mut().unwrap();
            items.extend(b["nftables"].as_array().unwrap().iter().cloned());
            a.to_string()
        };
        let now = batch(self);
        self.backend.reconcile(other).unwrap();
        let then = batch(self);
        let batches = [now, then];
        let mut samples = Vec::new();
        for i in 0..reps {
            let start = Instant::now();
            exec_ok(&r, &["nft", "-j", "-f", "-"], Some(&batches[i % 2])).unwrap();
            samples.push(ms(start.elapsed()));
        }
        out.push(("`nft -j -f -` (replace both tables)".into(), samples));
        // The same program, its transaction changing nothing (`add table`
        // of a table that is there).
        let noop = r#"{"nftables":[{"add":{"table":{"family":"ip","name":"containerboot"}}}]}"#;
        out.push((
            "`nft -j -f -`, a transaction that changes nothing".into(),
            times(reps, || {
                exec_ok(&r, &["nft", "-j", "-f", "-"], Some(noop)).unwrap();
            }),
        ));
        self.backend.reconcile(&current).unwrap();
        out
    }
}

/// A rule as go-iptables is given it: table, chain, whether upstream
/// inserts it at 1 (else appends), and the rule's words.
struct Spec {
    program: &'static str,
    table: String,
    chain: String,
    insert: bool,
    words: Vec<String>,
}

/// `rule` as upstream's iptablesRunner writes it (`Rule::iptables_argv`
/// is that command line).
fn spec(rule: &Rule, flavour: Flavour) -> Spec {
    let argv = rule.iptables_argv();
    // [program, "-t", table, "-I"|"-A", chain, ("1"), words...]
    let insert = argv[3] == "-I";
    let words = argv[if insert { 6 } else { 5 }..].to_vec();
    Spec {
        program: flavour.iptables(rule.family()),
        table: argv[2].clone(),
        chain: argv[4].clone(),
        insert,
        words,
    }
}

/// Runs one go-iptables operation: `program -t table OP chain [1] words
/// --wait` (go-iptables appends `--wait`). `Ok(true)`: exit 0;
/// `Ok(false)`: exit 1 (for `-C`: not there).
fn go_iptables(reaper: &Reaper, s: &Spec, op: &str) -> Result<bool, String> {
    let mut argv: Vec<&str> = vec![s.program, "-t", &s.table, op, &s.chain];
    if op == "-I" {
        argv.push("1");
    }
    argv.extend(s.words.iter().map(String::as_str));
    argv.push("--wait");
    let out = exec(reaper, &argv, None)?;
    match out.status {
        ProcessExit::Code(0) => Ok(true),
        ProcessExit::Code(1) if op == "-C" => Ok(false),
        _ => Err(format!(
            "{}: {}: {}",
            argv.join(" "),
            out.status,
            out.stderr.trim()
        )),
    }
}

/// Upstream's per-rule exec pattern, driven to the same end state as
/// containerboot's reconciliation: `-D` each rule no longer wanted, `-C`
/// each wanted rule and `-I`/`-A` it when missing; one exec each.
struct UpstreamPerRule {
    reaper: Arc<Reaper>,
    flavour: Flavour,
    installed: Vec<Rule>,
}

impl Subject for UpstreamPerRule {
    fn apply(&mut self, rules: &[Rule]) -> Result<String, String> {
        let r = &self.reaper;
        let (mut execs, mut deleted, mut inserted) = (0, 0, 0);
        for old in self.installed.iter().filter(|o| !rules.contains(o)) {
            go_iptables(r, &spec(old, self.flavour), "-D")?;
            execs += 1;
            deleted += 1;
        }
        for rule in rules {
            let s = spec(rule, self.flavour);
            execs += 1;
            if !go_iptables(r, &s, "-C")? {
                go_iptables(r, &s, if s.insert { "-I" } else { "-A" })?;
                execs += 1;
                inserted += 1;
            }
        }
        self.installed = rules.to_vec();
        Ok(format!(
            "{execs} execs: {deleted} deleted, {inserted} inserted"
        ))
    }

    fn dump(&self) -> String {
        self.flavour.dump(&self.reaper)
    }

    fn profile(&mut self, _other: &[Rule], reps: usize) -> Vec<(String, Vec<f64>)> {
        let r = &self.reaper;
        let mut out = vec![floor(r, reps)];
        let Some(rule) = self.installed.first() else {
            return out;
        };
        let s = spec(rule, self.flavour);
        out.push((
            format!(
                "`{} -t {} -C {} ... --wait` (one check)",
                s.program, s.table, s.chain
            ),
            times(reps, || {
                assert!(go_iptables(r, &s, "-C").unwrap());
            }),
        ));
        out
    }
}

/// Upstream's own code path on a netmap whose addresses changed (its
/// end state, not ours: see the header).
struct UpstreamCodePath {
    reaper: Arc<Reaper>,
    flavour: Flavour,
}

impl UpstreamCodePath {
    fn run(&self, family: Family, args: &[&str]) -> Result<String, String> {
        let mut argv = vec![self.flavour.iptables(family)];
        argv.extend_from_slice(args);
        argv.push("--wait");
        exec_ok(&self.reaper, &argv, None)
    }

    /// `installEgressForwardingRule`: DNATNonTailscaleTraffic,
    /// EnsureSNATForDst, ClampMSSToPMTU. Returns the execs.
    fn egress(&self, dst: IpAddr, local: IpAddr) -> Result<usize, String> {
        let fam = Family::of(&dst);
        let (d, l) = (dst.to_string(), local.to_string());
        self.run(
            fam,
            &[
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "!",
                "-i",
                "tailscale0",
                "-j",
                "DNAT",
                "--to-destination",
                &d,
            ],
        )?;
        // EnsureSNATForDst: list POSTROUTING; a SNAT for this destination
        // with another source is deleted; then insert. (`dst.Prefix(32)`,
        // as upstream: /32 for IPv6 too.)
        let prefix = ipnetwork::IpNetwork::new(dst, 32)
            .map(|n| format!("{}/32", n.network()))
            .map_err(|e| e.to_string())?;
        let listed = self.run(fam, &["-t", "nat", "-S", "POSTROUTING"])?;
        let mut execs = 2;
        let want_prefix = format!("-d {prefix} -j SNAT --to-source");
        let want = format!("{want_prefix} {l}");
        let mut present = false;
        for line in listed.lines() {
            let args = line.trim_start_matches("-A POSTROUTING ").trim();
            if args.starts_with(&want_prefix) {
                if args.starts_with(&want) {
                    present = true;
                } else {
                    let mut del = vec!["-t", "nat", "-D", "POSTROUTING"];
                    del.extend(args.split(' '));
                    self.run(fam, &del)?;
                    execs += 1;
                }
                break;
            }
        }
        if !present {
            self.run(
                fam,
                &[
                    "-t",
                    "nat",
                    "-I",
                    "POSTROUTING",
                    "1",
                    "-d",
                    &prefix,
                    "-j",
                    "SNAT",
                    "--to-source",
                    &l,
                ],
            )?;
            execs += 1;
        }
        self.clamp(fam)?;
        Ok(execs + 1)
    }

    fn clamp(&self, fam: Family) -> Result<String, String> {
        self.run(
            fam,
            &[
                "-t",
                "mangle",
                "-A",
                "FORWARD",
                "-o",
                "tailscale0",
                "-p",
                "tcp",
                "--tcp-flags",
                "SYN,RST",
                "SYN",
                "-j",
                "TCPMSS",
                "--clamp-mss-to-pmtu",
            ],
        )
    }
}

impl Subject for UpstreamCodePath {
    fn apply(&mut self, rules: &[Rule]) -> Result<String, String> {
        // The node's addresses, from the rule set (the core's input).
        let local = |fam: Family| {
            rules.iter().find_map(|r| match r {
                Rule::SnatForDestination { local, .. } if r.family() == fam => Some(*local),
                _ => None,
            })
        };
        let mut execs = 0;
        for (target, fam) in [(TARGET_V4, Family::V4), (TARGET_V6, Family::V6)] {
            let l = local(fam).ok_or("no local address")?;
            execs += self.egress(target.parse().unwrap(), l)?;
        }
        let l = local(Family::V4).ok_or("no local address")?;
        self.run(
            Family::V4,
            &[
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "--destination",
                &l.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                INGRESS,
            ],
        )?;
        self.clamp(Family::V4)?;
        Ok(format!("{} execs", execs + 2))
    }

    fn dump(&self) -> String {
        self.flavour.dump(&self.reaper)
    }
}

type Make = Box<dyn FnOnce(Arc<Reaper>) -> Result<Box<dyn Subject>, String> + Send>;

enum Job {
    Apply(Vec<Rule>),
    Dump,
    Profile(Vec<Rule>, usize),
}

enum Answer {
    /// How long `apply` took to return; when the kernel announced the last
    /// nf_tables commit of the change, and how many it announced.
    Applied(Duration, Option<(Duration, usize)>, Result<String, String>),
    Dump(String),
    Profile(Vec<(String, Vec<f64>)>),
}

/// A subject on a thread of its own, in a network namespace of its own.
struct Worker {
    name: String,
    budget: Option<f64>,
    jobs: mpsc::Sender<Job>,
    answers: mpsc::Receiver<Result<Answer, String>>,
}

impl Worker {
    fn start(name: &str, budget: Option<f64>, reaper: Arc<Reaper>, make: Make) -> Worker {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (reply, answers) = mpsc::channel();
        std::thread::spawn(move || {
            netns();
            let mut commits = Commits::open();
            let mut subject = match make(reaper) {
                Ok(s) => s,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            for job in inbox {
                let answer = match job {
                    Job::Apply(rules) => {
                        if let Err(e) = commits.since_last() {
                            let _ = reply.send(Err(e));
                            return;
                        }
                        let start = Instant::now();
                        let done = subject.apply(&rules);
                        let returned = start.elapsed();
                        match commits.since_last() {
                            Ok(seen) => Answer::Applied(
                                returned,
                                seen.last().map(|t| (t.duration_since(start), seen.len())),
                                done,
                            ),
                            Err(e) => {
                                let _ = reply.send(Err(e));
                                return;
                            }
                        }
                    }
                    Job::Dump => Answer::Dump(subject.dump()),
                    Job::Profile(other, reps) => Answer::Profile(subject.profile(&other, reps)),
                };
                if reply.send(Ok(answer)).is_err() {
                    return;
                }
            }
        });
        Worker {
            name: name.to_string(),
            budget,
            jobs,
            answers,
        }
    }

    fn ask(&self, job: Job) -> Result<Answer, String> {
        self.jobs.send(job).map_err(|_| "worker gone".to_string())?;
        self.answers.recv().map_err(|_| "worker gone".to_string())?
    }

    /// How long the apply took to return, when its last nf_tables commit
    /// was announced (and how many), and its account.
    fn apply(&self, rules: &[Rule]) -> Result<Applied, String> {
        match self.ask(Job::Apply(rules.to_vec()))? {
            Answer::Applied(returned, commit, r) => r.map(|account| Applied {
                returned,
                commit,
                account,
            }),
            _ => unreachable!(),
        }
    }
}

struct Applied {
    returned: Duration,
    commit: Option<(Duration, usize)>,
    account: String,
}

/// (median, p95, min, max) in ms; p95 by nearest rank.
fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
    (median, v[rank - 1], v[0], v[n - 1])
}

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn first_line(reaper: &Reaper, argv: &[&str]) -> String {
    match exec(reaper, argv, None) {
        Ok(o) => format!("{}{}", o.stdout, o.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(e) => format!("unavailable: {e}"),
    }
}

fn reps(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; do nothing otherwise.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED netfilter bench: needs root (network namespaces, netfilter)");
        return;
    }
    // Checked before the reaper runs: no plain waitpid after that.
    if !have("iptables") {
        println!("SKIPPED netfilter bench: iptables is not installed");
        return;
    }
    let legacy = have("iptables-legacy-restore");
    let nft = have("nft");
    let changes = reps("NETFILTER_BENCH_CHANGES", 50) as u32;
    let profile_reps = reps("NETFILTER_BENCH_PROFILE_REPS", 20);

    // SIGCHLD → reap, as the shell's SIGCHLD source does.
    let reaper = Arc::new(Reaper::default());
    let mut sigchld =
        async_signal::Signals::new([async_signal::Signal::Child]).expect("SIGCHLD handler");
    {
        let reaper = reaper.clone();
        std::thread::spawn(move || {
            smol::block_on(async {
                reaper.reap();
                while sigchld.next().await.is_some() {
                    reaper.reap();
                }
            })
        });
    }

    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!(
        "machine: {} cpus ({cpu_model}), Linux {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "iptables: {}",
        first_line(&reaper, &["iptables", "--version"])
    );
    if legacy {
        println!(
            "iptables-legacy: {}",
            first_line(&reaper, &["iptables-legacy", "--version"])
        );
    }
    if nft {
        println!("nft: {}", first_line(&reaper, &["nft", "--version"]));
    }

    let nf = Flavour { legacy: false };
    let lg = Flavour { legacy: true };
    let mut workers = vec![Worker::start(
        "containerboot iptables (nf_tables), reconcile()",
        Some(20.0),
        reaper.clone(),
        Box::new(move |r| {
            Ok(Box::new(OursIptables {
                backend: Iptables::detect_flavour(r.clone(), false)?,
                reaper: r,
                flavour: nf,
                current: Vec::new(),
            }) as Box<dyn Subject>)
        }),
    )];
    if legacy {
        workers.push(Worker::start(
            "containerboot iptables (legacy), reconcile()",
            Some(20.0),
            reaper.clone(),
            Box::new(move |r| {
                Ok(Box::new(OursIptables {
                    backend: Iptables::detect_flavour(r.clone(), true)?,
                    reaper: r,
                    flavour: lg,
                    current: Vec::new(),
                }) as Box<dyn Subject>)
            }),
        ));
    }
    if nft {
        workers.push(Worker::start(
            "containerboot nftables (nft -j), reconcile()",
            Some(5.0),
            reaper.clone(),
            Box::new(|r| {
                Ok(Box::new(OursNftables {
                    backend: Nftables::new(r.clone())?,
                    reaper: r,
                    current: Vec::new(),
                }) as Box<dyn Subject>)
            }),
        ));
    }
    for (flavour, label) in [(nf, "nf_tables")]
        .into_iter()
        .chain(legacy.then_some((lg, "legacy")))
    {
        workers.push(Worker::start(
            &format!("upstream emulated: per-rule exec, same end state ({label})"),
            None,
            reaper.clone(),
            Box::new(move |r| {
                Ok(Box::new(UpstreamPerRule {
                    reaper: r,
                    flavour,
                    installed: Vec::new(),
                }) as Box<dyn Subject>)
            }),
        ));
        workers.push(Worker::start(
            &format!("upstream emulated: its code path, 12 execs ({label})"),
            None,
            reaper.clone(),
            Box::new(move |r| {
                Ok(Box::new(UpstreamCodePath { reaper: r, flavour }) as Box<dyn Subject>)
            }),
        ));
    }

    // The first netmap: everything installed, untimed.
    let mut core = Core::new();
    let (first, _) = core.netmap(1);
    println!("\nrule set per change ({} rules):", first.len());
    for r in &first {
        println!("  {}", r.iptables_argv().join(" "));
    }
    for w in &workers {
        let a = w
            .apply(&first)
            .unwrap_or_else(|e| panic!("{}: first install: {e}", w.name));
        println!("  first install, {}: {}", w.name, a.account);
    }
    core.done(RuleCounts {
        added: first.len(),
        ..RuleCounts::default()
    });

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    // Change → the kernel's announcement of its last nf_tables commit.
    let mut in_place: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    let mut commits: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); workers.len()];
    let mut accounts: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); workers.len()];
    let mut core_us = Vec::new();
    let mut last = first.clone();
    for i in 1..=changes {
        let (rules, took) = core.netmap(i + 1);
        core_us.push(took.as_secs_f64() * 1e6);
        assert_ne!(rules, last, "change {i} changes the rule set");
        for (k, w) in workers.iter().enumerate() {
            let a = w
                .apply(&rules)
                .unwrap_or_else(|e| panic!("{}: change {i}: {e}", w.name));
            samples[k].push(ms(a.returned));
            let (at, n) = a.commit.unwrap_or((a.returned, 0));
            in_place[k].push(ms(at));
            *commits[k].entry(n).or_default() += 1;
            *accounts[k].entry(a.account).or_default() += 1;
        }
        core.done(RuleCounts {
            kept: 3,
            added: 4,
            removed: 4,
        });
        last = rules;
    }

    // The end state: the last change's addresses in, the one before out.
    let n = changes + 1;
    let (now4, before4) = (
        format!("100.64.{}.{}", n / 256, n % 256),
        format!("100.64.{}.{}", (n - 1) / 256, (n - 1) % 256),
    );
    println!("\nend state (the last change's address in place, the previous one gone):");
    for w in &workers {
        let Ok(Answer::Dump(text)) = w.ask(Job::Dump) else {
            panic!("{}: dump", w.name)
        };
        let has_now = text.contains(&format!("{now4} ")) || text.contains(&format!("{now4}/"));
        let has_before =
            text.contains(&format!("{before4} ")) || text.contains(&format!("{before4}/"));
        let rules = text
            .lines()
            .filter(|l| l.starts_with("-A ") || l.contains("nat to") || l.contains("maxseg"))
            .count();
        println!(
            "  {}: current address {}, previous address {} ({} rule lines)",
            w.name,
            if has_now { "present" } else { "MISSING" },
            if has_before { "still present" } else { "gone" },
            rules
        );
    }

    println!(
        "\nnetmap change → rules in place, {changes} changes (ms; p95 by nearest rank).\n\
         in place: the kernel's announcement of the change's last nf_tables commit (NEWGEN);\n\
         for a subject with no nf_tables commit (the legacy flavour), when apply returned.\n\
         returned: when the subject's apply returned (its programs exited and were reaped)."
    );
    println!(
        "| subject | in place: median | p95 | max | returned: median | p95 | max | budget | verdict (in place / returned) |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for (k, w) in workers.iter().enumerate() {
        let (med, p95, _, max) = stats(&in_place[k]);
        let (rmed, rp95, _, rmax) = stats(&samples[k]);
        let (budget, verdict) = match w.budget {
            Some(b) => (
                format!("≤ {b} ms median"),
                format!(
                    "{} / {}",
                    if med <= b { "within" } else { "over" },
                    if rmed <= b { "within" } else { "over" }
                ),
            ),
            None => ("(reference)".to_string(), String::new()),
        };
        println!(
            "| {} | {med:.1} | {p95:.1} | {max:.1} | {rmed:.1} | {rp95:.1} | {rmax:.1} | {budget} | {verdict} |",
            w.name
        );
    }
    let (med, p95, min, max) = stats(&core_us);
    println!(
        "| core: ProxyState::on_netmap (µs) | {med:.1} µs | {p95:.1} µs | {min:.1} µs | {max:.1} µs | | |"
    );
    println!("\nwhat each subject did per change:");
    for (k, w) in workers.iter().enumerate() {
        for (what, count) in &accounts[k] {
            println!("  {}: {what} (×{count})", w.name);
        }
        for (n, count) in &commits[k] {
            println!("  {}: {n} nf_tables commit(s) announced (×{count})", w.name);
        }
    }

    // Where the time goes: each program alone.
    let (other, _) = {
        let mut c = Core::new();
        c.netmap(10_000)
    };
    println!("\nprofile: each program a subject runs per change, alone, {profile_reps} runs (ms)");
    for w in &workers {
        let Ok(Answer::Profile(rows)) = w.ask(Job::Profile(other.clone(), profile_reps)) else {
            panic!("{}: profile", w.name)
        };
        if rows.is_empty() {
            continue;
        }
        println!("  {}:", w.name);
        for (what, v) in rows {
            let (med, p95, min, _) = stats(&v);
            println!("    {what:68} median {med:6.2}  p95 {p95:6.2}  min {min:6.2}");
        }
    }
}
