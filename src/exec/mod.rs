//! Executors: each carries out one kind of `Command` and reports back with
//! events on the shell's channel. They decide nothing.

pub mod fs;
pub mod kube;
pub mod netfilter;
pub mod process;
pub mod serve;

use crate::children::Reaper;
use crate::machine::{Command, Event, Level, STARTUP_COMPLETE};
use smol::channel::Sender;
use std::sync::Arc;

/// The shell's handles on everything running on the machine's behalf.
pub struct Executors {
    tx: Sender<Event>,
    reaper: Arc<Reaper>,
    tailscaled: Option<process::Tailscaled>,
    cli: Option<process::CliRun>,
    kube: kube::KubeExecutor,
    netfilter: netfilter::Netfilter,
    serve: serve::ServeExecutor,
}

impl Executors {
    /// Executors reporting on `tx`, spawning through `reaper`. Commands
    /// carry everything else they need.
    pub fn new(tx: Sender<Event>, reaper: Arc<Reaper>) -> Self {
        Executors {
            netfilter: netfilter::Netfilter::new(tx.clone(), reaper.clone()),
            reaper,
            cli: None,
            tx: tx.clone(),
            tailscaled: None,
            serve: serve::ServeExecutor::new(tx.clone()),
            kube: kube::KubeExecutor::new(tx),
        }
    }

    /// Carries out one command; `Some(code)` means exit now with it.
    pub fn execute(&mut self, command: Command) -> Option<i32> {
        match command {
            Command::Log { level, message } => {
                let level = match level {
                    Level::Info => log::Level::Info,
                    Level::Warn => log::Level::Warn,
                    Level::Error => log::Level::Error,
                };
                log::log!(level, "{message}");
            }
            Command::PrepareKernel {
                root,
                ipv4_forwarding,
                ipv6_forwarding,
            } => {
                let event = match fs::prepare_kernel(&root, ipv4_forwarding, ipv6_forwarding) {
                    Ok(()) => Event::KernelPrepared,
                    Err((step, error)) => Event::KernelPrepFailed { step, error },
                };
                self.report(event);
            }
            Command::SpawnTailscaled { argv } => {
                match process::Tailscaled::spawn(&argv, self.tx.clone(), &self.reaper) {
                    Ok(t) => self.tailscaled = Some(t),
                    Err(e) => self.report(Event::TailscaledSpawnFailed {
                        error: format!("{}: {e}", argv[0]),
                    }),
                }
            }
            Command::SymlinkSocket { link, target } => {
                if let Err(e) = fs::symlink_socket(&link, &target) {
                    self.report(Event::SymlinkFailed {
                        error: e.to_string(),
                    });
                }
            }
            Command::RunCli { cli, argv } => {
                self.cli = process::run_cli(cli, &argv, self.tx.clone(), &self.reaper);
            }
            Command::SignalCli { cli, signal } => {
                // ESRCH: it has just ended; its CliFinished is on the way.
                if let Some(run) = self.cli.as_ref().filter(|r| r.cli == cli)
                    && let Err(e) = run.signal(signal, &self.reaper)
                    && e.raw_os_error() != Some(rustix::io::Errno::SRCH.raw_os_error())
                {
                    log::warn!("signalling tailscale {cli}: {e}");
                }
            }
            Command::ReconcileRules { backend, rules } => {
                self.netfilter.reconcile(backend, rules);
            }
            Command::SignalTailscaled { signal } => {
                // ESRCH: it is already gone; its exit event is on the way.
                if let Some(t) = &self.tailscaled
                    && let Err(e) = t.signal(signal, &self.reaper)
                    && e.raw_os_error() != Some(rustix::io::Errno::SRCH.raw_os_error())
                {
                    log::warn!("signalling tailscaled: {e}");
                }
            }
            Command::SetServeConfig { socket, config } => self.serve.set(socket, config),
            Command::FetchDnsConfig { socket } => self.serve.fetch_dns_config(socket),
            Command::ReloadConfig { socket } => self.serve.reload_config(socket),
            Command::DumpTrace { .. }
            | Command::WaitSocket { .. }
            | Command::WatchBus { .. }
            | Command::WatchServeConfig { .. }
            | Command::WatchConfigFile { .. } => {
                // Carried out by the shell, which owns the trace and the
                // event sources.
            }
            Command::Kube { call } => self.kube.execute(call),
            Command::AnnounceStartupComplete => log::info!("{STARTUP_COMPLETE}"),
            Command::Exit { code } => return Some(code),
        }
        None
    }

    fn report(&self, event: Event) {
        // The channel is unbounded and the receiver lives as long as the
        // shell loop, so this cannot fail while anyone listens.
        let _ = self.tx.try_send(event);
    }
}
