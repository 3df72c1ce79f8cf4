//! SIGTERM, SIGINT and SIGUSR1 as events; SIGCHLD runs the reaper.

use crate::machine::{Event, Sig};
use crate::sources::reaper::Reaper;
use async_signal::{Signal, Signals};
use smol::channel::Sender;
use smol::stream::StreamExt;
use std::sync::Arc;

/// Installs the handlers now, so no signal is missed between start-up and
/// the first poll.
pub fn install() -> std::io::Result<Signals> {
    Signals::new([Signal::Term, Signal::Int, Signal::Usr1, Signal::Child])
}

/// Forwards every signal until the channel closes.
pub async fn forward(mut signals: Signals, tx: Sender<Event>, reaper: Arc<Reaper>) {
    // Children that exited before the first SIGCHLD was handled.
    reaper.reap();
    while let Some(next) = signals.next().await {
        let sig = match next {
            Ok(sig) => sig,
            Err(e) => {
                // A read error on the signal pipe must not end signal
                // handling for good.
                log::warn!("reading signals: {e}");
                continue;
            }
        };
        let signal = match sig {
            Signal::Child => {
                reaper.reap();
                continue;
            }
            Signal::Int => Sig::Int,
            Signal::Usr1 => Sig::Usr1,
            _ => Sig::Term,
        };
        if tx.send(Event::Signal { signal }).await.is_err() {
            return;
        }
    }
}
