//! containerboot: the entrypoint of a Tailscale container.
//!
//! See ARCHITECTURE.md for the map: `machine` is the pure core, `exec` and
//! `sources` are the shell around it. The tailscaled simulator is not here:
//! it is the `tailscaled-sim` binary (`src/bin/tailscaled-sim/`), built
//! only with the `sim` feature.

pub mod exec;
pub mod ipn;
pub mod kube;
pub mod localapi;
pub mod logging;
pub mod machine;
pub mod plan;
pub mod render;
pub mod replay;
pub mod secret;
pub mod settings;
pub mod shell;
pub mod sources;
pub mod trace;
