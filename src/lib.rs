//! containerboot: the entrypoint of a Tailscale container.
//!
//! See ARCHITECTURE.md for the map: `machine` is the pure core, `exec` and
//! `sources` are the shell around it. The tailscaled simulator is not here:
//! it is the `tailscaled-sim` binary (`src/bin/tailscaled-sim/`), built
//! only with the `sim` feature.

pub mod children;
pub mod env;
pub mod exec;
pub mod logging;
pub mod shell;
pub mod sources;

pub use containerboot_core::{ipn, machine, plan, secret, settings, trace};
