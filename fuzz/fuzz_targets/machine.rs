//! A model-based fuzz of the core: arbitrary sequences of events at
//! arbitrary times into `Machine::handle`, on several configurations, each
//! step checked by the invariants of `machine::model` (shared with the
//! random walk of the core's tests): no panic; at most one `Exit`, and
//! only once tailscaled is not running and no CLI run is left; never two
//! CLI runs at once; in Shutdown with nothing left, exited. At the end,
//! the world is played out (timers fire, calls are answered, a SIGKILLed
//! tailscaled dies): once tailscaled is gone, or after a termination
//! signal, the machine must exit. Then the same once more after a SIGTERM.
//!
//! Input: byte 0 picks the configuration; then per event a kind byte, a
//! time byte (how far the clock moves) and the bytes the kind needs.
#![no_main]

use containerboot::ipn::{IpnState, Node};
use containerboot::machine::kube::{FailureKind, KubeCall, KubeReply, Verb};
use containerboot::machine::model::Model;
use containerboot::machine::rules::{NetfilterBackend, RuleCounts};
use containerboot::machine::{
    BusMessage, Cli, CliOutcome, Event, Machine, NetMapView, PrepStep, ProcessExit,
    ReconcileOutcome, Sig,
};
use containerboot::settings::{Settings, Source};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const IN_KUBE: (&str, &str) = ("KUBERNETES_SERVICE_HOST", "10.96.0.1");

const CONFIGS: &[&[(&str, &str)]] = &[
    &[],
    &[("TS_AUTH_ONCE", "true"), ("TS_AUTHKEY", "tskey-fuzz")],
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
    &[("TS_SERVE_CONFIG", "/serve/serve.json")],
    &[("EXPERIMENTAL_TS_CONFIGFILE_PATH", "/etc/ts/config.hujson")],
    &[
        IN_KUBE,
        ("TS_SERVE_CONFIG", "/serve/serve.json"),
        ("TS_AUTH_ONCE", "true"),
        ("TS_USERSPACE", "false"),
        ("TS_TAILNET_TARGET_IP", "100.64.0.9"),
    ],
];

/// Variables from a list; every file is the valid config file fixture.
struct Vars(&'static [(&'static str, &'static str)]);

impl Source for Vars {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }
    fn file(&self, _: &Path) -> Result<String, String> {
        Ok(include_str!("../../fixtures/configfile/valid.hujson").to_string())
    }
}

/// Bytes, read one at a time; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.byte() as usize % items.len()].clone()
    }
    fn text(&mut self) -> String {
        self.pick(&[
            "",
            "connection reset",
            "permission denied",
            "{\"TCP\":{\"443\":{\"HTTPS\":true}},\"Web\":{\"${TS_CERT_DOMAIN}:443\":{\"Handlers\":{\"/\":{\"Proxy\":\"http://127.0.0.1:8080\"}}}}}",
            "{}",
            "not json",
            "[]",
        ])
        .to_string()
    }
}

fn node(b: &mut Bytes, name: &str) -> Node {
    let addrs: &[&str] = b.pick(&[
        &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"][..],
        &["100.64.0.2/32"][..],
        &[][..],
        &["fd7a:115c:a1e0::9/128"][..],
    ]);
    Node {
        id: u64::from(b.byte() % 4),
        stable_id: b.pick(&["nSELF", "nOTHER", ""]).into(),
        name: name.into(),
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn kube_call(b: &mut Bytes, model: &Model) -> KubeCall {
    match (b.byte() % 4, &model.kube_pending, &model.last_kube) {
        (0..=1, Some(c), _) | (2, _, Some(c)) => c.clone(),
        _ => b.pick(&[
            KubeCall::CheckPermission { verb: Verb::Get },
            KubeCall::CheckPermission { verb: Verb::Patch },
            KubeCall::ReadAuthKey,
            KubeCall::ProbeSecret,
            KubeCall::RemoveAuthKey,
        ]),
    }
}

fn event(b: &mut Bytes, model: &Model) -> Event {
    let watch = match b.byte() % 4 {
        0 => model.watch.saturating_sub(1),
        1 => model.watch + 1,
        _ => model.watch,
    };
    let exits = [
        ProcessExit::Code(0),
        ProcessExit::Code(1),
        ProcessExit::Code(3),
        ProcessExit::Signal(9),
        ProcessExit::Signal(15),
    ];
    let states = [
        IpnState::NoState,
        IpnState::NeedsLogin,
        IpnState::NeedsMachineAuth,
        IpnState::Stopped,
        IpnState::Starting,
        IpnState::Running,
    ];
    match b.byte() % 24 {
        0 => Event::Start,
        1 => Event::KernelPrepared,
        2 => Event::KernelPrepFailed {
            step: b.pick(&[PrepStep::Tun, PrepStep::Forwarding]),
            error: b.text(),
        },
        3 => Event::TailscaledSpawnFailed { error: b.text() },
        4 => Event::SocketReady,
        5 => Event::SocketWaitFailed { error: b.text() },
        6 => Event::SymlinkFailed { error: b.text() },
        7 => Event::BusOpened { watch },
        8 => Event::BusFailed {
            watch,
            error: b.text(),
        },
        9..=11 => {
            let state = (b.byte() % 3 > 0).then(|| b.pick(&states));
            let net_map = (b.byte() % 2 == 0).then(|| {
                let self_node = node(b, "self.tailnet.ts.net.");
                let peers = b.byte() % 3;
                NetMapView {
                    self_node,
                    matching_peers: (0..peers)
                        .map(|_| node(b, "peer.tailnet.ts.net."))
                        .collect(),
                    cert_domain: b.pick(&[Some("self.tailnet.ts.net".to_string()), None]),
                }
            });
            // tailscaled 1.102's deltas: this node changed, peers changed
            // (matching ones) or gone, applied to the netmap the core knows.
            let delta = b.byte() % 3 == 0;
            let self_change = (delta && b.byte() % 2 == 0).then(|| node(b, "self.tailnet.ts.net."));
            let peers_changed = if delta {
                (0..b.byte() % 3)
                    .map(|_| node(b, "peer.tailnet.ts.net."))
                    .collect()
            } else {
                Vec::new()
            };
            let peers_gone = if delta {
                (0..b.byte() % 3).map(|_| u64::from(b.byte() % 4)).collect()
            } else {
                Vec::new()
            };
            Event::Bus {
                watch,
                message: BusMessage {
                    state,
                    net_map,
                    self_change,
                    peers_changed,
                    peers_gone,
                },
            }
        }
        12 => Event::BusEnded { watch },
        13 | 14 => {
            let cli = match model.cli_running {
                Some(c) if b.byte() % 4 > 0 => c,
                _ => b.pick(&[Cli::Up, Cli::Set]),
            };
            let outcome = if b.byte() % 5 == 0 {
                CliOutcome::SpawnFailed { message: b.text() }
            } else {
                CliOutcome::Exited {
                    status: b.pick(&exits),
                    stderr: b.text(),
                }
            };
            Event::CliFinished { cli, outcome }
        }
        15 => Event::RulesReconciled {
            outcome: if b.byte() % 3 == 0 {
                ReconcileOutcome::Failed { error: b.text() }
            } else {
                ReconcileOutcome::Done {
                    backend: b.pick(&[NetfilterBackend::Iptables, NetfilterBackend::Nftables]),
                    why: String::new(),
                    counts: RuleCounts::default(),
                }
            },
        },
        16 => Event::TailscaledExited {
            status: b.pick(&exits),
        },
        17 => Event::Signal {
            signal: b.pick(&[
                Sig::Term,
                Sig::Int,
                Sig::Usr1,
                Sig::Hup,
                Sig::Quit,
                Sig::Usr2,
            ]),
        },
        18 | 19 => {
            let call = kube_call(b, model);
            let reply = match b.byte() % 9 {
                0 => KubeReply::Connected {
                    namespace: "ns".into(),
                    server: "https://10.96.0.1:443".into(),
                },
                1 => KubeReply::Allowed { allowed: true },
                2 => KubeReply::Allowed { allowed: false },
                3 => KubeReply::Secret { authkey: None },
                4 => KubeReply::Secret {
                    authkey: Some(containerboot::secret::Secret::new("tskey-kube")),
                },
                5 => KubeReply::Done,
                6 => KubeReply::Status {
                    code: b.pick(&[403, 404, 409, 422]),
                    message: b.text(),
                },
                7 => KubeReply::Failed {
                    kind: FailureKind::Transient,
                    error: b.text(),
                },
                _ => KubeReply::Failed {
                    kind: FailureKind::Permanent,
                    error: b.text(),
                },
            };
            Event::Kube { call, reply }
        }
        20 => Event::ServeConfigRead { content: b.text() },
        21 => Event::ServeConfigUnreadable { error: b.text() },
        22 => Event::ServeConfigSet {
            error: (b.byte() % 2 == 0).then(|| b.text()),
        },
        _ => Event::DeadlineExpired,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let config = CONFIGS[b.byte() as usize % CONFIGS.len()];
    let settings = Settings::read(&Vars(config)).expect("valid fuzz settings");
    let (mut m, _init) = Machine::new(settings);
    let mut model = Model::default();
    let mut now = 0u64;
    // The events as fed, written out only on a failure (the commands
    // follow from them: the machine is deterministic).
    let mut log: Vec<(u64, Event)> = Vec::new();
    macro_rules! fail {
        ($what:expr) => {
            panic!(
                "config {config:?}: {}\nevents:\n{}",
                $what,
                log.iter()
                    .map(|(t, e)| format!("t={t} {e:?}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
    }
    while !b.0.is_empty() && !model.exited {
        let e = event(&mut b, &model);
        now += match b.byte() {
            0..=127 => 0,
            t @ 128..=223 => u64::from(t - 127) * 100,
            t @ 224..=254 => u64::from(t - 223) * 60_000,
            255 => m.next_deadline().map_or(1, |at| at.saturating_sub(now)),
        };
        if !model.could_send(&e) {
            continue;
        }
        let step = m.handle(now, e.clone());
        log.push((now, e.clone()));
        if let Err(what) = model.observe(&e, &step, m.state()) {
            fail!(what);
        }
    }
    if let Err(what) = model.drive_to_exit(&mut m, &mut now, 500) {
        fail!(what);
    }
    if !model.exited {
        let e = Event::Signal { signal: Sig::Term };
        now += 1;
        let step = m.handle(now, e.clone());
        log.push((now, e.clone()));
        if let Err(what) = model.observe(&e, &step, m.state()) {
            fail!(what);
        }
        if let Err(what) = model.drive_to_exit(&mut m, &mut now, 500) {
            fail!(what);
        }
        if !model.exited {
            fail!("no Exit after SIGTERM");
        }
    }
});
