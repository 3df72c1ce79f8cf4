//! tailscaled's IPN bus messages (`Notify`), reduced to what containerboot
//! reads, in Go's wire names (docs/protocols.md §3).
//!
//! Go encodes nil slices and maps as `null` and drops `omitempty` fields, so
//! every collection here reads `null` and absent alike as empty. Unknown
//! fields are ignored: a real netmap carries dozens more.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// LocalAPI watch mask bits (`ipn.NotifyWatchOpt`).
pub mod mask {
    /// Engine status updates.
    pub const ENGINE_UPDATES: u32 = 1;
    /// Start the stream with the current state.
    pub const INITIAL_STATE: u32 = 2;
    /// Start the stream with the current prefs.
    pub const INITIAL_PREFS: u32 = 4;
    /// Start the stream with the current netmap.
    pub const INITIAL_NETMAP: u32 = 8;
    /// Strip private keys from prefs.
    pub const NO_PRIVATE_KEYS: u32 = 16;
    /// The first watch of a boot: state, prefs and netmap (14).
    pub const FIRST_WATCH: u32 = INITIAL_STATE | INITIAL_PREFS | INITIAL_NETMAP;
    /// Every later watch: state and netmap (10).
    pub const REWATCH: u32 = INITIAL_STATE | INITIAL_NETMAP;
    /// Peer deltas (`PeersChanged`, `PeersRemoved`) after the first netmap:
    /// asked for when a peer matters (an FQDN egress target). Daemons
    /// before these bits ignore them and send whole netmaps instead.
    pub const PEER_CHANGES: u32 = 1 << 12;

    /// Each bit's name, as Go's `ipn.NotifyWatchOpt` constants without
    /// their `Notify` prefix.
    pub const NAMES: [(u32, &str); 6] = [
        (ENGINE_UPDATES, "WatchEngineUpdates"),
        (INITIAL_STATE, "InitialState"),
        (INITIAL_PREFS, "InitialPrefs"),
        (INITIAL_NETMAP, "InitialNetMap"),
        (NO_PRIVATE_KEYS, "NoPrivateKeys"),
        (PEER_CHANGES, "PeerChanges"),
    ];

    /// A mask as the names of its bits (a bit without a name as its number).
    pub fn names(mask: u32) -> Vec<String> {
        (0..32)
            .map(|i| 1u32 << i)
            .filter(|bit| mask & bit != 0)
            .map(|bit| match NAMES.iter().find(|(b, _)| *b == bit) {
                Some((_, name)) => name.to_string(),
                None => bit.to_string(),
            })
            .collect()
    }

    /// The mask of `names` (as [`names`] writes them).
    pub fn from_names(names: &[String]) -> Result<u32, String> {
        names.iter().try_fold(0, |mask, n| {
            let bit = match NAMES.iter().find(|(_, name)| name == n) {
                Some((bit, _)) => *bit,
                None => n
                    .parse()
                    .map_err(|_| format!("unknown watch mask bit {n:?}"))?,
            };
            Ok(mask | bit)
        })
    }

    /// Serde for a mask in a trace: the names of its bits.
    pub mod by_name {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// Writes the bit names.
        pub fn serialize<S: Serializer>(mask: &u32, s: S) -> Result<S::Ok, S::Error> {
            super::names(*mask).serialize(s)
        }

        /// Reads the bit names.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
            let names = Vec::<String>::deserialize(d)?;
            super::from_names(&names).map_err(serde::de::Error::custom)
        }
    }
}

/// `ipn.State`, sent as an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum IpnState {
    /// 0
    NoState,
    /// 1
    InUseOtherUser,
    /// 2
    NeedsLogin,
    /// 3
    NeedsMachineAuth,
    /// 4
    Stopped,
    /// 5
    Starting,
    /// 6
    Running,
    /// A number this version does not know.
    Unknown(i64),
}

impl From<i64> for IpnState {
    fn from(n: i64) -> Self {
        match n {
            0 => IpnState::NoState,
            1 => IpnState::InUseOtherUser,
            2 => IpnState::NeedsLogin,
            3 => IpnState::NeedsMachineAuth,
            4 => IpnState::Stopped,
            5 => IpnState::Starting,
            6 => IpnState::Running,
            other => IpnState::Unknown(other),
        }
    }
}

impl From<IpnState> for i64 {
    fn from(s: IpnState) -> i64 {
        match s {
            IpnState::NoState => 0,
            IpnState::InUseOtherUser => 1,
            IpnState::NeedsLogin => 2,
            IpnState::NeedsMachineAuth => 3,
            IpnState::Stopped => 4,
            IpnState::Starting => 5,
            IpnState::Running => 6,
            IpnState::Unknown(n) => n,
        }
    }
}

impl std::str::FromStr for IpnState {
    type Err = String;
    /// Reads what `Display` writes.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "NoState" => IpnState::NoState,
            "InUseOtherUser" => IpnState::InUseOtherUser,
            "NeedsLogin" => IpnState::NeedsLogin,
            "NeedsMachineAuth" => IpnState::NeedsMachineAuth,
            "Stopped" => IpnState::Stopped,
            "Starting" => IpnState::Starting,
            "Running" => IpnState::Running,
            other => other
                .strip_prefix("State(")
                .and_then(|n| n.strip_suffix(')'))
                .and_then(|n| n.parse().ok())
                .map(IpnState::Unknown)
                .ok_or_else(|| format!("unknown IPN state {other:?}"))?,
        })
    }
}

/// Serde for a state in a trace: its name, not its wire number.
pub mod state_by_name {
    use super::IpnState;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the name.
    pub fn serialize<S: Serializer>(state: &Option<IpnState>, s: S) -> Result<S::Ok, S::Error> {
        match state {
            Some(st) => s.serialize_some(&st.to_string()),
            None => s.serialize_none(),
        }
    }

    /// Reads the name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpnState>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|n| n.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl fmt::Display for IpnState {
    /// The names Go's `ipn.State.String` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpnState::NoState => f.write_str("NoState"),
            IpnState::InUseOtherUser => f.write_str("InUseOtherUser"),
            IpnState::NeedsLogin => f.write_str("NeedsLogin"),
            IpnState::NeedsMachineAuth => f.write_str("NeedsMachineAuth"),
            IpnState::Stopped => f.write_str("Stopped"),
            IpnState::Starting => f.write_str("Starting"),
            IpnState::Running => f.write_str("Running"),
            IpnState::Unknown(n) => write!(f, "State({n})"),
        }
    }
}

/// Reads `null` as the type's default (serde's `default` alone rejects `null`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One message of the IPN bus. Absent or `null` fields mean "unchanged".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Notify {
    /// tailscaled's version; only in the first message of a watch.
    #[serde(rename = "Version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The backend state, when it changed (or with `INITIAL_STATE`).
    #[serde(rename = "State", default, skip_serializing_if = "Option::is_none")]
    pub state: Option<IpnState>,
    /// The network map, when it changed (or with `INITIAL_NETMAP`).
    #[serde(rename = "NetMap", default, skip_serializing_if = "Option::is_none")]
    pub net_map: Option<NetMap>,
    /// An error tailscaled wants shown.
    #[serde(
        rename = "ErrMessage",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub err_message: Option<String>,
    /// A URL for interactive login.
    #[serde(
        rename = "BrowseToURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub browse_to_url: Option<String>,
    /// This node, when it changed (newer daemons, instead of a netmap).
    #[serde(
        rename = "SelfChange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub self_change: Option<Node>,
    /// Peers added or replaced (with `PEER_CHANGES`).
    #[serde(
        rename = "PeersChanged",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_changed: Vec<Node>,
    /// IDs of peers removed (with `PEER_CHANGES`).
    #[serde(
        rename = "PeersRemoved",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_removed: Vec<u64>,
}

/// The parts of `netmap.NetworkMap` containerboot uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetMap {
    /// This node.
    #[serde(rename = "SelfNode", default, deserialize_with = "null_as_default")]
    pub self_node: Node,
    /// The other nodes, sorted by ID.
    #[serde(rename = "Peers", default, deserialize_with = "null_as_default")]
    pub peers: Vec<Node>,
    /// The tailnet's DNS configuration.
    #[serde(rename = "DNS", default, deserialize_with = "null_as_default")]
    pub dns: DnsConfig,
}

/// The parts of `tailcfg.Node` containerboot uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Numeric node ID, what peer deltas name a node by (0: not known).
    #[serde(
        rename = "ID",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub id: u64,
    /// Stable node ID, e.g. `nABC123CNTRL`.
    #[serde(rename = "StableID", default, deserialize_with = "null_as_default")]
    pub stable_id: String,
    /// MagicDNS name, with a trailing dot in real netmaps.
    #[serde(rename = "Name", default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Tailnet addresses as prefixes (`100.64.0.1/32`).
    #[serde(rename = "Addresses", default, deserialize_with = "null_as_default")]
    pub addresses: Vec<IpNetwork>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The parts of `tailcfg.DNSConfig` containerboot uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Domains this node can get HTTPS certificates for; the first is the
    /// cert domain (no trailing dot).
    #[serde(rename = "CertDomains", default, deserialize_with = "null_as_default")]
    pub cert_domains: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_nulls_and_ignores_unknown_fields() {
        let line = r#"{"Version":"1.56.1-t","State":6,"NetMap":{"SelfNode":{"ID":1,"StableID":"nX","Name":"h.ts.net.","Addresses":["100.64.0.1/32","fd7a:115c:a1e0::1/128"],"Endpoints":null,"Hostinfo":{}},"Peers":null,"DNS":{},"PacketFilter":[{"IPProto":[6]}]},"Prefs":null,"ErrMessage":null,"Engine":null}"#;
        let n: Notify = serde_json::from_str(line).unwrap();
        assert_eq!(n.state, Some(IpnState::Running));
        let nm = n.net_map.unwrap();
        assert_eq!(nm.self_node.stable_id, "nX");
        assert_eq!(nm.self_node.addresses.len(), 2);
        assert!(nm.peers.is_empty());
        assert!(nm.dns.cert_domains.is_empty());
    }

    #[test]
    fn reads_the_fixture_netmap() {
        let line = include_str!("../../fixtures/notify/running-netmap.json");
        let n: Notify = serde_json::from_str(line.trim()).unwrap();
        let nm = n.net_map.unwrap();
        assert_eq!(nm.peers.len(), 1);
        assert_eq!(nm.peers[0].name, "peer.tailnet.ts.net.");
        assert_eq!(nm.dns.cert_domains, ["h.tailnet.ts.net"]);
        assert_eq!(
            nm.self_node.addresses[1].to_string(),
            "fd7a:115c:a1e0::1/128"
        );
    }

    #[test]
    fn state_names_match_go() {
        assert_eq!(IpnState::from(2).to_string(), "NeedsLogin");
        assert_eq!(IpnState::from(42).to_string(), "State(42)");
        let n: Notify = serde_json::from_str(r#"{"State":3}"#).unwrap();
        assert_eq!(n.state, Some(IpnState::NeedsMachineAuth));
        assert_eq!(serde_json::to_string(&n).unwrap(), r#"{"State":3}"#);
    }
}
