//! containerboot: the entrypoint of a Tailscale container.
//!
//! See ARCHITECTURE.md for the map: `machine` is the pure core, `exec` and
//! `sources` are the shell around it, `sim` is the tailscaled simulator.

pub mod children;
pub mod demo;
pub mod env;
pub mod exec;
pub mod logging;
pub mod shell;
pub mod sim;
pub mod sources;

pub use containerboot_core::{ipn, machine, plan, secret, settings, trace};
/// The Kubernetes client at its former path (the simulator's state store
/// uses it).
pub use exec::kube;
/// The LocalAPI client at its former path (the simulator's CLI uses it).
pub use sources::localapi;
