//! The harness: a machine on a virtual clock, driven with events; its
//! steps as compact strings so a test asserts whole command sequences.

pub use super::super::kube::{DeviceInfo, FailureKind, KubeCall, KubeReply, KubeTarget, Verb};
pub use super::super::rules::{NetfilterBackend, RuleCounts};
pub use super::super::*;
pub use crate::ipn::{IpnState, Node};
pub use crate::settings::Settings;
use std::collections::HashMap;

/// Variables from a list; every file reads as the valid config file
/// fixture (the machine itself never reads one).
struct Vars(HashMap<String, String>);

impl crate::settings::Source for Vars {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn file(&self, _: &std::path::Path) -> Result<String, String> {
        Ok(include_str!("../../../../fixtures/configfile/valid.hujson").to_string())
    }
}

pub fn settings(vars: &[(&str, &str)]) -> Settings {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::read(&Vars(env)).expect("valid test settings")
}

pub fn state(s: IpnState) -> Event {
    bus(1, Some(s), None)
}

pub fn bus(watch: u64, state: Option<IpnState>, net_map: Option<NetMapView>) -> Event {
    Event::Bus {
        watch,
        message: BusMessage {
            state,
            net_map,
            ..Default::default()
        },
    }
}

pub fn netmap(addrs: &[&str]) -> NetMapView {
    NetMapView {
        self_node: Node {
            id: 0,
            stable_id: "nSELF".into(),
            name: "self.tailnet.ts.net.".into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        },
        matching_peers: Vec::new(),
        cert_domain: Some("self.tailnet.ts.net".into()),
    }
}

/// A CLI run that failed with exit status 1.
pub fn failed_cli(cli: Cli) -> Event {
    Event::CliFinished {
        cli,
        outcome: CliOutcome::Exited {
            status: ProcessExit::Code(1),
            stderr: "failed to connect to local tailscaled".into(),
        },
    }
}

pub fn ok(cli: Cli) -> Event {
    Event::CliFinished {
        cli,
        outcome: CliOutcome::Exited {
            status: ProcessExit::Code(0),
            stderr: String::new(),
        },
    }
}

/// Non-log commands, as the trace describes them, to compare whole
/// sequences.
pub fn effects(step: &Step) -> Vec<String> {
    step.commands
        .iter()
        .filter(|c| !matches!(c, Command::Log { .. }))
        .map(crate::trace::describe::describe_command)
        .collect()
}

pub fn logs(step: &Step) -> Vec<String> {
    step.commands
        .iter()
        .filter_map(|c| match c {
            Command::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

pub struct Run {
    pub m: Machine,
    pub now: u64,
}

impl Run {
    pub fn new(vars: &[(&str, &str)]) -> Run {
        let (m, init) = Machine::new(settings(vars));
        assert!(init.commands.is_empty());
        Run { m, now: 0 }
    }
    pub fn step(&mut self, e: Event) -> Step {
        self.now += 10;
        self.m.handle(self.now, e)
    }
    /// Jumps the virtual clock to the earliest armed timer and wakes the
    /// machine there, as the shell's timer would.
    pub fn advance_to_next_deadline(&mut self) -> Step {
        let at = self.m.next_deadline().expect("a timer is armed");
        self.now = at;
        self.m.handle(at, Event::DeadlineExpired)
    }
    /// Runs on timers: each wake-up's step goes to `answer`, whose event
    /// (if any) is handled next, until `done` holds for a step. More than
    /// `limit` wake-ups is a livelock and fails the test.
    pub fn drive_bounded(
        &mut self,
        limit: usize,
        done: impl Fn(&Step) -> bool,
        mut answer: impl FnMut(&Step) -> Option<Event>,
    ) -> Step {
        for _ in 0..limit {
            let s = self.advance_to_next_deadline();
            if done(&s) {
                return s;
            }
            if let Some(e) = answer(&s) {
                let s = self.step(e);
                if done(&s) {
                    return s;
                }
            }
        }
        panic!("no end after {limit} timer wake-ups");
    }
    pub fn fx(&mut self, e: Event) -> Vec<String> {
        effects(&self.step(e))
    }
    /// Start → socket → first watch opened.
    pub fn boot_to_bus(&mut self) -> Vec<String> {
        let mut all = self.fx(Event::Start);
        all.extend(self.boot_to_bus_after_start());
        all
    }
    /// Socket → first watch opened.
    pub fn boot_to_bus_after_start(&mut self) -> Vec<String> {
        let mut all = self.fx(Event::SocketReady);
        all.extend(self.fx(Event::BusOpened { watch: 1 }));
        all
    }
}

// Kubernetes.

pub const IN_KUBE: (&str, &str) = ("KUBERNETES_SERVICE_HOST", "10.96.0.1");

pub fn kube(call: KubeCall, reply: KubeReply) -> Event {
    Event::Kube { call, reply }
}

pub fn allowed(verb: Verb, allowed: bool) -> Event {
    kube(
        KubeCall::CheckPermission { verb },
        KubeReply::Allowed { allowed },
    )
}

/// The client set-up asked for by a pod with [`IN_KUBE`] and the defaults.
pub fn connect() -> KubeCall {
    KubeCall::Connect {
        target: KubeTarget {
            host: "10.96.0.1".into(),
            port: 443,
            root: "/".into(),
            secret: "tailscale".into(),
            timeout_ms: crate::settings::DEFAULT_KUBE_TIMEOUT_MS,
        },
    }
}

pub fn connected() -> Event {
    kube(
        connect(),
        KubeReply::Connected {
            namespace: "ns".into(),
            server: "https://10.96.0.1:443".into(),
        },
    )
}

pub fn transient(call: KubeCall, error: &str) -> Event {
    kube(
        call,
        KubeReply::Failed {
            kind: FailureKind::Transient,
            error: error.into(),
        },
    )
}

pub fn info(id: &str, fqdn: &str, ips: &[&str]) -> DeviceInfo {
    DeviceInfo {
        id: id.into(),
        fqdn: fqdn.into(),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
    }
}

pub fn node(id: &str, name: &str, addrs: &[&str]) -> NetMapView {
    let mut nm = netmap(addrs);
    nm.self_node.stable_id = id.into();
    nm.self_node.name = name.into();
    nm
}

pub fn store_fx(i: &DeviceInfo) -> String {
    format!("kube {:?}", KubeCall::StoreDeviceInfo { info: i.clone() })
}

impl Run {
    /// Start → the permission checks answered with `get`, `update`, `patch`.
    pub fn kube_checks(&mut self, get: bool, update: bool, patch: bool) -> Vec<String> {
        assert_eq!(
            self.fx(Event::Start),
            ["kube Connect 10.96.0.1:443 secret tailscale"]
        );
        assert_eq!(*self.m.state(), State::CheckingKube {});
        assert_eq!(self.fx(connected()), ["kube CheckPermission { verb: Get }"]);
        assert_eq!(
            self.fx(allowed(Verb::Get, get)),
            ["kube CheckPermission { verb: Update }"]
        );
        let fx = self.fx(allowed(Verb::Update, update));
        if !(get && update) {
            return fx;
        }
        assert_eq!(fx, ["kube CheckPermission { verb: Patch }"]);
        self.fx(allowed(Verb::Patch, patch))
    }

    /// The last boot-time step's effects → Running(Watching), as auth-once
    /// with a fresh login, up to the set's completion.
    pub fn auth_once_to_set_done(&mut self) -> Vec<String> {
        self.boot_to_bus_after_start();
        assert_eq!(self.fx(state(IpnState::NeedsLogin)).len(), 1);
        assert_eq!(
            self.fx(ok(Cli::Up)),
            ["watch#2 mask=InitialState|InitialNetMap"]
        );
        assert_eq!(self.fx(bus(2, Some(IpnState::Running), None)).len(), 1);
        self.fx(ok(Cli::Set))
    }
}
