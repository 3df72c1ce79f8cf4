//! The core driven with events; each test asserts the exact commands.
//! One file per topic; `harness.rs` holds the virtual clock and helpers.

mod auth;
mod bus_and_trace;
mod config_reload;
mod fault_matrix;
mod harness;
mod kube;
mod proxy;
mod random_walk;
mod serve;
mod shutdown;
mod tidy;
