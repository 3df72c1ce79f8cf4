//! The simulator's script: a JSON file named by `SIM_SCRIPT` that decides
//! how the simulated `tailscaled` behaves. Every field is optional.
//!
//! ```json
//! {"socket_delay_ms": 200, "states_after_up": ["Starting", "NeedsMachineAuth"],
//!  "self_node": {"name": "box.tailnet.ts.net."}, "split_chunks": true}
//! ```

use containerboot::ipn::IpnState;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// How the simulated daemon behaves. Unknown fields are rejected so that a
/// typo in a test's script is an error, not a silently ignored setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// Wait this long before creating the socket.
    pub socket_delay_ms: u64,
    /// The state at start when not logged in (default `NeedsLogin`).
    pub initial_state: Option<String>,
    /// The states gone through after `up` is accepted (default
    /// `["Starting","Running"]`). Reaching `Running` means logged in: the
    /// netmap is sent just before it.
    pub states_after_up: Option<Vec<String>>,
    /// Pause between those states (default 10 ms).
    pub step_delay_ms: Option<u64>,
    /// When non-zero, `tailscale up` fails with this exit code.
    pub up_exit_code: Option<i32>,
    /// What the failing (or succeeding, with code 0) `tailscale up` prints
    /// to stderr.
    pub up_stderr: Option<String>,
    /// When non-zero, `tailscale set` fails with this exit code.
    pub set_exit_code: Option<i32>,
    /// What `tailscale set` prints to stderr.
    pub set_stderr: Option<String>,
    /// This node in the netmap.
    pub self_node: Option<SimNode>,
    /// The peers in the netmap (none: `"Peers": null` on the wire).
    pub peers: Vec<SimNode>,
    /// `DNS.CertDomains` (default: the self node's name without the
    /// trailing dot).
    pub cert_domains: Option<Vec<String>>,
    /// Write each bus message as several HTTP chunks, some of them carrying
    /// the end of one message and the start of the next.
    pub split_chunks: bool,
    /// Exit on its own this long after reaching `Running` (a crash).
    pub exit_after_running_ms: Option<u64>,
    /// The exit code of that crash (default 1).
    pub exit_code: Option<i32>,
    /// Keep running on SIGTERM.
    pub ignore_sigterm: bool,
    /// Faults on demand, in any state: SIGUSR1 makes the daemon exit with
    /// `exit_code` (a crash), SIGUSR2 closes every IPN bus watch (a bus
    /// drop) and it goes on, SIGHUP closes them and answers the next watch
    /// request with 500 (a LocalAPI error). Off: the signals' default
    /// action.
    pub signal_faults: bool,
    /// Once, this long after first reaching `Running`, switch to
    /// `leave_running_state`.
    pub leave_running_after_ms: Option<u64>,
    /// Close every IPN bus watch (ending the streams cleanly) this long
    /// after first reaching Running, staying alive: tests re-watching.
    pub drop_bus_after_running_ms: Option<u64>,
    /// `tailscale up`/`set` first leave this many orphans behind (`sh`
    /// backgrounds `sleep 0.3` and exits), which end while the CLI runs:
    /// tests of reaping.
    pub cli_orphans: u32,
    /// The state to switch to (default `NeedsLogin`).
    pub leave_running_state: Option<String>,
    /// Once, this long after first reaching `Running`, the self node
    /// becomes `later_self_node` (fields it leaves out keep their values)
    /// and a new netmap is sent: a re-keyed or renamed device.
    pub later_self_node_after_ms: Option<u64>,
    /// The self node after `later_self_node_after_ms`.
    pub later_self_node: Option<SimNode>,
    /// Answer the first this many serve-config POSTs that carry an
    /// `If-Match` with 412, as if another writer had changed the config
    /// between the client's GET and its POST.
    pub serve_config_conflicts: u32,
    /// Send the whole netmap on every netmap change, as daemons before
    /// `SelfChange` did. Without it, as tailscaled 1.102 on Linux: the
    /// netmap only in the first message of a watch that asks for it
    /// (`InitialNetMap`), a change of this node as `SelfChange`.
    pub legacy_netmap: bool,
    /// A file holding one bus line (a whole `Notify`, as a large tailnet's
    /// netmap): sent as is to every watcher `notify_file_count` times,
    /// every `notify_file_every_ms`, the first that long after Running.
    /// Each send is recorded (`SIM_RECORD`, program `notify-file`). For the
    /// netmap bench.
    pub notify_file: Option<String>,
    /// How many times `notify_file` is sent (default 1).
    pub notify_file_count: Option<u32>,
    /// The interval of `notify_file` sends (default 500).
    pub notify_file_every_ms: Option<u64>,
    /// Answer `/localapi/v0/reload-config` with 404, as a tailscaled older
    /// than v1.80 does (the endpoint is unknown to it).
    pub reload_config_missing: bool,
}

/// A node of the netmap. Missing fields get defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimNode {
    /// `StableID`.
    pub stable_id: Option<String>,
    /// `Name`, an FQDN with a trailing dot.
    pub name: Option<String>,
    /// `Addresses`, as prefixes (`100.64.0.1/32`).
    pub addresses: Option<Vec<String>>,
}

/// A node with every field decided and checked.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NodePlan {
    pub stable_id: String,
    pub name: String,
    pub addresses: Vec<IpNetwork>,
}

/// A script with its defaults filled in and its values checked.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub socket_delay: Duration,
    pub initial_state: IpnState,
    pub states_after_up: Vec<IpnState>,
    pub step_delay: Duration,
    pub up_result: Outcome,
    pub set_result: Outcome,
    pub self_node: NodePlan,
    pub peers: Vec<NodePlan>,
    pub cert_domains: Option<Vec<String>>,
    pub split_chunks: bool,
    pub exit_after_running: Option<Duration>,
    pub exit_code: i32,
    pub ignore_sigterm: bool,
    pub signal_faults: bool,
    pub leave_running_after: Option<Duration>,
    pub leave_running_state: IpnState,
    pub drop_bus_after_running: Option<Duration>,
    pub later_self_node: Option<(Duration, NodePlan)>,
    pub serve_config_conflicts: u32,
    pub legacy_netmap: bool,
    pub reload_config_missing: bool,
    /// The bus line of `notify_file`, its count and interval.
    pub notify_file: Option<(bytes::Bytes, u32, Duration)>,
}

/// What a scripted CLI call ends with.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Outcome {
    /// 0 = success.
    pub exit_code: i32,
    /// Printed by the CLI to stderr.
    pub stderr: Option<String>,
}

/// The default self node's stable ID.
pub const DEFAULT_STABLE_ID: &str = "nSIMSELF1CNTRL";
/// The default self node's name.
pub const DEFAULT_NAME: &str = "sim-host.tailnet.ts.net.";
/// The tailnet's MagicDNS suffix.
pub const TAILNET_DOMAIN: &str = "tailnet.ts.net";

/// Reads a Go `ipn.State` name.
pub(crate) fn parse_state(name: &str) -> Result<IpnState, String> {
    Ok(match name {
        "NoState" => IpnState::NoState,
        "InUseOtherUser" => IpnState::InUseOtherUser,
        "NeedsLogin" => IpnState::NeedsLogin,
        "NeedsMachineAuth" => IpnState::NeedsMachineAuth,
        "Stopped" => IpnState::Stopped,
        "Starting" => IpnState::Starting,
        "Running" => IpnState::Running,
        other => return Err(format!("unknown state {other:?}")),
    })
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn node(n: &SimNode, id: &str, name: &str, addrs: &[&str]) -> Result<NodePlan, String> {
    let addresses = match &n.addresses {
        Some(list) => list
            .iter()
            .map(|a| {
                a.parse::<IpNetwork>()
                    .map_err(|e| format!("bad address {a:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => addrs
            .iter()
            .map(|a| a.parse().map_err(|e| format!("{e}")))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(NodePlan {
        stable_id: n.stable_id.clone().unwrap_or_else(|| id.to_string()),
        name: n.name.clone().unwrap_or_else(|| name.to_string()),
        addresses,
    })
}

impl Script {
    /// Reads a script file.
    pub fn load(path: &Path) -> Result<Script, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    /// Fills in defaults and checks the values.
    pub(crate) fn plan(&self) -> Result<Plan, String> {
        let states_after_up = match &self.states_after_up {
            Some(list) => list
                .iter()
                .map(|s| parse_state(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("states_after_up: {e}"))?,
            None => vec![IpnState::Starting, IpnState::Running],
        };
        let self_default = SimNode::default();
        let self_src = self.self_node.as_ref().unwrap_or(&self_default);
        let self_node = node(
            self_src,
            DEFAULT_STABLE_ID,
            DEFAULT_NAME,
            &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
        )
        .map_err(|e| format!("self_node: {e}"))?;
        let peers = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = i + 2;
                node(
                    p,
                    &format!("nSIMPEER{n}CNTRL"),
                    &format!("peer{n}.{TAILNET_DOMAIN}."),
                    &[&format!("100.64.0.{n}/32")],
                )
                .map_err(|e| format!("peers[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = |code: Option<i32>, stderr: &Option<String>| Outcome {
            exit_code: code.unwrap_or(0),
            stderr: stderr.clone(),
        };
        let later_self_node = match (self.later_self_node_after_ms, &self.later_self_node) {
            (None, None) => None,
            (Some(after), Some(n)) => {
                let base: Vec<String> = self_node.addresses.iter().map(|a| a.to_string()).collect();
                let base: Vec<&str> = base.iter().map(String::as_str).collect();
                let later = node(n, &self_node.stable_id, &self_node.name, &base)
                    .map_err(|e| format!("later_self_node: {e}"))?;
                Some((ms(after), later))
            }
            _ => {
                return Err("later_self_node and later_self_node_after_ms go together".into());
            }
        };
        Ok(Plan {
            socket_delay: ms(self.socket_delay_ms),
            initial_state: match &self.initial_state {
                Some(s) => parse_state(s).map_err(|e| format!("initial_state: {e}"))?,
                None => IpnState::NeedsLogin,
            },
            states_after_up,
            step_delay: ms(self.step_delay_ms.unwrap_or(10)),
            up_result: outcome(self.up_exit_code, &self.up_stderr),
            set_result: outcome(self.set_exit_code, &self.set_stderr),
            self_node,
            peers,
            cert_domains: self.cert_domains.clone(),
            split_chunks: self.split_chunks,
            exit_after_running: self.exit_after_running_ms.map(ms),
            exit_code: self.exit_code.unwrap_or(1),
            ignore_sigterm: self.ignore_sigterm,
            signal_faults: self.signal_faults,
            leave_running_after: self.leave_running_after_ms.map(ms),
            leave_running_state: match &self.leave_running_state {
                Some(s) => parse_state(s).map_err(|e| format!("leave_running_state: {e}"))?,
                None => IpnState::NeedsLogin,
            },
            drop_bus_after_running: self.drop_bus_after_running_ms.map(ms),
            later_self_node,
            serve_config_conflicts: self.serve_config_conflicts,
            legacy_netmap: self.legacy_netmap,
            notify_file: match &self.notify_file {
                None => None,
                Some(path) => {
                    let mut line =
                        std::fs::read(path).map_err(|e| format!("notify_file {path}: {e}"))?;
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    Some((
                        bytes::Bytes::from(line),
                        self.notify_file_count.unwrap_or(1),
                        ms(self.notify_file_every_ms.unwrap_or(500)),
                    ))
                }
            },
            reload_config_missing: self.reload_config_missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let p = Script::default().plan().unwrap();
        assert_eq!(p.initial_state, IpnState::NeedsLogin);
        assert_eq!(
            p.states_after_up,
            vec![IpnState::Starting, IpnState::Running]
        );
        assert_eq!(p.self_node.name, DEFAULT_NAME);
        assert_eq!(p.self_node.addresses.len(), 2);
        let bad: Script = serde_json::from_str(r#"{"states_after_up":["Runing"]}"#).unwrap();
        assert!(bad.plan().unwrap_err().contains("Runing"));
        assert!(serde_json::from_str::<Script>(r#"{"split_chunk":true}"#).is_err());
    }
}
