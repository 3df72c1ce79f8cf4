//! SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 as events (every
//! catchable signal whose default would end containerboot without stopping
//! tailscaled); SIGCHLD runs the reaper.
//!
//! SIGCHLD has a `Signals` instance of its own. async-signal reports each
//! delivery by a small write to the instance's socket and drops the write
//! when the socket is full; a storm of exiting orphans can fill it. Were
//! SIGTERM on the same socket, it could be dropped with them (seen: 2 of
//! 115 SIGTERMs sent during an orphan storm were never seen). A dropped
//! SIGCHLD costs nothing — one reap pass collects every exited child — so
//! it is the only signal allowed to share its socket with a storm.

use crate::children::Reaper;
use crate::machine::{Event, Sig};
use async_signal::{Signal, Signals};
use smol::channel::Sender;
use smol::stream::StreamExt;
use std::sync::Arc;

/// The installed handlers: termination and dump signals, and SIGCHLD.
pub struct Installed {
    control: Signals,
    child: Signals,
}

/// Installs the handlers now, so no signal is missed between start-up and
/// the first poll.
pub fn install() -> std::io::Result<Installed> {
    Ok(Installed {
        control: Signals::new([
            Signal::Term,
            Signal::Int,
            Signal::Hup,
            Signal::Quit,
            Signal::Usr1,
            Signal::Usr2,
        ])?,
        child: Signals::new([Signal::Child])?,
    })
}

/// Forwards SIGTERM/SIGINT/SIGUSR1 as events and reaps on SIGCHLD, until
/// the channel closes.
pub async fn forward(installed: Installed, tx: Sender<Event>, reaper: Arc<Reaper>) {
    let Installed { control, mut child } = installed;
    // Children that exited before the first SIGCHLD was handled.
    reaper.reap();
    smol::spawn(async move {
        while let Some(next) = child.next().await {
            if let Err(e) = next {
                log::warn!("reading SIGCHLD: {e}");
            }
            reaper.reap();
        }
    })
    .detach();
    forward_control(control, tx).await;
}

async fn forward_control(mut signals: Signals, tx: Sender<Event>) {
    while let Some(next) = signals.next().await {
        let sig = match next {
            Ok(sig) => sig,
            Err(e) => {
                // A read error on the signal socket must not end signal
                // handling for good.
                log::warn!("reading signals: {e}");
                continue;
            }
        };
        let signal = match sig {
            Signal::Int => Sig::Int,
            Signal::Hup => Sig::Hup,
            Signal::Quit => Sig::Quit,
            Signal::Usr1 => Sig::Usr1,
            Signal::Usr2 => Sig::Usr2,
            _ => Sig::Term,
        };
        if tx.send(Event::Signal { signal }).await.is_err() {
            return;
        }
    }
}
