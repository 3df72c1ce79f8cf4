//! One IPN bus watch as events: `BusOpened`, then `Bus` per message, then
//! `BusEnded` or `BusFailed`. Dropping the task closes the watch.

use super::localapi::LocalClient;
use crate::machine::Event;
use smol::channel::Sender;

/// Opens watch number `watch` with `mask` and forwards its messages.
pub async fn watch(
    client: LocalClient,
    watch: u64,
    mask: u32,
    fqdn: Option<String>,
    tx: Sender<Event>,
) {
    let mut stream = match client.watch_ipn_bus(mask).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(Event::BusFailed {
                    watch,
                    error: e.to_string(),
                })
                .await;
            return;
        }
    };
    if tx.send(Event::BusOpened { watch }).await.is_err() {
        return;
    }
    loop {
        let event = match stream.next_message(fqdn.as_deref()).await {
            Ok(Some(message)) => Event::Bus { watch, message },
            Ok(None) => Event::BusEnded { watch },
            Err(e) => Event::BusFailed {
                watch,
                error: e.to_string(),
            },
        };
        let last = !matches!(event, Event::Bus { .. });
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}
