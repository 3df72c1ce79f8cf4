//! The core: a pure state machine deciding everything containerboot does.
//!
//! **Architecture invariant:** nothing under `src/machine/` does I/O, reads
//! a clock or the environment, or spawns anything. Time comes in with each
//! event (`now_ms`); effects go out as [`Command`]s. That is what makes every
//! decision unit-testable and every run replayable from its trace.
//!
//! Where to look: `states.rs` answers "what happens when event X arrives
//! in state Y" (one arm each); `kube_session.rs`, `proxy.rs` and
//! `serve.rs` are the sub-protocols as values; `ctx.rs` holds the timers and what a
//! handler emits; this file turns a due timer into one `Timeout` event
//! and records each step.

pub mod argv;
pub mod command;
pub mod config_reload;
pub mod ctx;
pub mod event;
pub mod kube;
pub mod kube_session;
#[cfg(any(test, feature = "fuzzing"))]
pub mod model;
pub mod proxy;
pub mod rules;
pub mod serve;
pub mod states;

pub use command::{Arg, Command, KillSignal, Level, STARTUP_COMPLETE};
pub use ctx::Deadline;
pub use event::{
    BusMessage, Cli, CliOutcome, Event, NetMapView, PrepStep, ProcessExit, ReconcileOutcome, Sig,
};
pub use kube_session::{KUBE_RETRY_CAP_BOOT_MS, KUBE_RETRY_CAP_RUNNING_MS, KUBE_RETRY_FIRST_MS};
pub use proxy::forwarding_families;
pub use states::{
    BUS_RETRY_CAP_BOOT_MS, BUS_RETRY_CAP_RUNNING_MS, BUS_RETRY_FIRST_MS, CLI_SOCKET_LINK, RunPhase,
    State, UpRun, exit_code_for_unrequested_exit, under_root,
};

use crate::settings::Settings;
use ctx::{Ctx, Deadlines};
use serde::{Deserialize, Serialize};
use states::Core;
use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};

/// A state in a few words, for people: the compact trace, diagrams, logs.
impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&state_name(self))
    }
}

impl State {
    /// What this state waits for, for the note on an unexpected event.
    pub fn waits_for(&self) -> &'static str {
        match self {
            State::Starting {} => "Start and kernel preparation",
            State::CheckingKube {} => "Kubernetes API replies",
            State::WaitingSocket {} => "the LocalAPI socket",
            State::Authenticating { .. } => "tailscaled to reach Running",
            State::Running { .. } => "netmap changes",
            State::Shutdown { .. } => "tailscaled to exit",
        }
    }
}

/// Declares [`StateKind`] and its list [`StateKind::ALL`] from one list of
/// names, so the two cannot disagree.
macro_rules! state_kinds {
    ($($(#[$doc:meta])* $kind:ident,)*) => {
        /// A state of the machine by name, without its data.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum StateKind {
            $($(#[$doc])* $kind,)*
        }

        impl StateKind {
            /// Every state the machine has, in boot order: the one list
            /// that tests iterate (the fault matrix gives each its row).
            pub const ALL: &'static [StateKind] = &[$(StateKind::$kind,)*];

            /// The state's name, as [`State`]'s `Display` begins.
            pub fn name(self) -> &'static str {
                match self {
                    $(StateKind::$kind => stringify!($kind),)*
                }
            }
        }
    };
}

state_kinds! {
    /// Before tailscaled: kernel-mode preparation.
    Starting,
    /// Kubernetes permission checks and the auth key from the secret.
    CheckingKube,
    /// tailscaled started; waiting for its LocalAPI socket.
    WaitingSocket,
    /// Watching the bus until tailscaled reports Running.
    Authenticating,
    /// Logged in: settings, netmaps, proxy rules, secret writes.
    Running,
    /// Stopping tailscaled and the CLI run in flight, then exiting.
    Shutdown,
}

impl State {
    /// The state by name. Exhaustive, with no catch-all: a state added to
    /// `states.rs` does not compile until it has its [`StateKind`], and so
    /// its place in [`StateKind::ALL`].
    pub fn kind(&self) -> StateKind {
        match self {
            State::Starting {} => StateKind::Starting,
            State::CheckingKube {} => StateKind::CheckingKube,
            State::WaitingSocket {} => StateKind::WaitingSocket,
            State::Authenticating { .. } => StateKind::Authenticating,
            State::Running { .. } => StateKind::Running,
            State::Shutdown { .. } => StateKind::Shutdown,
        }
    }
}

fn state_name(s: &State) -> String {
    match s {
        State::Starting {} => "Starting".into(),
        State::CheckingKube {} => "CheckingKube".into(),
        State::WaitingSocket {} => "WaitingSocket".into(),
        State::Authenticating { up, .. } => {
            if *up == UpRun::Running {
                "Authenticating(up running)".into()
            } else {
                "Authenticating".into()
            }
        }
        State::Running { phase, .. } => format!("Running({phase:?})"),
        State::Shutdown { code, .. } => format!("Shutdown(exit {code})"),
    }
}

/// One step of the machine: what came in, what it decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Position in the run, from 0 (initialisation).
    pub seq: u64,
    /// Milliseconds since start, as given with the event.
    pub t_ms: u64,
    /// The state before.
    pub state_before: State,
    /// The event (none for initialisation).
    pub event: Option<Event>,
    /// The state after.
    pub state_after: State,
    /// The commands emitted, in order.
    pub commands: Vec<Command>,
    /// Why the event changed nothing, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The machine: feed it events, carry out the commands it returns.
pub struct Machine {
    sm: InitializedStateMachine<Core>,
    seq: u64,
    /// The timers, lent to each step.
    timers: Deadlines,
    /// The CLI run in flight, lent to each step.
    cli: Option<Cli>,
}

impl Machine {
    /// A machine for `settings`, and its initialisation step.
    pub fn new(settings: Settings) -> (Machine, Step) {
        let core = Core::new(settings);
        let mut ctx = Ctx::default();
        let sm = core
            .uninitialized_state_machine()
            .init_with_context(&mut ctx);
        let state = sm.state().clone();
        let step = Step {
            seq: 0,
            t_ms: 0,
            state_before: state.clone(),
            event: None,
            state_after: state,
            commands: ctx.commands,
            note: None,
        };
        let machine = Machine {
            sm,
            seq: 0,
            timers: ctx.timers,
            cli: ctx.cli,
        };
        (machine, step)
    }

    /// Handles one event at time `now_ms` and returns the whole step.
    #[must_use]
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Step {
        let before = self.sm.state().clone();
        let mut ctx = Ctx {
            now_ms,
            timers: std::mem::take(&mut self.timers),
            cli: self.cli,
            expecting: format!("{before}, which waits for {}", before.waits_for()),
            ..Ctx::default()
        };
        // A finished CLI run is no longer in flight, whatever the state
        // makes of its result.
        if let Event::CliFinished { cli, .. } = &event
            && ctx.cli == Some(*cli)
        {
            ctx.cli = None;
        }
        match &event {
            // One due timer per wake-up, as one `Timeout` event.
            Event::DeadlineExpired => match ctx.timers.take_due(now_ms) {
                Some(deadline) => self
                    .sm
                    .handle_with_context(&Event::Timeout { deadline }, &mut ctx),
                None => ctx.ignore("no deadline due"),
            },
            Event::Timeout { deadline } => {
                ctx.timers.clear(*deadline);
                self.sm.handle_with_context(&event, &mut ctx);
            }
            _ => self.sm.handle_with_context(&event, &mut ctx),
        }
        self.timers = ctx.timers;
        self.cli = ctx.cli;
        self.seq += 1;
        Step {
            seq: self.seq,
            t_ms: now_ms,
            state_before: before,
            event: Some(event),
            state_after: self.sm.state().clone(),
            commands: ctx.commands,
            note: ctx.note,
        }
    }

    /// When the shell should next send `DeadlineExpired`, if ever.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next()
    }

    /// The current state.
    pub fn state(&self) -> &State {
        self.sm.state()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod state_list_tests {
    use super::*;

    #[test]
    fn every_state_is_listed_once_under_its_own_name() {
        // Each state reachable from the initial one, by the shortest path
        // of events that reaches it; `kind` (exhaustive) names it.
        let s = |vars: &[(&str, &str)]| {
            Settings::from_lookup(|k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
            .expect("valid settings")
        };
        let mut seen = Vec::new();
        let mut note = |m: &Machine| seen.push(m.state().clone());
        let (mut m, _) = Machine::new(s(&[("TS_USERSPACE", "false"), ("TS_ROUTES", "")]));
        note(&m);
        let (mut k, _) = Machine::new(s(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]));
        let _ = k.handle(1, Event::Start);
        note(&k);
        let _ = m.handle(1, Event::Start);
        let _ = m.handle(2, Event::KernelPrepared);
        note(&m);
        let _ = m.handle(3, Event::SocketReady);
        note(&m);
        let _ = m.handle(
            4,
            Event::Bus {
                watch: 1,
                message: BusMessage {
                    state: Some(crate::ipn::IpnState::Running),
                    ..Default::default()
                },
            },
        );
        note(&m);
        let _ = m.handle(5, Event::Signal { signal: Sig::Term });
        note(&m);
        let kinds: Vec<StateKind> = seen.iter().map(State::kind).collect();
        assert_eq!(
            kinds,
            StateKind::ALL,
            "StateKind::ALL lists every state once, in boot order"
        );
        for state in &seen {
            assert!(
                state.to_string().starts_with(state.kind().name()),
                "{state} is named {}",
                state.kind().name()
            );
        }
    }
}
