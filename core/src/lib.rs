//! containerboot's core: everything it decides, and nothing it does.
//!
//! `settings` turns variables (and the config file's text) into typed
//! settings; `machine` is the state machine (`Machine::handle(now_ms,
//! event) -> Step`); `trace` records, describes, replays and draws its
//! steps; `plan` is `containerboot check`. No module here does I/O, reads
//! a clock or spawns anything: this crate's `Cargo.toml` has no dependency
//! that could, and a tidy test keeps `std`'s I/O out too.

pub mod ipn;
pub mod machine;
pub mod notify;
pub mod plan;
pub mod secret;
pub mod settings;
pub mod trace;
