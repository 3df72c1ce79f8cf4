//! SIGTERM, SIGINT and SIGUSR1 as events.

use crate::machine::{Event, Sig};
use async_signal::{Signal, Signals};
use smol::channel::Sender;
use smol::stream::StreamExt;

/// Installs the handlers now, so no signal is missed between start-up and
/// the first poll.
pub fn install() -> std::io::Result<Signals> {
    Signals::new([Signal::Term, Signal::Int, Signal::Usr1])
}

/// Forwards every signal until the channel closes.
pub async fn forward(mut signals: Signals, tx: Sender<Event>) {
    while let Some(Ok(sig)) = signals.next().await {
        let signal = match sig {
            Signal::Int => Sig::Int,
            Signal::Usr1 => Sig::Usr1,
            _ => Sig::Term,
        };
        if tx.send(Event::Signal { signal }).await.is_err() {
            return;
        }
    }
}
