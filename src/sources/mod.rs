//! Event sources: each turns something the OS reports into `Event`s on the
//! one channel the shell reads.

pub mod bus;
pub mod file_watch;
pub mod localapi;
pub mod signals;
pub mod socket;

use crate::machine::Event;
use localapi::LocalClient;
use smol::Task;
use smol::channel::Sender;
use std::path::{Path, PathBuf};

fn serve_config_event(read: file_watch::Read) -> Event {
    match read {
        Ok(content) => Event::ServeConfigRead { content },
        Err(error) => Event::ServeConfigUnreadable { error },
    }
}

/// The tailscaled config file as the core sees it: a digest and the
/// core's own check of the text (which may hold the auth key, so it stays
/// here and out of the trace).
fn config_file_event(read: file_watch::Read) -> Event {
    match read {
        Ok(content) => {
            let sum = ring::digest::digest(&ring::digest::SHA256, content.as_bytes());
            let digest = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            Event::ConfigFileRead {
                digest,
                problem: crate::settings::check_config_text(&content).err(),
            }
        }
        Err(error) => Event::ConfigFileUnreadable { error },
    }
}

/// The subscriptions the machine asks for (`Command::WaitSocket`,
/// `Command::WatchBus`, `Command::WatchServeConfig`, `Command::WatchConfigFile`): at most one of each,
/// each a task reporting on the shell's channel. Dropping this ends them.
pub struct Subscriptions {
    tx: Sender<Event>,
    client: LocalClient,
    socket_wait: Option<Task<()>>,
    bus: Option<Task<()>>,
    serve_file: Option<Task<()>>,
    config_file: Option<Task<()>>,
}

impl Subscriptions {
    /// Subscriptions to tailscaled at `socket`, reporting on `tx`.
    pub fn new(socket: &Path, tx: Sender<Event>) -> Self {
        Subscriptions {
            tx,
            client: LocalClient::new(socket),
            socket_wait: None,
            bus: None,
            serve_file: None,
            config_file: None,
        }
    }

    /// Waits for `path` to exist: `SocketReady` or `SocketWaitFailed`.
    pub fn wait_socket(&mut self, path: PathBuf) {
        let tx = self.tx.clone();
        self.socket_wait = Some(smol::spawn(async move {
            let event = match socket::wait_for(&path).await {
                Ok(()) => Event::SocketReady,
                Err(e) => match socket::limit_reached(&e) {
                    // inotify's limits reached: said once, then the socket
                    // is looked for every SOCKET_CHECK_MS until it exists
                    // (the boot timeout still bounds the wait).
                    Some(sysctl) => {
                        let fallback = Event::WatchFallback {
                            path: path.clone(),
                            error: format!("inotify: {e}"),
                            sysctl: Some(sysctl.to_string()),
                            every_ms: socket::SOCKET_CHECK_MS,
                        };
                        if tx.send(fallback).await.is_err() {
                            return;
                        }
                        match socket::check_every(&path, socket::SOCKET_CHECK_MS).await {
                            Ok(()) => Event::SocketReady,
                            Err(e) => Event::SocketWaitFailed {
                                error: e.to_string(),
                            },
                        }
                    }
                    None => Event::SocketWaitFailed {
                        error: e.to_string(),
                    },
                },
            };
            let _ = tx.send(event).await;
        }));
    }

    /// Opens bus watch number `watch` with `mask`, keeping the netmap peers
    /// that match `fqdn`. Replacing the task drops (and so closes) the old
    /// watch.
    pub fn watch_bus(&mut self, watch: u64, mask: u32, fqdn: Option<String>) {
        self.bus = Some(smol::spawn(bus::watch(
            self.client.clone(),
            watch,
            mask,
            fqdn,
            self.tx.clone(),
        )));
    }

    /// Watches the serve config file at `path`: `ServeConfigRead` now and
    /// after each change (`file_watch.rs`).
    pub fn watch_serve_config(&mut self, path: PathBuf) {
        self.serve_file = Some(smol::spawn(file_watch::watch(
            path,
            serve_config_event,
            self.tx.clone(),
        )));
    }

    /// Watches the tailscaled config file at `path`: `ConfigFileRead` now
    /// and after each change (`file_watch.rs`, as the serve config).
    pub fn watch_config_file(&mut self, path: PathBuf) {
        self.config_file = Some(smol::spawn(file_watch::watch(
            path,
            config_file_event,
            self.tx.clone(),
        )));
    }
}
