//! The core: a pure state machine deciding everything containerboot does.
//!
//! **Architecture invariant:** nothing under `src/machine/` does I/O, reads
//! a clock or the environment, or spawns anything. Time comes in with each
//! event (`now_ms`); effects go out as [`Command`]s. That is what makes every
//! decision unit-testable and every run replayable from its trace.

pub mod argv;
pub mod command;
pub mod event;
pub mod kube;
pub mod rules;

pub use command::{Arg, Command, KillSignal, Level, STARTUP_COMPLETE};
pub use event::{
    BusMessage, Cli, CliOutcome, Event, NetMapView, PrepStep, ProcessExit, RulePurpose, Sig,
};

use crate::ipn::{IpnState, mask};
use crate::settings::{AuthMode, Settings};
use ipnetwork::IpNetwork;
use kube::{DeviceInfo, FailureKind, KubeCall, KubeReply, Verb};
use serde::{Deserialize, Serialize};
use statig::blocking::{InitializedStateMachine, IntoStateMachineExt};
use statig::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// First wait before re-opening a lost bus watch; doubles per failure.
pub const BUS_RETRY_FIRST_MS: u64 = 500;
/// Longest wait between bus watch attempts while booting.
pub const BUS_RETRY_CAP_BOOT_MS: u64 = 4_000;
/// Longest wait between bus watch attempts once Running.
pub const BUS_RETRY_CAP_RUNNING_MS: u64 = 30_000;
/// Where the CLI looks for the daemon without `--socket`.
pub const DEFAULT_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

/// The timers the core can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Deadline {
    /// Start to Running.
    Boot,
    /// SIGTERM to SIGKILL.
    KillGrace,
    /// Re-open a lost bus watch.
    BusRetry,
    /// Repeat a Kubernetes call that failed transiently.
    KubeRetry,
}

/// First wait before repeating a failed Kubernetes call; doubles per failure.
pub const KUBE_RETRY_FIRST_MS: u64 = 500;
/// Longest wait between Kubernetes attempts while booting.
pub const KUBE_RETRY_CAP_BOOT_MS: u64 = 4_000;
/// Longest wait between Kubernetes attempts once Running.
pub const KUBE_RETRY_CAP_RUNNING_MS: u64 = 30_000;

/// The exit code for tailscaled ending unasked, like tini: its code, 128+N
/// for signal N, and 1 for a clean exit nobody asked for (upstream exits 0,
/// which hides the crash from restart policies).
pub fn exit_code_for_unrequested_exit(status: ProcessExit) -> i32 {
    match status {
        ProcessExit::Code(0) => 1,
        ProcessExit::Code(c) => c,
        ProcessExit::Signal(s) => 128 + s,
    }
}

/// Handler context: the current time in, commands out.
#[derive(Debug, Default)]
pub struct Ctx {
    now_ms: u64,
    commands: Vec<Command>,
    note: Option<String>,
}

impl Ctx {
    fn emit(&mut self, c: Command) {
        self.commands.push(c);
    }
    fn log(&mut self, level: Level, message: impl Into<String>) {
        self.emit(Command::Log {
            level,
            message: message.into(),
        });
    }
    fn info(&mut self, message: impl Into<String>) {
        self.log(Level::Info, message);
    }
    fn ignore(&mut self, why: impl Into<String>) {
        self.note = Some(why.into());
    }
}

/// Whether tailscaled is, as far as the core knows, alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Daemon {
    NotStarted,
    Alive,
    Gone,
}

/// Shared storage of the machine: settings and what every state may read.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    daemon: Daemon,
    did_login: bool,
    symlinked: bool,
    watch: u64,
    deadlines: BTreeMap<Deadline, u64>,
    current_ips: Option<Vec<IpNetwork>>,
    current_egress: Option<Vec<IpNetwork>>,
    pending_rules: usize,
    startup_done: bool,
    watch_mask: u32,
    bus_backoff_ms: u64,
    cli_in_flight: Option<Cli>,
    kube: KubeProgress,
}

/// What the core knows of its Kubernetes work (only with a secret).
#[derive(Debug, Default)]
struct KubeProgress {
    /// From the service-account files, once connected.
    namespace: String,
    /// Whether `patch` on the secret is allowed.
    can_patch: bool,
    /// Required verbs found missing.
    missing: Vec<Verb>,
    /// The one call in flight (calls are made one at a time).
    in_flight: Option<KubeCall>,
    /// The call to repeat when `KubeRetry` expires.
    retry: Option<KubeCall>,
    backoff_ms: u64,
    /// Failed attempts of the current call.
    failures: u32,
    /// The last logged failure, so a retry storm logs once.
    last_error: Option<String>,
    /// `authkey` still has to be removed (auth-once).
    remove_authkey: bool,
    /// The device info of the latest netmap.
    latest: Option<DeviceInfo>,
    /// The (id, name) pair last stored, or found not ours to store.
    stored: Option<(String, String)>,
}

/// Which part of the running phase the machine is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunPhase {
    /// `tailscale set` is running (auth-once).
    Setting,
    /// Watching the bus for netmap changes.
    Watching,
}

#[state_machine(initial = "State::starting()", state(derive(Debug, Clone, PartialEq)))]
impl Core {
    /// Everything every live state handles the same way.
    #[superstate]
    fn live(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        if let Some(outcome) = self.on_common_events(context, event) {
            return outcome;
        }
        match event {
            Event::Signal { signal } => {
                context.info(format!("Received {signal:?} signal, shutting down"));
                Transition(State::shutdown(0))
            }
            Event::TailscaledExited { status } => {
                self.daemon = Daemon::Gone;
                let code = exit_code_for_unrequested_exit(*status);
                context.log(
                    Level::Error,
                    format!("Tailscaled exited ({status}); exiting with code {code}"),
                );
                Transition(State::shutdown(code))
            }
            Event::TailscaledSpawnFailed { error } => {
                self.daemon = Daemon::Gone;
                self.fatal(
                    context,
                    format!("failed to bring up tailscale: starting tailscaled failed: {error}"),
                )
            }
            Event::BusOpened { watch } if *watch == self.watch => {
                self.bus_backoff_ms = 0;
                Handled
            }
            Event::SymlinkFailed { error } => {
                context.log(
                    Level::Warn,
                    format!(
                        "[warning] failed to symlink socket: {error}\n\tTo interact with the Tailscale CLI please use `tailscale --socket={:?}`",
                        self.settings.socket.display().to_string()
                    ),
                );
                Handled
            }
            Event::DeadlineExpired if self.take_expired(context, Deadline::BusRetry) => {
                self.open_watch(context, self.watch_mask);
                Handled
            }
            Event::DeadlineExpired if self.take_expired(context, Deadline::KubeRetry) => {
                if let Some(call) = self.kube.retry.take() {
                    self.kube_issue(context, call);
                }
                Handled
            }
            Event::DeadlineExpired => {
                context.ignore("no deadline due in this state");
                Handled
            }
            _ => {
                context.ignore("not expected in this state");
                Handled
            }
        }
    }

    /// Before tailscaled: kernel-mode preparation.
    #[state(superstate = "live")]
    fn starting(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Start => {
                if self.settings.userspace {
                    return self.after_prep(context);
                }
                let (v4, v6) = forwarding_families(&self.settings);
                context.emit(Command::PrepareKernel {
                    root: self.settings.root.clone(),
                    ipv4_forwarding: v4,
                    ipv6_forwarding: v6,
                });
                Handled
            }
            Event::KernelPrepared => self.after_prep(context),
            Event::KernelPrepFailed { step, error } => {
                let msg = match step {
                    PrepStep::Tun => format!("Unable to create tuntap device file: {error}"),
                    PrepStep::Forwarding => {
                        context.log(
                            Level::Error,
                            format!("Failed to enable IP forwarding: {error}"),
                        );
                        context.log(
                            Level::Error,
                            "To run tailscale as a proxy or router container, IP forwarding must be enabled.",
                        );
                        if self.settings.in_kubernetes {
                            "You can either set the sysctls as a privileged initContainer, or run the tailscale container with privileged=true.".to_string()
                        } else {
                            "You can fix this by running the container with privileged=true, or the equivalent in your container runtime that permits access to sysctls.".to_string()
                        }
                    }
                };
                self.fatal(context, msg)
            }
            _ => Super,
        }
    }

    /// Before tailscaled, with a Kubernetes secret: permission checks and
    /// the auth key from the secret.
    #[state(superstate = "live")]
    fn checking_kube(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Kube { call, reply } => {
                let Some(reply) = self.kube_settle(context, call, reply) else {
                    return Handled;
                };
                self.on_kube_boot(context, call, reply)
            }
            Event::DeadlineExpired if self.boot_expired(context) => {
                let doing = self
                    .kube
                    .retry
                    .as_ref()
                    .or(self.kube.in_flight.as_ref())
                    .map(|c| c.describe())
                    .unwrap_or_else(|| "Kubernetes API calls".into());
                let last = match &self.kube.last_error {
                    Some(e) => format!("; last error: {e}"),
                    None => String::new(),
                };
                self.fatal(
                    context,
                    format!(
                        "timed out after {} ms in CheckingKube {doing}{last} (TS_BOOT_TIMEOUT)",
                        self.settings.boot_timeout_ms
                    ),
                )
            }
            _ => Super,
        }
    }

    /// tailscaled started; waiting for its LocalAPI socket.
    #[state(superstate = "live")]
    fn waiting_socket(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::SocketReady => {
                self.open_watch(context, mask::FIRST_WATCH);
                Transition(State::authenticating(false))
            }
            Event::SocketWaitFailed { error } => {
                self.fatal(context, format!("Waiting for tailscaled socket: {error}"))
            }
            Event::DeadlineExpired if self.boot_expired(context) => self.fatal(
                context,
                format!(
                    "Timed out waiting for tailscaled socket: still in WaitingSocket after {} ms (TS_BOOT_TIMEOUT), waiting for tailscaled to create {}",
                    self.settings.boot_timeout_ms,
                    self.settings.socket.display()
                ),
            ),
            _ => Super,
        }
    }

    /// Watching the bus until tailscaled reports Running; `up_running`
    /// while `tailscale up` is in flight.
    #[state(superstate = "live")]
    fn authenticating(
        &mut self,
        up_running: &mut bool,
        context: &mut Ctx,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::BusOpened { watch } if *watch == self.watch => {
                self.bus_backoff_ms = 0;
                if !self.symlinked {
                    self.symlinked = true;
                    self.symlink_socket(context);
                }
                if self.settings.auth_mode() == AuthMode::AlwaysAuth && !self.did_login {
                    *up_running = self.run_up(context);
                }
                Handled
            }
            Event::BusFailed { watch, error } if *watch == self.watch => {
                // `symlinked` is set by the first watch that opened.
                let what = if !self.symlinked {
                    "failed to watch tailscaled for updates"
                } else {
                    "rewatching tailscaled for updates after auth"
                };
                self.lose_bus(context, format!("{what}: {error}"))
            }
            Event::BusEnded { watch } if *watch == self.watch => self.lose_bus(
                context,
                "failed to read from tailscaled: the IPN bus stream ended".to_string(),
            ),
            Event::Bus { watch, .. } if *watch != self.watch => {
                context.ignore("message from a replaced bus watch");
                Handled
            }
            Event::Bus { .. } if *up_running => {
                context.ignore("tailscale up is running; the bus is read again after it");
                Handled
            }
            Event::Bus { message, .. } => match message.state {
                Some(IpnState::NeedsLogin) => {
                    if self.settings.auth_mode() == AuthMode::ConfigFile {
                        return self.fatal(context, "invalid state: tailscaled daemon started with a config file, but tailscale is not logged in: ensure you pass a valid auth key in the config file.".to_string());
                    }
                    if !self.did_login {
                        *up_running = self.run_up(context);
                    }
                    Handled
                }
                Some(IpnState::NeedsMachineAuth) => {
                    context.info("machine authorization required, please visit the admin panel");
                    Handled
                }
                Some(IpnState::Running) => {
                    self.deadlines.remove(&Deadline::Boot);
                    if self.settings.auth_mode() == AuthMode::AuthOnce {
                        context.info("Running 'tailscale set'");
                        self.cli_in_flight = Some(Cli::Set);
                        context.emit(Command::RunCli {
                            cli: Cli::Set,
                            argv: argv::set(&self.settings),
                        });
                        Transition(State::running(RunPhase::Setting))
                    } else {
                        self.open_watch(context, mask::REWATCH);
                        Transition(State::running(RunPhase::Watching))
                    }
                }
                Some(other) => {
                    context.info(format!("tailscaled in state \"{other}\", waiting"));
                    Handled
                }
                None => {
                    context.ignore("no state change before Running");
                    Handled
                }
            },
            Event::CliFinished {
                cli: Cli::Up,
                outcome,
            } if *up_running => {
                *up_running = false;
                self.cli_in_flight = None;
                match cli_error(Cli::Up, outcome) {
                    None => {
                        self.open_watch(context, mask::REWATCH);
                        Handled
                    }
                    Some(e) => self.fatal(context, format!("failed to auth tailscale: {e}")),
                }
            }
            Event::DeadlineExpired if self.boot_expired(context) => {
                let waiting = if *up_running {
                    "`tailscale up` to finish"
                } else {
                    "tailscaled to reach Running"
                };
                self.fatal(
                    context,
                    format!(
                        "timed out after {} ms in Authenticating waiting for {waiting} (TS_BOOT_TIMEOUT)",
                        self.settings.boot_timeout_ms
                    ),
                )
            }
            _ => Super,
        }
    }

    /// Logged in: applying settings, then following netmap changes.
    #[state(superstate = "live")]
    fn running(
        &mut self,
        phase: &mut RunPhase,
        context: &mut Ctx,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::CliFinished {
                cli: Cli::Set,
                outcome,
            } if *phase == RunPhase::Setting => {
                self.cli_in_flight = None;
                match cli_error(Cli::Set, outcome) {
                    None => {
                        *phase = RunPhase::Watching;
                        if self.writes_secret() {
                            context.info("Deleting authkey from kube secret");
                            self.kube.remove_authkey = true;
                            self.kube_next(context);
                        }
                        self.open_watch(context, mask::REWATCH);
                        Handled
                    }
                    Some(e) => self.fatal(context, format!("failed to auth tailscale: {e}")),
                }
            }
            Event::Bus { watch, .. } if *watch != self.watch || *phase == RunPhase::Setting => {
                context.ignore("message from a replaced bus watch");
                Handled
            }
            Event::Bus { message, .. } => {
                if let Some(state) = message.state
                    && state != IpnState::Running
                {
                    return self.fatal(
                        context,
                        format!(
                            "tailscaled left running state (now in state \"{state}\"), exiting"
                        ),
                    );
                }
                if let Some(nm) = &message.net_map {
                    return self.on_netmap(context, nm);
                }
                Handled
            }
            Event::BusFailed { watch, error } if *watch == self.watch => {
                self.lose_bus(context, format!("failed to read from tailscaled: {error}"))
            }
            Event::BusEnded { watch } if *watch == self.watch => self.lose_bus(
                context,
                "failed to read from tailscaled: the IPN bus stream ended".to_string(),
            ),
            Event::Kube { call, reply } => {
                let Some(reply) = self.kube_settle(context, call, reply) else {
                    return Handled;
                };
                self.on_kube_running(context, call, reply)
            }
            Event::RulesApplied { purpose, error } => {
                self.pending_rules = self.pending_rules.saturating_sub(1);
                if let Some(e) = error {
                    let what = match purpose {
                        RulePurpose::Ingress => "installing ingress proxy rules".to_string(),
                        RulePurpose::Egress {
                            destination,
                            by_fqdn: true,
                        } => format!("installing egress proxy rules for destination {destination}"),
                        RulePurpose::Egress { .. } => "installing egress proxy rules".to_string(),
                    };
                    return self.fatal(context, format!("{what}: {e}"));
                }
                self.maybe_startup_complete(context);
                Handled
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_shutdown(&mut self, code: &mut i32, context: &mut Ctx) {
        self.deadlines.remove(&Deadline::Boot);
        self.deadlines.remove(&Deadline::BusRetry);
        self.deadlines.remove(&Deadline::KubeRetry);
        if let Some(cli) = self.cli_in_flight {
            context.emit(Command::SignalCli {
                cli,
                signal: KillSignal::Term,
            });
        }
        if self.daemon == Daemon::Alive {
            context.emit(Command::SignalTailscaled {
                signal: KillSignal::Term,
            });
            self.deadlines.insert(
                Deadline::KillGrace,
                context.now_ms + self.settings.shutdown_grace_ms,
            );
        } else {
            context.emit(Command::Exit { code: *code });
        }
    }

    /// Stopping: tailscaled was sent SIGTERM; exit once it is gone.
    #[state(entry_action = "enter_shutdown")]
    fn shutdown(&mut self, code: &mut i32, context: &mut Ctx, event: &Event) -> Outcome<State> {
        if let Some(outcome) = self.on_common_events(context, event) {
            return outcome;
        }
        match event {
            Event::TailscaledExited { status } if self.daemon == Daemon::Alive => {
                self.daemon = Daemon::Gone;
                self.deadlines.remove(&Deadline::KillGrace);
                context.info(format!("Tailscaled exited ({status})"));
                context.emit(Command::Exit { code: *code });
                Handled
            }
            Event::Signal { .. } if self.daemon == Daemon::Alive => {
                context.info("Second termination signal: killing tailscaled now");
                self.deadlines.remove(&Deadline::KillGrace);
                context.emit(Command::SignalTailscaled {
                    signal: KillSignal::Kill,
                });
                Handled
            }
            Event::DeadlineExpired
                if self.daemon == Daemon::Alive
                    && self.take_expired(context, Deadline::KillGrace) =>
            {
                context.log(
                    Level::Warn,
                    format!(
                        "tailscaled did not exit within {} ms of SIGTERM; sending SIGKILL",
                        self.settings.shutdown_grace_ms
                    ),
                );
                context.emit(Command::SignalTailscaled {
                    signal: KillSignal::Kill,
                });
                Handled
            }
            _ => {
                context.ignore("shutting down");
                Handled
            }
        }
    }
}

impl Core {
    /// Events every state treats alike before its own handling: SIGUSR1
    /// and its result (the run goes on), and the end of a CLI run, which
    /// clears the record of what is in flight.
    fn on_common_events(&mut self, context: &mut Ctx, event: &Event) -> Option<Outcome<State>> {
        if let Event::CliFinished { cli, .. } = event
            && self.cli_in_flight == Some(*cli)
        {
            self.cli_in_flight = None;
        }
        match event {
            Event::Signal { signal: Sig::Usr1 } => {
                context.emit(Command::DumpTrace {
                    path: self.settings.trace_file.clone(),
                });
                Some(Handled)
            }
            Event::TraceDumped {
                path,
                steps,
                error: None,
            } => {
                context.info(format!(
                    "State trace ({steps} steps) written to {}",
                    path.display()
                ));
                Some(Handled)
            }
            Event::TraceDumped {
                path,
                error: Some(e),
                ..
            } => {
                context.log(
                    Level::Warn,
                    format!(
                        "could not write the state trace to {}: {e} (set TS_TRACE_FILE to a writable path)",
                        path.display()
                    ),
                );
                Some(Handled)
            }
            _ => None,
        }
    }

    fn fatal(&mut self, context: &mut Ctx, message: String) -> Outcome<State> {
        context.log(Level::Error, message);
        Transition(State::shutdown(1))
    }

    /// The bus watch is gone (refused, broken or closed) while tailscaled
    /// is, as far as we know, alive: re-open it after a backoff. A crashing
    /// tailscaled closes the stream just before its exit is reported; the
    /// exit then wins. While booting the boot deadline bounds the retries.
    fn lose_bus(&mut self, context: &mut Ctx, message: String) -> Outcome<State> {
        let cap = if self.deadlines.contains_key(&Deadline::Boot) {
            BUS_RETRY_CAP_BOOT_MS
        } else {
            BUS_RETRY_CAP_RUNNING_MS
        };
        self.bus_backoff_ms = (self.bus_backoff_ms * 2).clamp(BUS_RETRY_FIRST_MS, cap);
        context.log(
            Level::Warn,
            format!("{message}; watching again in {} ms", self.bus_backoff_ms),
        );
        self.deadlines
            .insert(Deadline::BusRetry, context.now_ms + self.bus_backoff_ms);
        Handled
    }

    /// After kernel preparation: the Kubernetes checks when a secret is
    /// configured, else straight to tailscaled.
    fn after_prep(&mut self, context: &mut Ctx) -> Outcome<State> {
        if !self.kube_enabled() {
            return self.spawn_tailscaled(context);
        }
        self.kube_issue(context, KubeCall::Connect);
        Transition(State::checking_kube())
    }

    /// In Kubernetes with a secret (`TS_KUBE_SECRET=""` means no calls).
    fn kube_enabled(&self) -> bool {
        self.settings.in_kubernetes && !self.settings.kube_secret.is_empty()
    }

    /// Whether containerboot writes to the secret (patch is allowed).
    fn writes_secret(&self) -> bool {
        self.kube_enabled() && self.kube.can_patch
    }

    fn kube_issue(&mut self, context: &mut Ctx, call: KubeCall) {
        // Device info is always the latest known when the call is made.
        let call = match (call, &self.kube.latest) {
            (KubeCall::StoreDeviceInfo { .. }, Some(latest)) => KubeCall::StoreDeviceInfo {
                info: latest.clone(),
            },
            (call, _) => call,
        };
        self.kube.in_flight = Some(call.clone());
        context.emit(Command::Kube { call });
    }

    /// Takes a reply for the call in flight. A transient failure schedules
    /// a retry (logged once per distinct error, not per attempt) and gives
    /// `None`; anything else ends the episode and is returned.
    fn kube_settle(
        &mut self,
        context: &mut Ctx,
        call: &KubeCall,
        reply: &KubeReply,
    ) -> Option<KubeReply> {
        if self.kube.in_flight.as_ref() != Some(call) {
            context.ignore("reply to a Kubernetes call not in flight");
            return None;
        }
        self.kube.in_flight = None;
        if let KubeReply::Failed {
            kind: FailureKind::Transient,
            error,
        } = reply
        {
            self.kube.failures += 1;
            let cap = if self.deadlines.contains_key(&Deadline::Boot) {
                KUBE_RETRY_CAP_BOOT_MS
            } else {
                KUBE_RETRY_CAP_RUNNING_MS
            };
            self.kube.backoff_ms = (self.kube.backoff_ms * 2).clamp(KUBE_RETRY_FIRST_MS, cap);
            let wait = self.kube.backoff_ms - jitter(context.now_ms, self.kube.backoff_ms / 4);
            if self.kube.last_error.as_deref() != Some(error.as_str()) {
                context.log(
                    Level::Warn,
                    format!(
                        "Kubernetes API: {} failed: {error}; retrying in {wait} ms (same failures are not logged again)",
                        call.describe()
                    ),
                );
                self.kube.last_error = Some(error.clone());
            } else {
                context.ignore(format!(
                    "same failure as before (attempt {}); retrying in {wait} ms",
                    self.kube.failures
                ));
            }
            self.kube.retry = Some(call.clone());
            self.deadlines
                .insert(Deadline::KubeRetry, context.now_ms + wait);
            return None;
        }
        if self.kube.failures > 0 {
            context.info(format!(
                "Kubernetes API: {} went through after {} failed attempts",
                call.describe(),
                self.kube.failures
            ));
        }
        self.kube.failures = 0;
        self.kube.backoff_ms = 0;
        self.kube.last_error = None;
        Some(reply.clone())
    }

    /// A failure as a sentence naming the operation, secret and namespace.
    fn kube_text(&self, call: &KubeCall, reply: &KubeReply) -> String {
        match reply {
            KubeReply::Failed { error, .. } => error.clone(),
            KubeReply::Status { code, message } => format!(
                "{} (secret {:?} in namespace {:?}): {code} {message}",
                call.describe(),
                self.settings.kube_secret,
                self.kube.namespace
            ),
            other => format!("{}: unexpected answer {other:?}", call.describe()),
        }
    }

    fn on_kube_boot(
        &mut self,
        context: &mut Ctx,
        call: &KubeCall,
        reply: KubeReply,
    ) -> Outcome<State> {
        let secret = self.settings.kube_secret.clone();
        match (call, reply) {
            (KubeCall::Connect, KubeReply::Connected { namespace, server }) => {
                context.info(format!(
                    "Kubernetes API server {server}, namespace {namespace:?}, secret {secret:?}"
                ));
                self.kube.namespace = namespace;
                // Upstream's boot context covers the checks.
                self.deadlines.insert(
                    Deadline::Boot,
                    context.now_ms + self.settings.boot_timeout_ms,
                );
                self.kube_issue(context, KubeCall::CheckPermission { verb: Verb::Get });
                Handled
            }
            (KubeCall::Connect, reply) => {
                let why = self.kube_text(call, &reply);
                self.fatal(
                    context,
                    format!(
                        "Error creating kube client: {why} (in Kubernetes, state is kept in the secret TS_KUBE_SECRET={secret:?}: give the pod its service account token, or set TS_KUBE_SECRET=\"\" and TS_STATE_DIR to keep state on disk)"
                    ),
                )
            }
            (KubeCall::CheckPermission { verb }, KubeReply::Allowed { allowed }) => {
                match verb {
                    Verb::Patch => self.kube.can_patch = allowed,
                    _ if !allowed => self.kube.missing.push(*verb),
                    _ => {}
                }
                self.after_permission(context, *verb)
            }
            (KubeCall::CheckPermission { verb }, reply @ KubeReply::Status { .. }) => {
                // Upstream: an error checking a verb is logged, not fatal.
                context.log(
                    Level::Warn,
                    format!(
                        "error checking {verb} permission on secret {secret}: {}",
                        self.kube_text(call, &reply)
                    ),
                );
                if *verb == Verb::Patch {
                    self.kube.can_patch = false;
                }
                self.after_permission(context, *verb)
            }
            // Unlike upstream (which logs every error here), a 401 that
            // survived a token re-read, a TLS failure or a malformed answer
            // is fatal: every later call would fail the same way.
            (KubeCall::CheckPermission { .. }, reply) => {
                let why = self.kube_text(call, &reply);
                self.fatal(
                    context,
                    format!("Some Kubernetes permissions could not be checked: {why}"),
                )
            }
            (KubeCall::ReadAuthKey, KubeReply::Secret { authkey: Some(key) }) => {
                // Pulling keys from the secret came with the patch
                // permission, so the key can be removed after login and no
                // reusable key is left lying around.
                if !self.kube.can_patch {
                    return self.fatal(context, "authkey found in TS_KUBE_SECRET, but the pod doesn't have patch permissions on the secret to manage the authkey.".into());
                }
                context.info("Using authkey found in kube secret");
                self.settings.auth_key = Some(key);
                self.spawn_tailscaled(context)
            }
            (KubeCall::ReadAuthKey, KubeReply::Secret { authkey: None }) => {
                context.info("No authkey found in kube secret and TS_AUTHKEY not provided, login will be interactive if needed.");
                self.spawn_tailscaled(context)
            }
            (KubeCall::ReadAuthKey, KubeReply::Status { code: 404, .. }) => {
                let ns = self.kube.namespace.clone();
                self.fatal(
                    context,
                    format!(
                        "Getting authkey from kube secret: secret {secret:?} not found in namespace {ns:?}: create it (it may be empty; tailscaled keeps its state there) or set TS_KUBE_SECRET to the name of an existing secret"
                    ),
                )
            }
            (KubeCall::ReadAuthKey, reply) => {
                let why = self.kube_text(call, &reply);
                self.fatal(context, format!("Getting authkey from kube secret: {why}"))
            }
            _ => {
                context.ignore("Kubernetes reply not expected while checking");
                Handled
            }
        }
    }

    fn after_permission(&mut self, context: &mut Ctx, verb: Verb) -> Outcome<State> {
        match verb {
            Verb::Get => {
                self.kube_issue(context, KubeCall::CheckPermission { verb: Verb::Update });
                Handled
            }
            Verb::Update => {
                if !self.kube.missing.is_empty() {
                    let missing: Vec<String> = self
                        .kube
                        .missing
                        .iter()
                        .map(|v| {
                            format!(
                                "missing {v} permission on secret {:?} in namespace {:?}",
                                self.settings.kube_secret, self.kube.namespace
                            )
                        })
                        .collect();
                    return self.fatal(
                        context,
                        format!(
                            "Some Kubernetes permissions are missing, please check your RBAC configuration: {}",
                            missing.join("; ")
                        ),
                    );
                }
                self.kube_issue(context, KubeCall::CheckPermission { verb: Verb::Patch });
                Handled
            }
            Verb::Patch => {
                if self.settings.auth_key.is_none()
                    && self.settings.auth_mode() != AuthMode::ConfigFile
                {
                    self.kube_issue(context, KubeCall::ReadAuthKey);
                    return Handled;
                }
                self.spawn_tailscaled(context)
            }
        }
    }

    fn on_kube_running(
        &mut self,
        context: &mut Ctx,
        call: &KubeCall,
        reply: KubeReply,
    ) -> Outcome<State> {
        match (call, reply) {
            (KubeCall::RemoveAuthKey, KubeReply::Done) => {
                self.kube.remove_authkey = false;
            }
            (KubeCall::RemoveAuthKey, reply) => {
                let why = self.kube_text(call, &reply);
                return self.fatal(context, format!("deleting authkey from kube secret: {why}"));
            }
            (KubeCall::ProbeSecret, KubeReply::Secret { .. }) => {
                // A probe is only made with device info in hand.
                if let Some(info) = self.kube.latest.clone() {
                    self.kube_issue(context, KubeCall::StoreDeviceInfo { info });
                }
                return Handled;
            }
            (
                KubeCall::ProbeSecret,
                reply @ KubeReply::Status {
                    code: 400..=499, ..
                },
            ) => {
                // Upstream: a 4xx means the secret is not ours to write.
                context.info(format!(
                    "Not storing device info: {}",
                    self.kube_text(call, &reply)
                ));
                self.kube.stored = self
                    .kube
                    .latest
                    .as_ref()
                    .map(|l| (l.id.clone(), l.fqdn.clone()));
            }
            (KubeCall::StoreDeviceInfo { info }, KubeReply::Done) => {
                self.kube.stored = Some((info.id.clone(), info.fqdn.clone()));
            }
            (KubeCall::ProbeSecret | KubeCall::StoreDeviceInfo { .. }, reply) => {
                let why = self.kube_text(call, &reply);
                return self.fatal(context, format!("storing device ID in kube secret: {why}"));
            }
            _ => {
                context.ignore("Kubernetes reply not expected while running");
                return Handled;
            }
        }
        self.kube_next(context);
        self.maybe_startup_complete(context);
        Handled
    }

    /// Starts the next Kubernetes write, if one is due and none is under
    /// way: the auth key removal, then device info whose (id, name) differs
    /// from what was last stored.
    fn kube_next(&mut self, context: &mut Ctx) {
        if self.kube.in_flight.is_some() || self.kube.retry.is_some() {
            return;
        }
        if self.kube.remove_authkey {
            self.kube_issue(context, KubeCall::RemoveAuthKey);
            return;
        }
        let due = match (&self.kube.latest, &self.kube.stored) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(l), Some((id, fqdn))) => l.key() != (id.as_str(), fqdn.as_str()),
        };
        if due {
            self.kube_issue(context, KubeCall::ProbeSecret);
        }
    }

    fn spawn_tailscaled(&mut self, context: &mut Ctx) -> Outcome<State> {
        context.info("Starting tailscaled");
        context.emit(Command::SpawnTailscaled {
            argv: argv::tailscaled(&self.settings),
        });
        self.daemon = Daemon::Alive;
        // With Kubernetes the boot deadline already runs (it covers the checks).
        self.deadlines
            .entry(Deadline::Boot)
            .or_insert(context.now_ms + self.settings.boot_timeout_ms);
        context.info("Waiting for tailscaled socket");
        context.emit(Command::WaitSocket {
            path: self.settings.socket.clone(),
        });
        Transition(State::waiting_socket())
    }

    fn open_watch(&mut self, context: &mut Ctx, mask: u32) {
        self.deadlines.remove(&Deadline::BusRetry);
        self.watch_mask = mask;
        self.watch += 1;
        context.emit(Command::WatchBus {
            watch: self.watch,
            mask,
        });
    }

    fn symlink_socket(&mut self, context: &mut Ctx) {
        if self.settings.socket == Path::new(DEFAULT_SOCKET) {
            return;
        }
        context.emit(Command::SymlinkSocket {
            link: under_root(&self.settings.root, DEFAULT_SOCKET),
            target: self.settings.socket.clone(),
        });
    }

    /// Starts `tailscale up` unless this boot already logged in.
    fn run_up(&mut self, context: &mut Ctx) -> bool {
        if self.did_login {
            return false;
        }
        self.did_login = true;
        context.info("Running 'tailscale up'");
        self.cli_in_flight = Some(Cli::Up);
        context.emit(Command::RunCli {
            cli: Cli::Up,
            argv: argv::up(&self.settings),
        });
        true
    }

    fn take_expired(&mut self, context: &Ctx, which: Deadline) -> bool {
        match self.deadlines.get(&which) {
            Some(&at) if at <= context.now_ms => {
                self.deadlines.remove(&which);
                true
            }
            _ => false,
        }
    }

    fn boot_expired(&mut self, context: &Ctx) -> bool {
        self.take_expired(context, Deadline::Boot)
    }

    fn on_netmap(&mut self, context: &mut Ctx, nm: &NetMapView) -> Outcome<State> {
        let addrs = nm.self_node.addresses.clone();
        let ips_changed = self.current_ips.as_ref() != Some(&addrs);

        if let Some(fqdn) = self.settings.tailnet_target_fqdn.clone() {
            let Some(peer) = nm.matching_peers.first() else {
                context.info(format!("Tailscale node \"{fqdn}\" not found; it either does not exist, or not reachable because of ACLs"));
                return Handled;
            };
            let egress = peer.addresses.clone();
            if self.current_egress.as_ref() != Some(&egress) && !egress.is_empty() {
                for target in &egress {
                    let dst = target.ip();
                    if dst.is_ipv6() {
                        context.info("Not installing egress forwarding rules for IPv6 as this is currently not supported");
                        continue;
                    }
                    context.info(format!("Installing forwarding rules for destination {dst}"));
                    let purpose = RulePurpose::Egress {
                        destination: dst.to_string(),
                        by_fqdn: true,
                    };
                    match rules::egress(dst, &addrs) {
                        Ok(r) => self.install(context, purpose, r),
                        Err(e) => {
                            return self.fatal(
                                context,
                                format!("installing egress proxy rules for destination {dst}: {e}"),
                            );
                        }
                    }
                }
                self.current_egress = Some(egress);
            }
        }
        if let Some(dst) = self.settings.dest_ip
            && !addrs.is_empty()
            && ips_changed
        {
            context.info("Installing proxy rules");
            match rules::ingress(dst, &addrs) {
                Ok(r) => self.install(context, RulePurpose::Ingress, r),
                Err(e) => {
                    return self.fatal(context, format!("installing ingress proxy rules: {e}"));
                }
            }
        }
        if let Some(dst) = self.settings.tailnet_target_ip
            && ips_changed
            && !addrs.is_empty()
        {
            context.info(format!("Installing forwarding rules for destination {dst}"));
            let purpose = RulePurpose::Egress {
                destination: dst.to_string(),
                by_fqdn: false,
            };
            match rules::egress(dst, &addrs) {
                Ok(r) => self.install(context, purpose, r),
                Err(e) => {
                    return self.fatal(context, format!("installing egress proxy rules: {e}"));
                }
            }
        }
        if self.writes_secret() {
            self.kube.latest = Some(DeviceInfo {
                id: nm.self_node.stable_id.clone(),
                fqdn: nm.self_node.name.clone(),
                ips: addrs.iter().map(|a| a.ip()).collect(),
            });
            self.kube_next(context);
        }
        self.current_ips = Some(addrs);
        self.maybe_startup_complete(context);
        Handled
    }

    fn install(&mut self, context: &mut Ctx, purpose: RulePurpose, rules: Vec<rules::Rule>) {
        self.pending_rules += 1;
        context.emit(Command::InstallRules { purpose, rules });
    }

    fn maybe_startup_complete(&mut self, context: &mut Ctx) {
        if self.startup_done || self.pending_rules > 0 {
            return;
        }
        let have_ips = self.current_ips.as_ref().is_some_and(|a| !a.is_empty());
        if self.settings.wants_proxy() && !have_ips {
            return;
        }
        if self.writes_secret() && (self.kube.remove_authkey || self.kube.stored.is_none()) {
            return;
        }
        self.startup_done = true;
        context.emit(Command::AnnounceStartupComplete);
    }
}

/// A deterministic jitter in `0..=span` from the time of the failure, so
/// replicas failing together spread out while a replay of the trace still
/// makes the same decisions.
fn jitter(now_ms: u64, span: u64) -> u64 {
    // SplitMix64's finaliser.
    let mut z = now_ms.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % (span + 1)
}

/// Why a CLI run failed, or `None` if it succeeded.
fn cli_error(cli: Cli, outcome: &CliOutcome) -> Option<String> {
    match outcome {
        CliOutcome::Exited {
            status: ProcessExit::Code(0),
            ..
        } => None,
        CliOutcome::Exited { status, stderr } => {
            let stderr = stderr.trim();
            Some(if stderr.is_empty() {
                format!("tailscale {cli} failed: {status}")
            } else {
                format!("tailscale {cli} failed: {status}: {stderr}")
            })
        }
        CliOutcome::SpawnFailed { message } => Some(format!("tailscale {cli} failed: {message}")),
    }
}

/// `path` (absolute) resolved under `root`.
pub fn under_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Which forwarding sysctls kernel mode needs (protocols.md §6): from the
/// families of `TS_DEST_IP`, `TS_TAILNET_TARGET_IP` and `TS_ROUTES`; an
/// FQDN target counts as IPv4, as upstream.
pub fn forwarding_families(s: &Settings) -> (bool, bool) {
    let (mut v4, mut v6) = (false, false);
    let mut note = |ip: std::net::IpAddr| {
        if ip.is_ipv4() { v4 = true } else { v6 = true }
    };
    if let Some(ip) = s.dest_ip {
        note(ip);
    }
    if let Some(ip) = s.tailnet_target_ip {
        note(ip);
    }
    if let Some(routes) = &s.routes {
        for r in routes.split(',').filter(|r| !r.is_empty()) {
            if let Ok(net) = r.parse::<IpNetwork>() {
                note(net.ip());
            }
        }
    }
    if s.tailnet_target_fqdn.is_some() {
        v4 = true;
    }
    (v4, v6)
}

/// The name of a state as traces print it.
pub fn state_name(s: &State) -> String {
    match s {
        State::Starting {} => "Starting".into(),
        State::CheckingKube {} => "CheckingKube".into(),
        State::WaitingSocket {} => "WaitingSocket".into(),
        State::Authenticating { up_running } => {
            if *up_running {
                "Authenticating(up running)".into()
            } else {
                "Authenticating".into()
            }
        }
        State::Running { phase } => format!("Running({phase:?})"),
        State::Shutdown { code } => format!("Shutdown(exit {code})"),
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
    pub state_before: String,
    /// The event (none for initialisation).
    pub event: Option<Event>,
    /// The state after.
    pub state_after: String,
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
}

impl Machine {
    /// A machine for `settings`, and its initialisation step.
    pub fn new(settings: Settings) -> (Machine, Step) {
        let core = Core {
            settings,
            daemon: Daemon::NotStarted,
            did_login: false,
            symlinked: false,
            watch: 0,
            deadlines: BTreeMap::new(),
            current_ips: None,
            current_egress: None,
            pending_rules: 0,
            startup_done: false,
            watch_mask: 0,
            bus_backoff_ms: 0,
            cli_in_flight: None,
            kube: KubeProgress::default(),
        };
        let mut ctx = Ctx::default();
        let sm = core
            .uninitialized_state_machine()
            .init_with_context(&mut ctx);
        let name = state_name(sm.state());
        let step = Step {
            seq: 0,
            t_ms: 0,
            state_before: name.clone(),
            event: None,
            state_after: name,
            commands: ctx.commands,
            note: None,
        };
        (Machine { sm, seq: 0 }, step)
    }

    /// Handles one event at time `now_ms` and returns the whole step.
    #[must_use]
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Step {
        let before = state_name(self.sm.state());
        let mut ctx = Ctx {
            now_ms,
            ..Ctx::default()
        };
        self.sm.handle_with_context(&event, &mut ctx);
        self.seq += 1;
        Step {
            seq: self.seq,
            t_ms: now_ms,
            state_before: before,
            event: Some(event),
            state_after: state_name(self.sm.state()),
            commands: ctx.commands,
            note: ctx.note,
        }
    }

    /// When the shell should next send `DeadlineExpired`, if ever.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        self.sm.inner().deadlines.values().min().copied()
    }

    /// The current state's name.
    pub fn state_name(&self) -> String {
        state_name(self.sm.state())
    }
}

#[cfg(test)]
mod tests;
