//! The iptables backend (`TS_DEBUG_FIREWALL_MODE=iptables`, the default):
//! the proxy rules in chains of our own, reconciled per address family with
//! `iptables-save` and one `iptables-restore --noflush` transaction.
//!
//! **Ownership is structural.** Our rules live only in three chains of our
//! own, each entered by one jump from the base chain of its hook, inserted
//! at position 1 (as upstream inserts its DNAT, so it comes before Docker's
//! rules) and marked `-m comment --comment containerboot`:
//!
//! | table    | base chain    | our chain           | rules                 |
//! |----------|---------------|---------------------|-----------------------|
//! | `nat`    | `PREROUTING`  | `TS-CB-PREROUTING`  | DNAT (ingress/egress) |
//! | `nat`    | `POSTROUTING` | `TS-CB-POSTROUTING` | SNAT (egress)         |
//! | `mangle` | `FORWARD`     | `TS-CB-FORWARD`     | TCP MSS clamping      |
//!
//! Everything in those chains, and every rule anywhere that jumps to one of
//! them, is ours; nothing else is. A chain we do not own is never flushed
//! or altered, except for adding and deleting rules that jump to ours.
//!
//! **Reconciliation, per family** (`iptables*` for IPv4, `ip6tables*` for
//! IPv6): `iptables-save` (all tables, no `-t`: with `-t nat` the legacy
//! flavour would instantiate the table in the network namespace just to
//! read it, and reading must not change anything) is parsed for our chains,
//! their rules and the rules that jump to them, and compared with the
//! desired rules' [`Rule::iptables_spec`], which is written in
//! `iptables-save`'s normalised form (checked against the legacy and the
//! nf_tables flavours). Equal (same rules in the same order, exactly one
//! jump in each base chain in use, no other rule jumping to ours): nothing
//! is run. Otherwise one `iptables-restore --noflush` transaction for the
//! family declares each chain that differs (`:TS-CB-X - [0:0]`, which under
//! `--noflush` creates the chain or flushes it if it exists, in both
//! flavours) and writes it whole, deletes duplicate and stray jumps,
//! inserts a missing jump at position 1, and deletes (`-F`, `-X`) our
//! chains no longer in use together with their jumps. A jump found at
//! another position than 1 is left where it is: other programs (kube-proxy,
//! Docker) insert at 1 too, and moving it back would fight them forever.
//!
//! The two families are reconciled side by side (IPv6 on a thread of its
//! own) when both have work: their tables and programs are separate, so
//! one family's programs start and read while the other's run. (In the
//! nf_tables flavour most of a change's time is the kernel's: a program
//! that committed a transaction waits at exit for its release, an RCU
//! grace period, under the network namespace's commit lock, so the two
//! families' waits still come one after the other; BENCHMARKS.md.) A
//! failure in one family does not stop the other's transaction; the error
//! returned is IPv4's if both failed.
//!
//! A family with no desired rules is read only until it is seen to hold
//! nothing of ours, and never written then: a host without IPv6 or without
//! `ip6tables` works for IPv4 (a failed read of such a family counts as
//! nothing of ours). A family whose rules all went away loses its chains
//! and jumps.
//!
//! Counts cover the jumps as well as the rules: a rule or jump in place is
//! kept; a missing or altered one is added; a stale, altered or duplicated
//! one is removed (a chain rewritten only to restore the order of its
//! rules counts its rules as removed and added).
//!
//! The nf_tables flavour applies a transaction atomically; the legacy one
//! commits table by table, so a failure in `mangle` can leave `nat`
//! changed (the next reconciliation finishes the job). Shutdown leaves the
//! rules in place; a restart in the same network namespace finds them equal
//! and changes nothing.

use super::Backend;
use super::run::{self, Output};
use crate::children::Reaper;
use crate::machine::rules::{Family, Hook, NetfilterBackend, Rule, RuleCounts};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The comment on our jumps.
pub const COMMENT: &str = "containerboot";

/// How long `iptables-restore` waits for the xtables lock (legacy flavour),
/// in seconds, before failing.
const LOCK_WAIT_S: u32 = 10;

/// One chain of ours and where it hangs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OurChain {
    /// Its table.
    pub table: &'static str,
    /// The built-in chain that jumps to it.
    pub base: &'static str,
    /// Its name.
    pub name: &'static str,
    /// The hook of the rules it holds.
    pub hook: Hook,
}

/// Our chains, in the order transactions write them.
pub const CHAINS: [OurChain; 3] = [
    OurChain {
        table: "nat",
        base: "PREROUTING",
        name: "TS-CB-PREROUTING",
        hook: Hook::Prerouting,
    },
    OurChain {
        table: "nat",
        base: "POSTROUTING",
        name: "TS-CB-POSTROUTING",
        hook: Hook::Postrouting,
    },
    OurChain {
        table: "mangle",
        base: "FORWARD",
        name: "TS-CB-FORWARD",
        hook: Hook::Forward,
    },
];

impl OurChain {
    /// The jump's match and target, as `iptables-save` prints them.
    pub fn jump_spec(&self) -> Vec<String> {
        ["-m", "comment", "--comment", COMMENT, "-j", self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// The programs and kernel modules of one family.
struct Tools {
    /// "IPv4" / "IPv6".
    label: &'static str,
    save: &'static str,
    restore: &'static str,
    /// The modules the legacy flavour needs for our tables.
    modules: &'static str,
}

fn tools(family: Family, legacy: bool) -> Tools {
    match (family, legacy) {
        (Family::V4, false) => Tools {
            label: "IPv4",
            save: "iptables-save",
            restore: "iptables-restore",
            modules: "iptable_nat and iptable_mangle",
        },
        (Family::V6, false) => Tools {
            label: "IPv6",
            save: "ip6tables-save",
            restore: "ip6tables-restore",
            modules: "ip6table_nat and ip6table_mangle",
        },
        (Family::V4, true) => Tools {
            label: "IPv4",
            save: "iptables-legacy-save",
            restore: "iptables-legacy-restore",
            modules: "iptable_nat and iptable_mangle",
        },
        (Family::V6, true) => Tools {
            label: "IPv6",
            save: "ip6tables-legacy-save",
            restore: "ip6tables-legacy-restore",
            modules: "ip6table_nat and ip6table_mangle",
        },
    }
}

/// The iptables backend: the flavour found at start, and which families
/// are known to hold nothing of ours.
pub struct Iptables {
    reaper: Arc<Reaper>,
    /// Drive the `*-legacy-*` programs by name (`auto` found the host's
    /// rules in the legacy tables), not whatever `iptables` is.
    legacy: bool,
    version: String,
    /// Per family (V4, V6): read back and found empty of ours, with nothing
    /// written since.
    known_empty: [bool; 2],
}

impl Iptables {
    /// Finds the iptables flavour (`iptables --version`): the backend, or
    /// an error saying what to install.
    pub fn detect(reaper: Arc<Reaper>) -> Result<Iptables, String> {
        Iptables::detect_flavour(reaper, false)
    }

    /// As [`Iptables::detect`]; with `legacy`, the `iptables-legacy*`
    /// programs are driven by name.
    pub fn detect_flavour(reaper: Arc<Reaper>, legacy: bool) -> Result<Iptables, String> {
        let program = if legacy {
            "iptables-legacy"
        } else {
            "iptables"
        };
        let argv = [program, "--version"];
        let out = run::run(&reaper, &argv, None);
        let version = match out {
            Ok(o) if o.success() => o.stdout.lines().next().unwrap_or("").trim().to_string(),
            other => {
                return Err(failure(
                    "finding the iptables version",
                    &argv,
                    other,
                    Family::V4,
                ));
            }
        };
        Ok(Iptables {
            reaper,
            legacy,
            version: if version.is_empty() {
                "iptables (version unknown)".to_string()
            } else {
                version
            },
            known_empty: [false; 2],
        })
    }

    /// What `iptables --version` said, e.g. `iptables v1.8.9 (nf_tables)`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The tables of `family` as `iptables-save` prints them.
    fn save(&self, family: Family) -> Result<Saved, String> {
        let t = tools(family, self.legacy);
        let argv = [t.save];
        match run::run(&self.reaper, &argv, None) {
            Ok(o) if o.success() => Ok(parse_save(&o.stdout)),
            other => Err(failure(
                &format!("reading back the {} rules", t.label),
                &argv,
                other,
                family,
            )),
        }
    }

    /// Applies one transaction to `family`.
    fn restore(&self, family: Family, script: &str) -> Result<(), String> {
        let t = tools(family, self.legacy);
        let wait = format!("--wait={LOCK_WAIT_S}");
        let argv = [t.restore, "--noflush", wait.as_str()];
        log::debug!(
            "netfilter: {} --noflush, {} transaction:\n{script}",
            t.restore,
            t.label
        );
        match run::run(&self.reaper, &argv, Some(script)) {
            Ok(o) if o.success() => Ok(()),
            other => Err(failure(
                &format!("installing the {} rules", t.label),
                &argv,
                other,
                family,
            )),
        }
    }
}

impl Backend for Iptables {
    fn kind(&self) -> NetfilterBackend {
        NetfilterBackend::Iptables
    }

    fn reconcile(&mut self, desired: &[Rule]) -> Result<RuleCounts, String> {
        let want = |family: Family| -> Vec<Rule> {
            desired
                .iter()
                .filter(|r| r.family() == family)
                .cloned()
                .collect()
        };
        let (v4, v6) = (want(Family::V4), want(Family::V6));
        let skip = |w: &[Rule], i: usize| w.is_empty() && self.known_empty[i];
        // The families are independent (tables and programs of their own):
        // when both have work, IPv6 runs on a thread of its own beside
        // IPv4 (see the module's documentation).
        let this = &*self;
        let (r4, r6) = if skip(&v4, 0) || skip(&v6, 1) {
            (
                this.reconcile_family(Family::V4, &v4),
                this.reconcile_family(Family::V6, &v6),
            )
        } else {
            std::thread::scope(|s| {
                let r6 = s.spawn(|| this.reconcile_family(Family::V6, &v6));
                let r4 = this.reconcile_family(Family::V4, &v4);
                let r6 = r6
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (r4, r6)
            })
        };
        let mut total = RuleCounts::default();
        let mut first_error = None;
        for (i, (known_empty, result)) in [r4, r6].into_iter().enumerate() {
            if let Some(known_empty) = known_empty {
                self.known_empty[i] = known_empty;
            }
            match result {
                Ok(c) => {
                    total.kept += c.kept;
                    total.added += c.added;
                    total.removed += c.removed;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

impl Iptables {
    /// Reconciles one family with `want`, its desired rules: what it
    /// found and changed, and what is now known of its being empty of
    /// ours (`None`: unchanged).
    fn reconcile_family(
        &self,
        family: Family,
        want: &[Rule],
    ) -> (Option<bool>, Result<RuleCounts, String>) {
        let i = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        if want.is_empty() && self.known_empty[i] {
            return (None, Ok(RuleCounts::default()));
        }
        let saved = match self.save(family) {
            Ok(saved) => saved,
            Err(e) if want.is_empty() => {
                log::debug!("netfilter: taking it that no rules of ours are there: {e}");
                return (Some(true), Ok(RuleCounts::default()));
            }
            Err(e) => return (None, Err(e)),
        };
        let plan = plan(want, &saved);
        if let Some(script) = &plan.script
            && let Err(e) = self.restore(family, script)
        {
            return (Some(false), Err(e));
        }
        (Some(want.is_empty()), Ok(plan.counts))
    }
}

/// The error for a failed run of `argv`: the backend, the operation, the
/// program's error and the fix.
fn failure(operation: &str, argv: &[&str], out: Result<Output, String>, family: Family) -> String {
    let command = argv.join(" ");
    let (what, stderr) = match out {
        // Only a program that is not there fails to start with ENOENT.
        Err(e) if e.contains("(os error 2)") => {
            return format!(
                "netfilter: iptables backend: {operation}: {} is not on PATH ({e}); fix: {}",
                argv[0],
                fix_missing(argv[0])
            );
        }
        Err(e) => (e, String::new()),
        Ok(o) => (format!("{command} failed ({})", o.status), o.stderr),
    };
    let stderr = stderr.trim();
    let said = if stderr.is_empty() {
        String::new()
    } else {
        // Without the usage hint iptables-restore adds to every error.
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("Try `") && !l.trim().is_empty())
            .collect();
        format!(": {}", lines.join(" / "))
    };
    format!(
        "netfilter: iptables backend: {operation}: {what}{said}; fix: {}",
        fix_for(stderr, family, lacks_net_admin())
    )
}

fn fix_missing(program: &str) -> String {
    format!(
        "install iptables, which provides {program} (Debian/Ubuntu: apt-get install iptables; \
         Alpine: apk add iptables ip6tables), or set TS_DEBUG_FIREWALL_MODE=nftables"
    )
}

const FIX_NET_ADMIN: &str = "give the container the NET_ADMIN capability (docker/podman run \
     --cap-add=NET_ADMIN; Kubernetes: securityContext.capabilities.add: [\"NET_ADMIN\"])";

/// What to do about a failure whose program printed `stderr`.
/// `no_net_admin`: containerboot lacks CAP_NET_ADMIN itself.
fn fix_for(stderr: &str, family: Family, no_net_admin: bool) -> String {
    let has = |s: &str| stderr.contains(s);
    if has("xtables lock") || has("xtables.lock") {
        return if has("holding the xtables lock") {
            format!(
                "another program (kube-proxy, Docker, a firewall daemon) held the xtables lock for more than {LOCK_WAIT_S} s; find it, or start again"
            )
        } else {
            "make the xtables lock file writable: mount a writable /run (an emptyDir in Kubernetes) or set XTABLES_LOCKFILE to a writable path".to_string()
        };
    }
    if has("Permission denied") || has("Operation not permitted") || has("you must be root") {
        return FIX_NET_ADMIN.to_string();
    }
    let module = [
        "do you need to insmod",
        "does not exist",
        "unable to initialize table",
        "missing kernel module",
        "Couldn't load",
        "not supported",
        "No chain/target/match by that name",
    ]
    .iter()
    .any(|s| has(s));
    // The legacy flavour says "unable to initialize table" both for a
    // missing module and for a missing capability.
    if no_net_admin {
        return FIX_NET_ADMIN.to_string();
    }
    if module {
        return format!(
            "load the kernel modules the rules need on the host (modprobe {} xt_comment xt_TCPMSS; nf_tables flavour: nft_chain_nat and nft_compat), or set TS_DEBUG_FIREWALL_MODE=nftables",
            tools(family, false).modules
        );
    }
    "see the program's message; if the kernel lacks iptables NAT support, set TS_DEBUG_FIREWALL_MODE=nftables".to_string()
}

/// Whether this process lacks CAP_NET_ADMIN (bit 12 of `CapEff`); `false`
/// when that cannot be told.
fn lacks_net_admin() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) == 0)
}

/// A rule as `iptables-save` printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRule {
    /// The chain it is in.
    pub chain: String,
    /// Its match and target, split into words (quotes removed).
    pub spec: Vec<String>,
    /// Its match and target as printed, for `-D <chain> <text>`.
    pub text: String,
}

impl SavedRule {
    /// The chain it jumps (`-j`) or goes (`-g`) to, if any.
    pub fn target(&self) -> Option<&str> {
        let at = self.spec.iter().rposition(|w| w == "-j" || w == "-g")?;
        self.spec.get(at + 1).map(String::as_str)
    }
}

/// One table as `iptables-save` printed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Every chain declared, built-in or not.
    pub chains: Vec<String>,
    /// Every rule, in order.
    pub rules: Vec<SavedRule>,
}

/// The tables of one family, by name.
pub type Saved = BTreeMap<String, SavedTable>;

/// Reads `iptables-save` output; lines it does not know are skipped.
pub fn parse_save(text: &str) -> Saved {
    let mut saved = Saved::new();
    let mut table: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            table = Some(name.trim().to_string());
            saved.entry(name.trim().to_string()).or_default();
            continue;
        }
        if line == "COMMIT" {
            table = None;
            continue;
        }
        let Some(t) = table.as_ref().and_then(|t| saved.get_mut(t)) else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                t.chains.push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let rest = rest.trim_start();
            let (chain, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let text = text.trim().to_string();
            t.rules.push(SavedRule {
                chain: chain.to_string(),
                spec: words(&text),
                text,
            });
        }
    }
    saved
}

/// Splits a rule as `iptables-save` quotes it: words separated by spaces,
/// `"…"` one word, `\` escaping the next character inside quotes.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

/// What one family needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// How the rules found compare with the desired ones.
    pub counts: RuleCounts,
    /// The `iptables-restore --noflush` input; `None`: nothing to change.
    pub script: Option<String>,
}

/// The commands for one table, in the order they must run.
#[derive(Default)]
struct TableEdit {
    declare: Vec<String>,
    delete: Vec<String>,
    append: Vec<String>,
    flush: Vec<String>,
    drop: Vec<String>,
    insert: Vec<String>,
}

impl TableEdit {
    fn is_empty(&self) -> bool {
        self.declare.is_empty()
            && self.delete.is_empty()
            && self.append.is_empty()
            && self.flush.is_empty()
            && self.drop.is_empty()
            && self.insert.is_empty()
    }
}

/// How many of `want` are in `have`, each counted once.
fn common(want: &[Vec<String>], have: &[&Vec<String>]) -> usize {
    let mut left: Vec<&Vec<String>> = have.to_vec();
    want.iter()
        .filter(|w| {
            left.iter()
                .position(|h| h == w)
                .map(|i| left.swap_remove(i))
                .is_some()
        })
        .count()
}

/// Compares the rules of one family found (`saved`) with `desired` (all of
/// that family, in order) and writes the transaction that makes them equal.
pub fn plan(desired: &[Rule], saved: &Saved) -> Plan {
    let mut counts = RuleCounts::default();
    let mut edits: BTreeMap<&str, TableEdit> = BTreeMap::new();
    let ours = |chain: &str| CHAINS.iter().any(|c| c.name == chain);
    for chain in &CHAINS {
        let want: Vec<Vec<String>> = desired
            .iter()
            .filter(|r| r.hook() == chain.hook)
            .map(Rule::iptables_spec)
            .collect();
        let empty = SavedTable::default();
        let table = saved.get(chain.table).unwrap_or(&empty);
        let exists = table.chains.iter().any(|c| c == chain.name);
        let have: Vec<&Vec<String>> = table
            .rules
            .iter()
            .filter(|r| r.chain == chain.name)
            .map(|r| &r.spec)
            .collect();
        let jump = chain.jump_spec();
        // Rules of chains not ours that lead to this chain: our jumps, and
        // anything else (altered or stray jumps), which goes.
        let (jumps, stray): (Vec<&SavedRule>, Vec<&SavedRule>) = table
            .rules
            .iter()
            .filter(|r| !ours(&r.chain) && r.target() == Some(chain.name))
            .partition(|r| r.chain == chain.base && r.spec == jump);
        let edit = edits.entry(chain.table).or_default();
        let delete = |edit: &mut TableEdit, r: &SavedRule| {
            edit.delete.push(format!("-D {} {}", r.chain, r.text));
        };
        for r in &stray {
            delete(edit, r);
            counts.removed += 1;
        }
        if want.is_empty() {
            for r in &jumps {
                delete(edit, r);
                counts.removed += 1;
            }
            if exists {
                counts.removed += have.len();
                edit.flush.push(format!("-F {}", chain.name));
                edit.drop.push(format!("-X {}", chain.name));
            }
            continue;
        }
        let same =
            exists && have.len() == want.len() && have.iter().zip(&want).all(|(h, w)| *h == w);
        if same {
            counts.kept += want.len();
        } else {
            let mut kept = common(&want, &have);
            if kept == want.len() && kept == have.len() {
                // Only the order differs: every rule is written again.
                kept = 0;
            }
            counts.kept += kept;
            counts.added += want.len() - kept;
            counts.removed += have.len() - kept;
            edit.declare.push(format!(":{} - [0:0]", chain.name));
            for w in &want {
                edit.append
                    .push(format!("-A {} {}", chain.name, w.join(" ")));
            }
        }
        let insert = format!("-I {} 1 {}", chain.base, jump.join(" "));
        match jumps.len() {
            0 => {
                edit.insert.push(insert);
                counts.added += 1;
            }
            1 => counts.kept += 1,
            n => {
                // All go and one comes back at the top.
                for r in &jumps {
                    delete(edit, r);
                }
                edit.insert.push(insert);
                counts.kept += 1;
                counts.removed += n - 1;
            }
        }
    }
    let mut script = String::new();
    for table in ["nat", "mangle"] {
        let Some(edit) = edits.get(table).filter(|e| !e.is_empty()) else {
            continue;
        };
        script.push_str(&format!("*{table}\n"));
        for line in edit
            .declare
            .iter()
            .chain(&edit.delete)
            .chain(&edit.append)
            .chain(&edit.flush)
            .chain(&edit.drop)
            .chain(&edit.insert)
        {
            script.push_str(line);
            script.push('\n');
        }
        script.push_str("COMMIT\n");
    }
    Plan {
        counts,
        script: (!script.is_empty()).then_some(script),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Ingress to 10.1.2.3 and egress to 100.99.99.99 for 100.64.0.1.
    fn desired_v4() -> Vec<Rule> {
        crate::machine::rules::rule_set([
            Rule::DnatIngress {
                local: ip("100.64.0.1"),
                destination: ip("10.1.2.3"),
            },
            Rule::ClampMss {
                destination: ip("10.1.2.3"),
            },
            Rule::DnatNonTailscale {
                destination: ip("100.99.99.99"),
            },
            Rule::SnatForDestination {
                local: ip("100.64.0.1"),
                destination: ip("100.99.99.99"),
            },
        ])
    }

    /// What iptables-nft-save v1.8.9 printed once `desired_v4` was in
    /// place, with a foreign rule before our jump.
    const INSTALLED_V4: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Tue Dec  1 13:01:14 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:TS-CB-POSTROUTING - [0:0]
:TS-CB-PREROUTING - [0:0]
-A PREROUTING -p tcp -m tcp --dport 8080 -m comment --comment \"someone \\\"else\\\"\" -j REDIRECT --to-ports 80
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING
-A TS-CB-POSTROUTING -d 100.99.99.99/32 -j SNAT --to-source 100.64.0.1
-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.1.2.3
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.99.99.99
COMMIT
# Completed on Tue Dec  1 13:01:14 2026
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Tue Dec  1 13:01:14 2026
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:TS-CB-FORWARD - [0:0]
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
COMMIT
# Completed on Tue Dec  1 13:01:14 2026
";

    fn counts(kept: usize, added: usize, removed: usize) -> RuleCounts {
        RuleCounts {
            kept,
            added,
            removed,
        }
    }

    #[test]
    fn parses_quoted_words() {
        let saved = parse_save(INSTALLED_V4);
        let nat = &saved["nat"];
        assert_eq!(nat.chains.len(), 6);
        assert_eq!(
            nat.rules[0].spec[8..11],
            ["--comment", "someone \"else\"", "-j"]
        );
        assert_eq!(nat.rules[0].target(), Some("REDIRECT"));
        assert_eq!(nat.rules[1].target(), Some("TS-CB-PREROUTING"));
        assert_eq!(
            nat.rules[1].text,
            "-m comment --comment containerboot -j TS-CB-PREROUTING"
        );
        assert_eq!(saved["mangle"].rules.len(), 2);
    }

    #[test]
    fn nothing_installed_writes_everything() {
        let p = plan(&desired_v4(), &Saved::new());
        assert_eq!(p.counts, counts(0, 7, 0));
        assert_eq!(
            p.script.unwrap(),
            "\
*nat
:TS-CB-PREROUTING - [0:0]
:TS-CB-POSTROUTING - [0:0]
-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.1.2.3
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.99.99.99
-A TS-CB-POSTROUTING -d 100.99.99.99/32 -j SNAT --to-source 100.64.0.1
-I PREROUTING 1 -m comment --comment containerboot -j TS-CB-PREROUTING
-I POSTROUTING 1 -m comment --comment containerboot -j TS-CB-POSTROUTING
COMMIT
*mangle
:TS-CB-FORWARD - [0:0]
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
-I FORWARD 1 -m comment --comment containerboot -j TS-CB-FORWARD
COMMIT
"
        );
    }

    #[test]
    fn equal_changes_nothing() {
        let p = plan(&desired_v4(), &parse_save(INSTALLED_V4));
        assert_eq!(
            p,
            Plan {
                counts: counts(7, 0, 0),
                script: None
            }
        );
    }

    #[test]
    fn a_changed_rule_rewrites_its_chain_only() {
        let text = INSTALLED_V4.replace("--to-destination 10.1.2.3", "--to-destination 10.9.9.9");
        let p = plan(&desired_v4(), &parse_save(&text));
        assert_eq!(p.counts, counts(6, 1, 1));
        assert_eq!(
            p.script.unwrap(),
            "\
*nat
:TS-CB-PREROUTING - [0:0]
-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.1.2.3
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.99.99.99
COMMIT
"
        );
    }

    #[test]
    fn reordered_rules_are_written_again() {
        let text = INSTALLED_V4.replace(
            "-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.1.2.3\n-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.99.99.99\n",
            "-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination 100.99.99.99\n-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.1.2.3\n",
        );
        assert_ne!(text, INSTALLED_V4);
        let p = plan(&desired_v4(), &parse_save(&text));
        assert_eq!(p.counts, counts(5, 2, 2));
        assert!(p.script.unwrap().contains(":TS-CB-PREROUTING - [0:0]"));
    }

    #[test]
    fn duplicate_and_stray_jumps_go_missing_jump_comes() {
        let text = INSTALLED_V4
            .replace(
                "-A POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING\n",
                "",
            )
            .replace(
                "-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD\n",
                "-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD\n\
                 -A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD\n\
                 -A FORWARD -j TS-CB-FORWARD\n",
            );
        let p = plan(&desired_v4(), &parse_save(&text));
        // POSTROUTING's jump added; one duplicate and one stray removed.
        assert_eq!(p.counts, counts(6, 1, 2));
        assert_eq!(
            p.script.unwrap(),
            "\
*nat
-I POSTROUTING 1 -m comment --comment containerboot -j TS-CB-POSTROUTING
COMMIT
*mangle
-D FORWARD -j TS-CB-FORWARD
-D FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-D FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-I FORWARD 1 -m comment --comment containerboot -j TS-CB-FORWARD
COMMIT
"
        );
    }

    #[test]
    fn unused_chains_go_with_their_jumps() {
        // Ingress only: no SNAT, so TS-CB-POSTROUTING goes; the egress DNAT
        // is stale.
        let desired: Vec<Rule> = desired_v4()
            .into_iter()
            .filter(|r| matches!(r, Rule::DnatIngress { .. } | Rule::ClampMss { .. }))
            .collect();
        let p = plan(&desired, &parse_save(INSTALLED_V4));
        assert_eq!(p.counts, counts(4, 0, 3));
        assert_eq!(
            p.script.unwrap(),
            "\
*nat
:TS-CB-PREROUTING - [0:0]
-D POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING
-A TS-CB-PREROUTING -d 100.64.0.1/32 -j DNAT --to-destination 10.1.2.3
-F TS-CB-POSTROUTING
-X TS-CB-POSTROUTING
COMMIT
"
        );
    }

    #[test]
    fn no_rules_wanted_removes_all_of_ours_and_nothing_else() {
        let p = plan(&[], &parse_save(INSTALLED_V4));
        assert_eq!(p.counts, counts(0, 0, 7));
        let script = p.script.unwrap();
        assert!(!script.contains("REDIRECT"), "{script}");
        assert!(
            !script.lines().any(|l| l.starts_with(':')),
            "nothing declared: {script}"
        );
        for chain in CHAINS {
            assert!(script.contains(&format!("-X {}\n", chain.name)), "{script}");
        }
    }

    #[test]
    fn no_rules_wanted_and_none_there_is_untouched() {
        let foreign = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j RETURN\nCOMMIT\n";
        assert_eq!(
            plan(&[], &parse_save(foreign)),
            Plan {
                counts: counts(0, 0, 0),
                script: None
            }
        );
    }

    #[test]
    fn ipv6_specs_match_ip6tables_save() {
        // What ip6tables-nft-save and ip6tables-legacy-save v1.8.9 printed.
        let text = "\
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:TS-CB-POSTROUTING - [0:0]
:TS-CB-PREROUTING - [0:0]
-A PREROUTING -m comment --comment containerboot -j TS-CB-PREROUTING
-A POSTROUTING -m comment --comment containerboot -j TS-CB-POSTROUTING
-A TS-CB-POSTROUTING -d fd7a:115c:a1e0::9/128 -j SNAT --to-source fd7a:115c:a1e0::1
-A TS-CB-PREROUTING -d fd7a:115c:a1e0::1/128 -j DNAT --to-destination fd00::4
-A TS-CB-PREROUTING ! -i tailscale0 -j DNAT --to-destination fd7a:115c:a1e0::9
COMMIT
*mangle
:FORWARD ACCEPT [0:0]
:TS-CB-FORWARD - [0:0]
-A FORWARD -m comment --comment containerboot -j TS-CB-FORWARD
-A TS-CB-FORWARD -o tailscale0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
COMMIT
";
        let ours = [
            "100.64.0.1/32".parse().unwrap(),
            "fd7a:115c:a1e0::1/128".parse().unwrap(),
        ];
        let mut rules = crate::machine::rules::ingress(ip("fd00::4"), &ours).unwrap();
        rules.extend(crate::machine::rules::egress(ip("fd7a:115c:a1e0::9"), &ours).unwrap());
        let p = plan(&crate::machine::rules::rule_set(rules), &parse_save(text));
        assert_eq!(p.counts, counts(7, 0, 0));
        assert_eq!(p.script, None);
    }

    #[test]
    fn errors_name_the_fix() {
        let v4 = Family::V4;
        assert!(
            fix_for(
                "iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)",
                v4,
                false
            )
            .contains("--cap-add=NET_ADMIN")
        );
        let legacy = "iptables-save v1.8.9 (legacy): Cannot initialize: Table does not exist (do you need to insmod?)";
        assert!(fix_for(legacy, v4, false).contains("modprobe iptable_nat and iptable_mangle"));
        assert!(fix_for(legacy, Family::V6, false).contains("ip6table_nat"));
        // Legacy without the capability says the same as without a module.
        let init =
            "iptables-restore v1.8.9 (legacy): iptables-restore: unable to initialize table 'nat'";
        assert!(fix_for(init, v4, true).contains("NET_ADMIN"));
        assert!(fix_for(init, v4, false).contains("modprobe"));
        assert!(
            fix_for(
                "Another app is currently holding the xtables lock. Stopped waiting after 10s.",
                v4,
                false
            )
            .contains("held the xtables lock")
        );
        let missing = failure(
            "installing the IPv4 rules",
            &["iptables-restore", "--noflush"],
            Err("starting iptables-restore: No such file or directory (os error 2)".into()),
            v4,
        );
        assert!(
            missing.contains("iptables-restore is not on PATH"),
            "{missing}"
        );
        assert!(
            missing.contains("TS_DEBUG_FIREWALL_MODE=nftables"),
            "{missing}"
        );
    }
}
