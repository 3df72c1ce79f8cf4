//! A model-based random walk of the core: arbitrary event sequences at
//! arbitrary times, on several configurations, checking after every step
//! what must always hold. Seeded, so a failure replays: the message names
//! the seed and the steps.
//!
//! - no panic;
//! - the invariants of [`Model`] (`machine/model.rs`, shared with the
//!   model-based fuzz target): at most one `Exit`, and only once tailscaled
//!   is not running; never two CLI runs at once; in Shutdown with nothing
//!   left running, exited; once tailscaled is gone, the walk played out
//!   (timers fired, calls answered) ends in an exit.

use super::harness::*;
use crate::machine::model::Model;

/// xorshift64*: small, deterministic, good enough to pick events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const CONFIGS: &[&[(&str, &str)]] = &[
    &[],
    &[("TS_AUTH_ONCE", "true"), ("TS_AUTHKEY", "tskey-walk")],
    &[IN_KUBE],
    &[IN_KUBE, ("TS_AUTH_ONCE", "true")],
    &[
        ("TS_USERSPACE", "false"),
        ("TS_DEST_IP", "10.1.2.3"),
        ("TS_FIREWALL_RECHECK", "5s"),
    ],
    &[
        ("TS_USERSPACE", "false"),
        ("TS_TAILNET_TARGET_FQDN", "peer.tailnet.ts.net"),
        ("TS_TEST_FAKE_NETFILTER", "true"),
    ],
];

/// An event that moves a boot forward (most of the time), so walks get
/// as far as Running and beyond before the random ones end them.
fn guided_event(
    rng: &mut Rng,
    watch: u64,
    cli: Option<Cli>,
    last_kube: &Option<KubeCall>,
) -> Event {
    match rng.below(9) {
        0 => Event::Start,
        1 => Event::KernelPrepared,
        2 => Event::SocketReady,
        3 => Event::BusOpened { watch },
        4 => bus(watch, Some(IpnState::NeedsLogin), None),
        5 => match cli {
            Some(cli) => ok(cli),
            None => Event::SocketReady,
        },
        6 => {
            let mut nm = netmap(&["100.64.0.1/32", "fd7a::1/128"]);
            nm.matching_peers.push(Node {
                id: 0,
                stable_id: "nPEER".into(),
                name: "peer.tailnet.ts.net.".into(),
                addresses: vec!["100.64.0.9/32".parse().unwrap()],
            });
            bus(watch, Some(IpnState::Running), Some(nm))
        }
        7 => Event::RulesReconciled {
            outcome: ReconcileOutcome::Done {
                backend: NetfilterBackend::Iptables,
                why: "walk".into(),
                counts: RuleCounts::default(),
            },
        },
        _ => match last_kube {
            Some(call) => {
                let reply = match call {
                    KubeCall::Connect { .. } => KubeReply::Connected {
                        namespace: "ns".into(),
                        server: "https://10.96.0.1:443".into(),
                    },
                    KubeCall::CheckPermission { .. } => KubeReply::Allowed { allowed: true },
                    KubeCall::ReadAuthKey | KubeCall::ProbeSecret => {
                        KubeReply::Secret { authkey: None }
                    }
                    _ => KubeReply::Done,
                };
                Event::Kube {
                    call: call.clone(),
                    reply,
                }
            }
            None => Event::Start,
        },
    }
}

fn random_event(rng: &mut Rng, last_kube: &Option<KubeCall>) -> Event {
    let watch = 1 + rng.below(6);
    let states = [
        IpnState::NeedsLogin,
        IpnState::NeedsMachineAuth,
        IpnState::Starting,
        IpnState::Running,
        IpnState::Stopped,
    ];
    let exits = [
        ProcessExit::Code(0),
        ProcessExit::Code(3),
        ProcessExit::Signal(9),
        ProcessExit::Signal(15),
    ];
    let clis = [Cli::Up, Cli::Set];
    match rng.below(20) {
        0 => Event::Start,
        1 => Event::KernelPrepared,
        2 => Event::SocketReady,
        3 => Event::BusOpened { watch },
        4 => Event::BusEnded { watch },
        5 => Event::BusFailed {
            watch,
            error: "connection reset".into(),
        },
        6 | 7 => {
            let choices: [&[&str]; 3] =
                [&["100.64.0.1/32", "fd7a::1/128"], &["100.64.0.2/32"], &[]];
            let addrs: &&[&str] = rng.pick(&choices);
            let mut nm = netmap(addrs);
            if rng.below(2) == 0 {
                nm.matching_peers.push(Node {
                    id: 0,
                    stable_id: "nPEER".into(),
                    name: "peer.tailnet.ts.net.".into(),
                    addresses: vec!["100.64.0.9/32".parse().unwrap()],
                });
            }
            let state = (rng.below(3) > 0).then(|| *rng.pick(&states));
            bus(watch, state, (rng.below(2) == 0).then_some(nm))
        }
        8 => Event::CliFinished {
            cli: *rng.pick(&clis),
            outcome: CliOutcome::Exited {
                status: *rng.pick(&[ProcessExit::Code(0), ProcessExit::Code(1)]),
                stderr: String::new(),
            },
        },
        9 => Event::TailscaledExited {
            status: *rng.pick(&exits),
        },
        10 => Event::Signal {
            signal: *rng.pick(&[Sig::Term, Sig::Int, Sig::Usr1, Sig::Usr2, Sig::Hup]),
        },
        11..=13 => Event::DeadlineExpired,
        14 => Event::TraceDumped {
            path: "/t".into(),
            steps: 1,
            error: None,
        },
        15 => Event::RulesReconciled {
            outcome: if rng.below(3) == 0 {
                ReconcileOutcome::Failed {
                    error: "netfilter: failed".into(),
                }
            } else {
                ReconcileOutcome::Done {
                    backend: NetfilterBackend::Iptables,
                    why: "walk".into(),
                    counts: RuleCounts::default(),
                }
            },
        },
        16 | 17 => {
            // A reply to the call in flight, or to something else.
            let call = match last_kube {
                Some(c) if rng.below(4) > 0 => c.clone(),
                _ => KubeCall::ReadAuthKey,
            };
            let reply = match rng.below(6) {
                0 => KubeReply::Allowed { allowed: true },
                1 => KubeReply::Allowed { allowed: false },
                2 => KubeReply::Done,
                3 => KubeReply::Failed {
                    kind: FailureKind::Transient,
                    error: "503".into(),
                },
                4 => KubeReply::Connected {
                    namespace: "ns".into(),
                    server: "https://10.96.0.1:443".into(),
                },
                _ => KubeReply::Secret { authkey: None },
            };
            Event::Kube { call, reply }
        }
        18 => Event::TailscaledSpawnFailed {
            error: "not found".into(),
        },
        _ => Event::SymlinkFailed {
            error: "read-only".into(),
        },
    }
}

#[test]
fn random_walks_keep_the_invariants() {
    // How far the walks got, so the test is seen not to be vacuous.
    let (mut running, mut exits, mut shutdowns) = (0, 0, 0);
    for seed in 1..=3000u64 {
        let config = CONFIGS[(seed % CONFIGS.len() as u64) as usize];
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut r = Run::new(config);
        let mut world = Model::default();
        let mut log = Vec::new();
        let mut was_running = false;
        for _ in 0..120 {
            let event = if rng.below(10) < 8 {
                guided_event(&mut rng, world.watch, world.cli_running, &world.last_kube)
            } else {
                random_event(&mut rng, &world.last_kube)
            };
            if !world.could_send(&event) {
                continue;
            }
            let step = if event == Event::DeadlineExpired {
                match r.m.next_deadline() {
                    Some(_) => r.advance_to_next_deadline(),
                    None => continue,
                }
            } else {
                r.step(event.clone())
            };
            log.push(format!("{event:?} -> {:?}", effects(&step)));
            if let Err(what) = world.observe(&event, &step, r.m.state()) {
                panic!("seed {seed}, config {config:?}: {what}\n{}", log.join("\n"));
            }
            was_running |= matches!(r.m.state(), State::Running { .. });
            if matches!(r.m.state(), State::Shutdown { .. }) {
                shutdowns += 1;
            }
            if world.exited {
                exits += 1;
                break;
            }
        }
        if let Err(what) = world.drive_to_exit(&mut r.m, &mut r.now, 200) {
            panic!("seed {seed}, config {config:?}: {what}\n{}", log.join("\n"));
        }
        if was_running {
            running += 1;
        }
    }
    assert!(
        running > 100 && exits > 500 && shutdowns > 1000,
        "running {running}, exits {exits}, shutdown steps {shutdowns}"
    );
}
