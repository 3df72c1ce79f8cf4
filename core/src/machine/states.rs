//! The states and what each does with each event: one `match` per state,
//! one arm per event. The Kubernetes session and the proxy planning are
//! values (`kube_session.rs`, `proxy.rs`); the arms here map their answers
//! to transitions.
//!
//! ```text
//! top            SIGUSR1 and the trace dump; notes anything unhandled
//! ├─ live        termination signals, tailscaled exiting, bus and
//! │  │           Kubernetes retries
//! │  ├─ Starting → CheckingKube → WaitingSocket → Authenticating → Running
//! └─ Shutdown    tailscaled was sent SIGTERM; exit once it is gone
//! ```

use super::argv;
use super::command::{Command, KillSignal, Level};
use super::config_reload::ConfigReloadSession;
use super::ctx::{Backoff, Ctx, Deadline};
use super::event::{Cli, CliOutcome, Event, NetMapView, PrepStep, ProcessExit, Sig};
use super::kube::{DeviceInfo, KubeTarget};
use super::kube_session::{BootCheck, KubeSession};
use super::proxy::{NetmapOutcome, ProxyState, forwarding_families};
use super::serve::ServeSession;
use crate::ipn::{IpnState, mask};
use crate::secret::Secret;
use crate::settings::{AuthMode, Settings};
use crate::trace::event_kind;
use serde::{Deserialize, Serialize};
use statig::prelude::*;
use std::path::{Path, PathBuf};

/// First wait before re-opening a lost bus watch; doubles per failure.
pub const BUS_RETRY_FIRST_MS: u64 = 500;
/// Longest wait between bus watch attempts while booting.
pub const BUS_RETRY_CAP_BOOT_MS: u64 = 4_000;
/// Longest wait between bus watch attempts once Running.
pub const BUS_RETRY_CAP_RUNNING_MS: u64 = 30_000;
/// Where the CLI looks for the daemon without `--socket`; containerboot
/// links it to `TS_SOCKET` when that is elsewhere.
pub const CLI_SOCKET_LINK: &str = "/var/run/tailscale/tailscaled.sock";

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

/// Whether tailscaled is, as far as the core knows, alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Daemon {
    NotStarted,
    Alive,
    Gone,
}

/// `tailscale up` in this boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpRun {
    /// Not started.
    NotRun,
    /// In flight: bus messages wait until it ends.
    Running,
    /// Ended (each boot logs in at most once).
    Done,
}

/// Which part of the running phase the machine is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunPhase {
    /// `tailscale set` is running (auth-once).
    Setting,
    /// Watching the bus for netmap changes.
    Watching,
}

/// What every state may read: the settings, and what outlives a state.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    /// `TS_AUTHKEY`, or the key found in the Kubernetes secret.
    auth_key: Option<Secret>,
    daemon: Daemon,
    /// The number of the current bus watch; older watches' events are stale.
    watch: u64,
    watch_mask: u32,
    bus_backoff: Backoff,
    /// The secret session, when state is kept in a Kubernetes secret.
    kube: Option<KubeSession>,
    /// The serve config session, when `TS_SERVE_CONFIG` is set.
    serve: Option<ServeSession>,
    /// The config-file reload session, when `EXPERIMENTAL_TS_CONFIGFILE_PATH` is set.
    reload: Option<ConfigReloadSession>,
    /// A `DumpTrace` is out and its `TraceDumped` not back: SIGUSR1s
    /// meanwhile are coalesced into it.
    dump_pending: bool,
    /// The netmap as last known in Running: the whole one a watch starts
    /// with, with the deltas since (`SelfChange`, peer changes) applied.
    netmap: Option<NetMapView>,
    /// A `FetchDnsConfig` is out; `Some(true)`: another is due after it.
    dns_fetch: Option<bool>,
    /// Paths whose watch fell back to a slow check (each logged once).
    watch_fallbacks: Vec<std::path::PathBuf>,
}

impl Core {
    /// The core for `settings`, before its first event.
    pub fn new(settings: Settings) -> Core {
        let kube = match (&settings.kube, settings.kube_state_secret()) {
            (Some(env), Some(secret)) => {
                let target = KubeTarget {
                    host: env.host.clone(),
                    port: env.port,
                    root: settings.test.root.clone(),
                    secret: secret.to_string(),
                    timeout_ms: env.timeout_ms,
                };
                let read_authkey =
                    settings.auth_key.is_none() && settings.auth_mode() != AuthMode::ConfigFile;
                Some(KubeSession::new(target, read_authkey))
            }
            _ => None,
        };
        let serve = settings
            .serve_config
            .clone()
            .map(|path| ServeSession::new(path, settings.socket.clone()));
        let reload = settings
            .config_file
            .clone()
            .map(|path| ConfigReloadSession::new(path, settings.socket.clone()));
        Core {
            serve,
            reload,
            auth_key: settings.auth_key.clone(),
            settings,
            daemon: Daemon::NotStarted,
            watch: 0,
            watch_mask: 0,
            bus_backoff: Backoff::default(),
            kube,
            dump_pending: false,
            netmap: None,
            dns_fetch: None,
            watch_fallbacks: Vec::new(),
        }
    }
}

#[state_machine(
    initial = "State::starting()",
    state(derive(Debug, Clone, PartialEq, Serialize, Deserialize))
)]
impl Core {
    /// What every state, live or shutting down, handles alike.
    #[superstate]
    fn top(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Signal { signal: Sig::Usr1 } if self.dump_pending => {
                context.ignore("a dump of the trace is under way; this SIGUSR1 is part of it");
                Handled
            }
            Event::Signal { signal: Sig::Usr1 } => {
                self.dump_pending = true;
                context.emit(Command::DumpTrace {
                    path: self.settings.trace_file.clone(),
                });
                Handled
            }
            Event::Signal { signal: Sig::Usr2 } => {
                context.info("Received Usr2 signal: it has no meaning for containerboot, ignored");
                Handled
            }
            Event::TraceDumped {
                path,
                steps,
                error: None,
            } => {
                self.dump_pending = false;
                context.info(format!(
                    "State trace ({steps} steps) written to {}",
                    path.display()
                ));
                Handled
            }
            Event::TraceDumped {
                path,
                error: Some(e),
                ..
            } => {
                self.dump_pending = false;
                context.log(
                    Level::Warn,
                    format!(
                        "could not write the state trace to {}: {e} (set TS_TRACE_FILE to a writable path)",
                        path.display()
                    ),
                );
                Handled
            }
            Event::WatchFallback {
                path,
                error,
                sysctl,
                every_ms,
            } => {
                if self.watch_fallbacks.contains(path) {
                    context.ignore("the fallback for this path was logged before");
                    return Handled;
                }
                self.watch_fallbacks.push(path.clone());
                let fix = match sysctl {
                    Some(name) => format!(
                        "raise the sysctl {name} on the node (it counts per user, across all containers) to have changes seen at once again"
                    ),
                    None => "changes are seen late, not lost".to_string(),
                };
                context.log(
                    Level::Warn,
                    format!(
                        "inotify is unavailable for {}: {error}; checking it every {} instead: {fix}",
                        path.display(),
                        if *every_ms < 1000 {
                            format!("{every_ms} ms")
                        } else {
                            format!("{} s", every_ms / 1000)
                        }
                    ),
                );
                Handled
            }
            Event::Timeout { deadline } => {
                let why = format!("{deadline:?} timer not used in {}", context.expecting);
                context.ignore(why);
                Handled
            }
            _ => {
                let why = format!(
                    "{} not expected in {}",
                    event_kind(event),
                    context.expecting
                );
                context.ignore(why);
                Handled
            }
        }
    }

    /// Everything every live state handles the same way.
    #[superstate(superstate = "top")]
    fn live(&mut self, context: &mut Ctx, event: &Event) -> Outcome<State> {
        match event {
            Event::Signal {
                signal: Sig::Usr1 | Sig::Usr2,
            } => Super,
            Event::Signal { signal } => {
                context.info(format!("Received {signal:?} signal, shutting down"));
                Transition(State::shutdown(0, false))
            }
            Event::TailscaledExited { status } => {
                self.daemon = Daemon::Gone;
                let code = exit_code_for_unrequested_exit(*status);
                context.log(
                    Level::Error,
                    format!("Tailscaled exited ({status}); exiting with code {code}"),
                );
                Transition(State::shutdown(code, false))
            }
            Event::TailscaledSpawnFailed { error } => {
                self.daemon = Daemon::Gone;
                self.fatal(
                    context,
                    format!("failed to bring up tailscale: starting tailscaled failed: {error}"),
                )
            }
            Event::BusOpened { watch } if *watch == self.watch => {
                self.bus_backoff.reset();
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
            Event::Timeout {
                deadline: Deadline::BusRetry,
            } => {
                self.open_watch(context, self.watch_mask);
                Handled
            }
            Event::Timeout {
                deadline: Deadline::KubeRetry,
            } => {
                if let Some(kube) = &mut self.kube {
                    kube.retry_due(context);
                }
                Handled
            }
            _ => Super,
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
                    root: self.settings.test.root.clone(),
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
                        if self.settings.kube.is_some() {
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
                let Some(kube) = &mut self.kube else {
                    return Super;
                };
                match kube.on_boot_reply(context, call, reply) {
                    BootCheck::Pending => Handled,
                    BootCheck::Connected => {
                        // Upstream's boot context covers the checks.
                        context.arm(Deadline::Boot, self.settings.boot_timeout_ms);
                        Handled
                    }
                    BootCheck::Ready { auth_key } => {
                        if auth_key.is_some() {
                            self.auth_key = auth_key;
                        }
                        self.spawn_tailscaled(context)
                    }
                    BootCheck::Fatal(message) => self.fatal(context, message),
                }
            }
            Event::Timeout {
                deadline: Deadline::Boot,
            } => {
                let doing = self
                    .kube
                    .as_ref()
                    .map(KubeSession::doing)
                    .unwrap_or_default();
                self.fatal(
                    context,
                    format!(
                        "timed out after {} ms in CheckingKube {doing} (TS_BOOT_TIMEOUT)",
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
                Transition(State::authenticating(UpRun::NotRun, false))
            }
            Event::SocketWaitFailed { error } => {
                self.fatal(context, format!("Waiting for tailscaled socket: {error}"))
            }
            Event::Timeout {
                deadline: Deadline::Boot,
            } => self.fatal(
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

    /// Watching the bus until tailscaled reports Running; `up` is this
    /// boot's `tailscale up`, `symlinked` whether a watch has opened.
    #[state(superstate = "live")]
    fn authenticating(
        &mut self,
        up: &mut UpRun,
        symlinked: &mut bool,
        context: &mut Ctx,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::BusOpened { watch } if *watch == self.watch => {
                self.bus_backoff.reset();
                if !*symlinked {
                    *symlinked = true;
                    self.symlink_socket(context);
                }
                if self.settings.auth_mode() == AuthMode::AlwaysAuth {
                    self.run_up(context, up);
                }
                Handled
            }
            Event::BusFailed { watch, error } if *watch == self.watch => {
                let what = if !*symlinked {
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
            Event::Bus { .. } if *up == UpRun::Running => {
                context.ignore("tailscale up is running; the bus is read again after it");
                Handled
            }
            Event::Bus { message, .. } => match message.state {
                Some(IpnState::NeedsLogin) => {
                    if self.settings.auth_mode() == AuthMode::ConfigFile {
                        return self.fatal(context, "invalid state: tailscaled daemon started with a config file, but tailscale is not logged in: ensure you pass a valid auth key in the config file.".to_string());
                    }
                    self.run_up(context, up);
                    Handled
                }
                Some(IpnState::NeedsMachineAuth) => {
                    context.info("machine authorization required, please visit the admin panel");
                    Handled
                }
                Some(IpnState::Running) => {
                    context.timers.clear(Deadline::Boot);
                    let proxy = ProxyState::new(&self.settings);
                    if let Some(serve) = &mut self.serve {
                        serve.start(context);
                    }
                    if let Some(reload) = &mut self.reload {
                        reload.start(context);
                    }
                    if self.settings.auth_mode() == AuthMode::AuthOnce {
                        context.info("Running 'tailscale set'");
                        context.cli = Some(Cli::Set);
                        context.emit(Command::RunCli {
                            cli: Cli::Set,
                            argv: argv::set(&self.settings),
                        });
                        Transition(State::running(RunPhase::Setting, proxy, false))
                    } else {
                        self.open_watch(context, mask::REWATCH);
                        Transition(State::running(RunPhase::Watching, proxy, false))
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
            } if *up == UpRun::Running => {
                *up = UpRun::Done;
                match cli_error(Cli::Up, outcome) {
                    None => {
                        self.open_watch(context, mask::REWATCH);
                        Handled
                    }
                    Some(e) => self.fatal(context, format!("failed to auth tailscale: {e}")),
                }
            }
            Event::Timeout {
                deadline: Deadline::Boot,
            } => {
                let waiting = if *up == UpRun::Running {
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

    /// Logged in: applying settings, then following netmap changes with
    /// the proxy rules; `announced` once startup is complete.
    #[state(superstate = "live")]
    fn running(
        &mut self,
        phase: &mut RunPhase,
        proxy: &mut ProxyState,
        announced: &mut bool,
        context: &mut Ctx,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::CliFinished {
                cli: Cli::Set,
                outcome,
            } if *phase == RunPhase::Setting => match cli_error(Cli::Set, outcome) {
                None => {
                    *phase = RunPhase::Watching;
                    if let Some(kube) = self.kube.as_mut().filter(|k| k.writes()) {
                        kube.remove_authkey(context);
                    }
                    self.open_watch(context, mask::REWATCH);
                    Handled
                }
                Some(e) => self.fatal(context, format!("failed to auth tailscale: {e}")),
            },
            Event::Bus { watch, .. } if *watch != self.watch => {
                context.ignore("message from a replaced bus watch");
                Handled
            }
            Event::Bus { .. } if *phase == RunPhase::Setting => {
                context.ignore("tailscale set is running; the bus is read again after it");
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
                let nm = match (&message.net_map, &mut self.netmap) {
                    (Some(nm), _) => nm.clone(),
                    (None, Some(known)) if message.has_delta() => {
                        known.apply_delta(message);
                        known.clone()
                    }
                    (None, None) if message.has_delta() => {
                        context.ignore("a netmap change before the first netmap");
                        return Handled;
                    }
                    (None, _) => return Handled,
                };
                self.netmap = Some(nm.clone());
                let nm = &nm;
                // tailscaled 1.102 sends no DNS changes on the bus: after a
                // SelfChange the cert domain is read again, as upstream.
                if message.net_map.is_none() && message.self_change.is_some() {
                    self.fetch_dns_config(context);
                }
                if let Some(serve) = &mut self.serve {
                    serve.on_netmap(context, nm.cert_domain.as_deref());
                }
                self.sync_https_endpoint(context);
                match proxy.on_netmap(&self.settings, nm, context) {
                    Err(e) => self.fatal(context, e),
                    Ok(NetmapOutcome::TargetMissing) => Handled,
                    Ok(NetmapOutcome::Applied) => {
                        if let Some(kube) = self.kube.as_mut().filter(|k| k.writes()) {
                            let info = DeviceInfo {
                                id: nm.self_node.stable_id.clone(),
                                fqdn: nm.self_node.name.clone(),
                                ips: nm.self_node.addresses.iter().map(|a| a.ip()).collect(),
                            };
                            kube.device_info(context, info);
                        }
                        self.maybe_startup_complete(context, proxy, announced);
                        Handled
                    }
                }
            }
            Event::BusFailed { watch, error } if *watch == self.watch => {
                self.lose_bus(context, format!("failed to read from tailscaled: {error}"))
            }
            Event::BusEnded { watch } if *watch == self.watch => self.lose_bus(
                context,
                "failed to read from tailscaled: the IPN bus stream ended".to_string(),
            ),
            Event::Kube { call, reply } => {
                let Some(kube) = &mut self.kube else {
                    return Super;
                };
                match kube.on_running_reply(context, call, reply) {
                    Err(e) => self.fatal(context, e),
                    Ok(true) => {
                        self.maybe_startup_complete(context, proxy, announced);
                        Handled
                    }
                    Ok(false) => Handled,
                }
            }
            Event::RulesReconciled { outcome } => {
                if let Err(e) = proxy.on_reconciled(outcome, *announced, context) {
                    return self.fatal(context, e);
                }
                self.maybe_startup_complete(context, proxy, announced);
                Handled
            }
            Event::Timeout {
                deadline: Deadline::FirewallRecheck,
            } => {
                proxy.recheck_due(context);
                Handled
            }
            Event::ServeConfigRead { content } if self.serve.is_some() => {
                if let Some(serve) = &mut self.serve {
                    serve.on_file(context, content);
                }
                self.sync_https_endpoint(context);
                Handled
            }
            Event::ServeConfigUnreadable { error } if self.serve.is_some() => {
                if let Some(serve) = &mut self.serve {
                    serve.on_file_unreadable(context, error);
                }
                Handled
            }
            Event::DnsConfigFetched { cert_domain, error } => {
                let again = self.dns_fetch.take() == Some(true);
                match error {
                    Some(e) => context.log(
                        Level::Warn,
                        format!("error refreshing DNS config from tailscaled: {e}; the cert domain stays as it was"),
                    ),
                    None => {
                        if let Some(known) = &mut self.netmap {
                            known.cert_domain = cert_domain.clone();
                        }
                        if let Some(serve) = &mut self.serve {
                            serve.on_netmap(context, cert_domain.as_deref());
                        }
                        self.sync_https_endpoint(context);
                    }
                }
                if again {
                    self.fetch_dns_config(context);
                }
                Handled
            }
            Event::ServeConfigSet { error } if self.serve.is_some() => {
                if let Some(serve) = &mut self.serve {
                    serve.on_set(context, error.as_deref());
                }
                self.sync_https_endpoint(context);
                Handled
            }
            Event::Timeout {
                deadline: Deadline::ServeRetry,
            } if self.serve.is_some() => {
                if let Some(serve) = &mut self.serve {
                    serve.retry_due(context);
                }
                self.sync_https_endpoint(context);
                Handled
            }
            Event::ConfigFileRead { digest, problem } if self.reload.is_some() => {
                if let Some(reload) = &mut self.reload {
                    reload.on_file(context, digest, problem.as_deref());
                }
                Handled
            }
            Event::ConfigFileUnreadable { error } if self.reload.is_some() => {
                if let Some(reload) = &mut self.reload {
                    reload.on_file_unreadable(context, error);
                }
                Handled
            }
            Event::ConfigReloaded { outcome } if self.reload.is_some() => {
                if let Some(reload) = &mut self.reload {
                    reload.on_reloaded(context, outcome);
                }
                Handled
            }
            Event::Timeout {
                deadline: Deadline::ConfigReloadRetry,
            } if self.reload.is_some() => {
                if let Some(reload) = &mut self.reload {
                    reload.retry_due(context);
                }
                Handled
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_shutdown(&mut self, code: &mut i32, context: &mut Ctx) {
        context.timers.clear(Deadline::Boot);
        context.timers.clear(Deadline::BusRetry);
        context.timers.clear(Deadline::KubeRetry);
        context.timers.clear(Deadline::FirewallRecheck);
        context.timers.clear(Deadline::ServeRetry);
        context.timers.clear(Deadline::ConfigReloadRetry);
        if let Some(cli) = context.cli {
            context.emit(Command::SignalCli {
                cli,
                signal: KillSignal::Term,
            });
        }
        if self.daemon == Daemon::Alive {
            context.emit(Command::SignalTailscaled {
                signal: KillSignal::Term,
            });
        }
        self.exit_when_all_gone(*code, context);
    }

    /// Stopping: tailscaled and a CLI run in flight were sent SIGTERM; both
    /// get `TS_SHUTDOWN_GRACE`, then SIGKILL; exit once both are gone.
    /// `killed`: SIGKILL was sent.
    #[state(superstate = "top", entry_action = "enter_shutdown")]
    fn shutdown(
        &mut self,
        code: &mut i32,
        killed: &mut bool,
        context: &mut Ctx,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::Signal {
                signal: Sig::Usr1 | Sig::Usr2,
            }
            | Event::TraceDumped { .. } => Super,
            Event::TailscaledExited { status } if self.daemon == Daemon::Alive => {
                self.daemon = Daemon::Gone;
                context.info(format!("Tailscaled exited ({status})"));
                // Killed by someone else's signal, or exited with a code
                // of its own, while containerboot was stopping over a
                // failure: the failure (a CLI run that lost its daemon) was
                // a consequence; the daemon's end is the cause, whichever
                // was reported first. Our own SIGTERM ends it with signal 15
                // or code 0, which leaves the failure's code.
                let own_end = match status {
                    ProcessExit::Signal(n) => *n != 15,
                    ProcessExit::Code(c) => *c != 0,
                };
                if *code == 1 && !*killed && own_end {
                    *code = exit_code_for_unrequested_exit(*status);
                }
                self.exit_when_all_gone(*code, context);
                Handled
            }
            Event::TailscaledSpawnFailed { error } if self.daemon == Daemon::Alive => {
                self.daemon = Daemon::Gone;
                context.info(format!("tailscaled could not be started: {error}"));
                self.exit_when_all_gone(*code, context);
                Handled
            }
            Event::CliFinished { .. } if self.daemon != Daemon::Alive => {
                self.exit_when_all_gone(*code, context);
                Handled
            }
            Event::Signal { .. } if self.daemon == Daemon::Alive || context.cli.is_some() => {
                context.info("Second termination signal: killing tailscaled now");
                *killed = true;
                self.kill_all(context);
                Handled
            }
            Event::Timeout {
                deadline: Deadline::KillGrace,
            } => {
                let what = match (self.daemon == Daemon::Alive, context.cli) {
                    (true, None) => "tailscaled".to_string(),
                    (true, Some(cli)) => format!("tailscaled and tailscale {cli}"),
                    (false, Some(cli)) => format!("tailscale {cli}"),
                    (false, None) => return Handled,
                };
                context.log(
                    Level::Warn,
                    format!(
                        "{what} did not exit within {} ms of SIGTERM; sending SIGKILL",
                        self.settings.shutdown_grace_ms
                    ),
                );
                *killed = true;
                self.kill_all(context);
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
    /// Exits with `code` once tailscaled and the CLI run in flight are both
    /// gone; until then the kill grace runs.
    fn exit_when_all_gone(&mut self, code: i32, context: &mut Ctx) {
        if self.daemon != Daemon::Alive && context.cli.is_none() {
            context.timers.clear(Deadline::KillGrace);
            context.emit(Command::Exit { code });
        } else if !context.timers.is_armed(Deadline::KillGrace) {
            context.arm(Deadline::KillGrace, self.settings.shutdown_grace_ms);
        }
    }

    /// SIGKILL to tailscaled and the CLI run in flight, whichever still run.
    fn kill_all(&mut self, context: &mut Ctx) {
        context.timers.clear(Deadline::KillGrace);
        if self.daemon == Daemon::Alive {
            context.emit(Command::SignalTailscaled {
                signal: KillSignal::Kill,
            });
        }
        if let Some(cli) = context.cli {
            context.emit(Command::SignalCli {
                cli,
                signal: KillSignal::Kill,
            });
        }
    }
    /// Passes the serve session's `https_endpoint` to the secret session,
    /// when there is one that writes (patch permission).
    fn sync_https_endpoint(&mut self, context: &mut Ctx) {
        let Some(want) = self.serve.as_ref().and_then(ServeSession::https_endpoint) else {
            return;
        };
        if let Some(kube) = self.kube.as_mut().filter(|k| k.writes()) {
            kube.https_endpoint(context, want);
        }
    }

    fn fatal(&mut self, context: &mut Ctx, message: String) -> Outcome<State> {
        context.log(Level::Error, message);
        Transition(State::shutdown(1, false))
    }

    /// The bus watch is gone (refused, broken or closed) while tailscaled
    /// is, as far as we know, alive: re-open it after a backoff. A crashing
    /// tailscaled closes the stream just before its exit is reported; the
    /// exit then wins. While booting the boot deadline bounds the retries.
    fn lose_bus(&mut self, context: &mut Ctx, message: String) -> Outcome<State> {
        let cap = if context.timers.is_armed(Deadline::Boot) {
            BUS_RETRY_CAP_BOOT_MS
        } else {
            BUS_RETRY_CAP_RUNNING_MS
        };
        let wait = self.bus_backoff.next(BUS_RETRY_FIRST_MS, cap);
        context.log(
            Level::Warn,
            format!("{message}; watching again in {wait} ms"),
        );
        context.arm(Deadline::BusRetry, wait);
        Handled
    }

    /// After kernel preparation: the Kubernetes checks when a secret is
    /// configured, else straight to tailscaled.
    fn after_prep(&mut self, context: &mut Ctx) -> Outcome<State> {
        match &mut self.kube {
            Some(kube) => {
                kube.connect(context);
                Transition(State::checking_kube())
            }
            None => self.spawn_tailscaled(context),
        }
    }

    fn spawn_tailscaled(&mut self, context: &mut Ctx) -> Outcome<State> {
        context.info("Starting tailscaled");
        context.emit(Command::SpawnTailscaled {
            argv: argv::tailscaled(&self.settings),
        });
        self.daemon = Daemon::Alive;
        // With Kubernetes the boot deadline already runs (it covers the checks).
        let at = context.now_ms + self.settings.boot_timeout_ms;
        context.timers.set_unless_armed(Deadline::Boot, at);
        context.info("Waiting for tailscaled socket");
        context.emit(Command::WaitSocket {
            path: self.settings.socket.clone(),
        });
        Transition(State::waiting_socket())
    }

    /// Reads tailscaled's DNS config (for the cert domain), one request at
    /// a time; only the serve config uses the cert domain.
    fn fetch_dns_config(&mut self, context: &mut Ctx) {
        if self.serve.is_none() {
            return;
        }
        match &mut self.dns_fetch {
            Some(again) => *again = true,
            None => {
                self.dns_fetch = Some(false);
                context.emit(Command::FetchDnsConfig {
                    socket: self.settings.socket.clone(),
                });
            }
        }
    }

    fn open_watch(&mut self, context: &mut Ctx, mask: u32) {
        context.timers.clear(Deadline::BusRetry);
        // Newer daemons send a whole netmap only first; peer changes come
        // as deltas, when asked for. Only an FQDN egress target needs them.
        let mask = match self.settings.egress_fqdn() {
            Some(_) => mask | mask::PEER_CHANGES,
            None => mask,
        };
        self.watch_mask = mask;
        self.watch += 1;
        context.emit(Command::WatchBus {
            watch: self.watch,
            mask,
            fqdn: self.settings.egress_fqdn().map(str::to_string),
        });
    }

    fn symlink_socket(&mut self, context: &mut Ctx) {
        if self.settings.socket == Path::new(CLI_SOCKET_LINK) {
            return;
        }
        context.emit(Command::SymlinkSocket {
            link: under_root(&self.settings.test.root, CLI_SOCKET_LINK),
            target: self.settings.socket.clone(),
        });
    }

    /// Starts `tailscale up` unless this boot already ran it.
    fn run_up(&mut self, context: &mut Ctx, up: &mut UpRun) {
        if *up != UpRun::NotRun {
            return;
        }
        *up = UpRun::Running;
        context.info("Running 'tailscale up'");
        context.cli = Some(Cli::Up);
        context.emit(Command::RunCli {
            cli: Cli::Up,
            argv: argv::up(&self.settings, self.auth_key.as_ref()),
        });
    }

    /// Announces startup once the proxy is in place and the secret written.
    fn maybe_startup_complete(
        &mut self,
        context: &mut Ctx,
        proxy: &ProxyState,
        announced: &mut bool,
    ) {
        if *announced || !proxy.ready(&self.settings) {
            return;
        }
        if let Some(kube) = &self.kube
            && kube.writes()
            && !kube.settled()
        {
            return;
        }
        *announced = true;
        context.emit(Command::AnnounceStartupComplete);
    }
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
