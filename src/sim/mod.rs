//! The tailscaled simulator (being written).

/// Runs the simulator when `argv0` names `tailscaled` or `tailscale`.
pub fn dispatch(_argv0: &str, _args: Vec<String>) -> Option<i32> {
    None
}
