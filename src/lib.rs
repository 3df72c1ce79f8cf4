//! containerboot: the entrypoint of a Tailscale container.
//!
//! See ARCHITECTURE.md for the map: `machine` is the pure core, `exec` and
//! `sources` are the shell around it, `sim` is the tailscaled simulator.

pub mod ipn;
pub mod localapi;
pub mod secret;
pub mod settings;
pub mod sim;
