//! The invariants of the core, as a checker of any run: what must hold
//! after every step, whatever the events and their times. The random walk
//! (`tests/random_walk.rs`) and the model-based fuzz target
//! (`fuzz/fuzz_targets/machine.rs`) both drive a [`Machine`] and hand each
//! step to a [`Model`]; built for tests, and for others with the crate's
//! `fuzzing` feature.
//!
//! - at most one `Exit`, and only once tailscaled is not running and no
//!   CLI run is left;
//! - never two CLI runs at once;
//! - in Shutdown with nothing left running, the machine has exited;
//! - once tailscaled is gone, or a termination signal came, the machine
//!   ends in an exit when the world answers what it asked, its timers fire
//!   and a SIGKILLed tailscaled dies ([`Model::drive_to_exit`]).

use super::event::{Cli, CliOutcome, Event, ProcessExit, Sig};
use super::kube::{FailureKind, KubeCall, KubeReply};
use super::{Command, KillSignal, Machine, State, Step};

/// What the world around the machine looks like, as its commands and the
/// events fed to it made it.
#[derive(Clone, Debug)]
pub struct Model {
    /// tailscaled was spawned and has not been reported gone.
    pub daemon_alive: bool,
    /// tailscaled was spawned at some point.
    pub daemon_started: bool,
    /// tailscaled was sent SIGKILL (it cannot outlive that).
    pub daemon_killed: bool,
    /// A termination signal (TERM, INT, HUP, QUIT) came.
    pub terminating: bool,
    /// The CLI run in flight.
    pub cli_running: Option<Cli>,
    /// The last Kubernetes call asked for and not yet answered.
    pub kube_pending: Option<KubeCall>,
    /// The last Kubernetes call asked for (answered or not).
    pub last_kube: Option<KubeCall>,
    /// The bus watch last asked for.
    pub watch: u64,
    /// The machine emitted `Exit`.
    pub exited: bool,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            daemon_alive: false,
            daemon_started: false,
            daemon_killed: false,
            terminating: false,
            cli_running: None,
            kube_pending: None,
            last_kube: None,
            watch: 1,
            exited: false,
        }
    }
}

impl Model {
    /// Whether the world could send `event` now: a daemon that was never
    /// started (or is gone) does not exit again; a CLI run nobody started
    /// does not finish.
    pub fn could_send(&self, event: &Event) -> bool {
        match event {
            Event::TailscaledExited { .. } | Event::TailscaledSpawnFailed { .. } => {
                self.daemon_alive
            }
            Event::CliFinished { cli, .. } => self.cli_running == Some(*cli),
            _ => true,
        }
    }

    /// Records `event` and the step the machine made of it (the machine
    /// now in `state`). `Err` names the broken invariant.
    pub fn observe(&mut self, event: &Event, step: &Step, state: &State) -> Result<(), String> {
        match event {
            Event::TailscaledExited { .. } | Event::TailscaledSpawnFailed { .. } => {
                self.daemon_alive = false
            }
            Event::CliFinished { .. } => self.cli_running = None,
            Event::Kube { call, .. } if self.kube_pending.as_ref() == Some(call) => {
                self.kube_pending = None
            }
            Event::Signal {
                signal: Sig::Term | Sig::Int | Sig::Hup | Sig::Quit,
            } => self.terminating = true,
            _ => {}
        }
        for c in &step.commands {
            match c {
                Command::SpawnTailscaled { .. } => {
                    self.daemon_alive = true;
                    self.daemon_started = true;
                    self.daemon_killed = false;
                }
                Command::SignalTailscaled {
                    signal: KillSignal::Kill,
                } => self.daemon_killed = true,
                Command::RunCli { cli, .. } => {
                    if self.cli_running.is_some() {
                        return Err("two CLI runs at once".into());
                    }
                    self.cli_running = Some(*cli);
                }
                Command::Kube { call } => {
                    self.kube_pending = Some(call.clone());
                    self.last_kube = Some(call.clone());
                }
                Command::WatchBus { watch, .. } => self.watch = *watch,
                Command::Exit { .. } => {
                    if self.exited {
                        return Err("a second Exit".into());
                    }
                    if self.daemon_alive {
                        return Err("Exit while tailscaled runs".into());
                    }
                    if self.cli_running.is_some() {
                        return Err("Exit while a CLI run is left".into());
                    }
                    self.exited = true;
                }
                _ => {}
            }
        }
        if !self.exited
            && matches!(state, State::Shutdown { .. })
            && !self.daemon_alive
            && self.cli_running.is_none()
        {
            return Err("in Shutdown with nothing left running, not exited".into());
        }
        Ok(())
    }

    /// Once tailscaled is gone or a termination signal came, plays the
    /// world out as the shell would: a SIGKILLed tailscaled dies, due
    /// timers fire, the CLI run left ends (failed), the Kubernetes call
    /// left is answered (a transient failure), until the machine exits.
    /// `Err` when it does not within `limit` steps, when it waits for
    /// nothing, or when a step breaks an invariant. Otherwise (tailscaled
    /// running or never started, no signal) nothing is required.
    pub fn drive_to_exit(
        &mut self,
        m: &mut Machine,
        now: &mut u64,
        limit: usize,
    ) -> Result<(), String> {
        let daemon_gone = self.daemon_started && !self.daemon_alive;
        if !daemon_gone && !self.terminating {
            return Ok(());
        }
        for _ in 0..limit {
            if self.exited {
                return Ok(());
            }
            let event = if self.daemon_alive && self.daemon_killed {
                Event::TailscaledExited {
                    status: ProcessExit::Signal(9),
                }
            } else if let Some(at) = m.next_deadline() {
                *now = (*now).max(at);
                Event::DeadlineExpired
            } else if let Some(cli) = self.cli_running {
                Event::CliFinished {
                    cli,
                    outcome: CliOutcome::Exited {
                        status: ProcessExit::Code(1),
                        stderr: String::new(),
                    },
                }
            } else if let Some(call) = self.kube_pending.clone() {
                Event::Kube {
                    call,
                    reply: KubeReply::Failed {
                        kind: FailureKind::Transient,
                        error: "503".into(),
                    },
                }
            } else {
                return Err(format!(
                    "{}, nothing is left to wait for, but no Exit (state {})",
                    if daemon_gone {
                        "tailscaled is gone"
                    } else {
                        "a termination signal came"
                    },
                    m.state()
                ));
            };
            *now += 1;
            let step = m.handle(*now, event.clone());
            self.observe(&event, &step, m.state())
                .map_err(|e| format!("{e} (after {event:?}, driving to the exit)"))?;
        }
        if self.exited {
            Ok(())
        } else {
            Err(format!(
                "no Exit after {limit} steps of playing the world out (state {})",
                m.state()
            ))
        }
    }
}
