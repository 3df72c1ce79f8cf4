//! The netfilter executor: makes the installed proxy rules of ours equal
//! the rule set the core asks for, and says what it found and changed.
//!
//! Backends: `fake.rs` (`TS_TEST_FAKE_NETFILTER=true`: an in-memory rule
//! set, each change logged as the iptables command it stands for),
//! `iptables.rs` (chains of our own, `iptables-restore --noflush`),
//! `nftables.rs` (tables of our own, through `nft -j`). The
//! kernel backends run their programs through the one reaper (`run.rs`),
//! off the shell's thread.

pub mod auto;
pub mod fake;
pub mod iptables;
pub mod nftables;
pub mod run;

use crate::children::Reaper;
use crate::machine::rules::{NetfilterBackend, Rule, RuleCounts};
use crate::machine::{Event, ReconcileOutcome};
use smol::channel::Sender;
use std::sync::{Arc, Mutex};

/// A way of putting rules in place.
pub trait Backend: Send {
    /// Which backend this is.
    fn kind(&self) -> NetfilterBackend;
    /// Reads back the installed rules of ours and makes them equal
    /// `desired`, touching nothing that is not ours: one transaction per
    /// address family. The error names the backend, the operation, the
    /// kernel's or the program's error, and the fix.
    fn reconcile(&mut self, desired: &[Rule]) -> Result<RuleCounts, String>;
}

/// A kernel backend, once chosen, and why it was.
type Chosen = Arc<Mutex<Option<(Box<dyn Backend>, String)>>>;

/// The executor: the fake rule set, or a kernel backend chosen on first use.
pub struct Netfilter {
    tx: Sender<Event>,
    reaper: Arc<Reaper>,
    fake: fake::FakeRules,
    kernel: Chosen,
}

impl Netfilter {
    /// An executor reporting on `tx`, running programs through `reaper`.
    pub fn new(tx: Sender<Event>, reaper: Arc<Reaper>) -> Self {
        Netfilter {
            tx,
            reaper,
            fake: fake::FakeRules::default(),
            kernel: Arc::new(Mutex::new(None)),
        }
    }

    /// Reconciles `rules` with `backend`; the answer comes back as
    /// `RulesReconciled`.
    pub fn reconcile(&mut self, backend: NetfilterBackend, rules: Vec<Rule>) {
        if backend == NetfilterBackend::Fake {
            let counts = self.fake.reconcile(&rules);
            let _ = self.tx.try_send(Event::RulesReconciled {
                outcome: ReconcileOutcome::Done {
                    backend,
                    why: "TS_TEST_FAKE_NETFILTER=true: nothing is installed".into(),
                    counts,
                },
            });
            return;
        }
        let tx = self.tx.clone();
        let kernel = self.kernel.clone();
        let reaper = self.reaper.clone();
        smol::spawn(async move {
            let outcome = smol::unblock(move || {
                let mut kernel = kernel.lock().unwrap_or_else(|e| e.into_inner());
                if kernel.is_none() {
                    match choose(backend, &reaper) {
                        Ok(chosen) => *kernel = Some(chosen),
                        Err(error) => return ReconcileOutcome::Failed { error },
                    }
                }
                let Some((b, why)) = kernel.as_mut() else {
                    unreachable!("chosen above")
                };
                // A panic in a backend must still answer, or the proxy
                // would wait for this reconciliation forever.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.reconcile(&rules)))
                        .unwrap_or_else(|_| {
                            Err(format!(
                                "netfilter: internal error: the {} backend panicked",
                                b.kind()
                            ))
                        });
                match result {
                    Ok(counts) => ReconcileOutcome::Done {
                        backend: b.kind(),
                        why: why.clone(),
                        counts,
                    },
                    Err(error) => ReconcileOutcome::Failed { error },
                }
            })
            .await;
            let _ = tx.send(Event::RulesReconciled { outcome }).await;
        })
        .detach();
    }
}

/// The kernel backend for `backend` (resolving `Auto`), and why.
fn choose(
    backend: NetfilterBackend,
    reaper: &Arc<Reaper>,
) -> Result<(Box<dyn Backend>, String), String> {
    match backend {
        NetfilterBackend::Iptables => {
            let b = iptables::Iptables::detect(reaper.clone())?;
            let why = format!(
                "TS_DEBUG_FIREWALL_MODE=iptables (the default); {}",
                b.version()
            );
            Ok((Box::new(b), why))
        }
        NetfilterBackend::Nftables => {
            let b = nftables::Nftables::new(reaper.clone())?;
            let why = format!("TS_DEBUG_FIREWALL_MODE=nftables; {}", b.version());
            Ok((Box::new(b), why))
        }
        NetfilterBackend::Auto => {
            let (choice, why) = auto::decide(&auto::census(reaper));
            let b: Box<dyn Backend> = match choice {
                auto::Choice::Nftables => Box::new(nftables::Nftables::new(reaper.clone())?),
                auto::Choice::Iptables => Box::new(iptables::Iptables::detect(reaper.clone())?),
                auto::Choice::IptablesLegacy => {
                    Box::new(iptables::Iptables::detect_flavour(reaper.clone(), true)?)
                }
            };
            Ok((b, why))
        }
        NetfilterBackend::Fake => {
            Err("internal error: the fake backend is not a kernel backend".into())
        }
    }
}
