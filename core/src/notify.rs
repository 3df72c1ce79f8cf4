//! One IPN bus line decoded, in one pass, into what the core reads: a
//! [`BusMessage`].
//!
//! A netmap of a large tailnet runs to megabytes, nearly all of it peers
//! the core never looks at. Decoding it into a full `Notify` first (every
//! peer's name, ID and addresses allocated, then thrown away) cost more
//! than the parse itself, so the decoder is a visitor that knows what it
//! wants: the state, the self node, the first cert domain, and only the
//! peers matching the egress FQDN, when there is one; from tailscaled 1.102
//! also the deltas (`SelfChange`; with an FQDN target `PeersChanged`,
//! cut down the same way, and `PeersRemoved`). Everything else is skipped
//! as it is read (`IgnoredAny`), without allocating.
//!
//! It reads what `crate::ipn::Notify` reads, with the same conventions:
//! absent or `null` fields are "unchanged" or empty, unknown fields are
//! ignored, field names are matched exactly (as tailscaled writes them).

use crate::ipn::{DnsConfig, IpnState, Node};
use crate::machine::event::{BusMessage, NetMapView, fqdn_matches};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Decodes one bus line, keeping only the peers whose name matches `fqdn`
/// (none when `fqdn` is `None`).
pub fn decode(line: &[u8], fqdn: Option<&str>) -> Result<BusMessage, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let message = NotifySeed { fqdn }.deserialize(&mut de)?;
    de.end()?;
    Ok(message)
}

/// The `Notify` fields read; any other is skipped.
#[derive(Deserialize)]
#[serde(field_identifier)]
enum NotifyField {
    State,
    NetMap,
    SelfChange,
    PeersChanged,
    PeersRemoved,
    #[serde(other)]
    Other,
}

/// The `NetworkMap` fields read; any other is skipped.
#[derive(Deserialize)]
#[serde(field_identifier)]
enum NetMapField {
    SelfNode,
    Peers,
    #[serde(rename = "DNS")]
    Dns,
    #[serde(other)]
    Other,
}

struct NotifySeed<'f> {
    fqdn: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for NotifySeed<'_> {
    type Value = BusMessage;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BusMessage, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NotifySeed<'_> {
    type Value = BusMessage;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Notify object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BusMessage, A::Error> {
        let mut message = BusMessage::default();
        // Gone: the changed peers that do not match, then the removed ones,
        // whichever field comes first on the line.
        let mut removed = Vec::new();
        while let Some(field) = map.next_key::<NotifyField>()? {
            match field {
                NotifyField::State => message.state = map.next_value::<Option<IpnState>>()?,
                NotifyField::NetMap => {
                    message.net_map =
                        map.next_value_seed(Nullable(NetMapSeed { fqdn: self.fqdn }))?
                }
                NotifyField::SelfChange => message.self_change = map.next_value()?,
                NotifyField::PeersChanged => match self.fqdn {
                    Some(want) => {
                        let peers = map
                            .next_value_seed(Nullable(Peers { want }))?
                            .unwrap_or_default();
                        for (id, node) in peers {
                            match node {
                                Some(node) => message.peers_changed.push(node),
                                None => message.peers_gone.push(id),
                            }
                        }
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                NotifyField::PeersRemoved => match self.fqdn {
                    Some(_) => removed = map.next_value::<Option<Vec<u64>>>()?.unwrap_or_default(),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                NotifyField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        message.peers_gone.extend(removed);
        Ok(message)
    }
}

struct NetMapSeed<'f> {
    fqdn: Option<&'f str>,
}

impl<'de> DeserializeSeed<'de> for NetMapSeed<'_> {
    type Value = NetMapView;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<NetMapView, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NetMapSeed<'_> {
    type Value = NetMapView;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a NetworkMap object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NetMapView, A::Error> {
        let mut view = NetMapView::default();
        while let Some(field) = map.next_key::<NetMapField>()? {
            match field {
                NetMapField::SelfNode => {
                    view.self_node = map.next_value::<Option<Node>>()?.unwrap_or_default()
                }
                NetMapField::Peers => match self.fqdn {
                    Some(want) => {
                        view.matching_peers = map
                            .next_value_seed(Nullable(Peers { want }))?
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|(_, node)| node)
                            .collect()
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                },
                NetMapField::Dns => {
                    let dns = map.next_value::<Option<DnsConfig>>()?.unwrap_or_default();
                    view.cert_domain = dns.cert_domains.into_iter().next();
                }
                NetMapField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(view)
    }
}

/// A peer list as (ID, the node if its name matches `want`), in order.
struct Peers<'f> {
    want: &'f str,
}

impl<'de> DeserializeSeed<'de> for Peers<'_> {
    type Value = Vec<(u64, Option<Node>)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Peers<'_> {
    type Value = Vec<(u64, Option<Node>)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of nodes")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut peers = Vec::new();
        while let Some(peer) = seq.next_element_seed(Nullable(PeerSeed { want: self.want }))? {
            peers.extend(peer);
        }
        Ok(peers)
    }
}

/// The `tailcfg.Node` fields read; any other is skipped.
#[derive(Deserialize)]
#[serde(field_identifier)]
enum NodeField {
    #[serde(rename = "ID")]
    Id,
    #[serde(rename = "StableID")]
    StableId,
    Name,
    Addresses,
    #[serde(other)]
    Other,
}

/// One peer: its ID, and the node if its name matches `want`. The name is
/// borrowed from the line where it can be, and the addresses of a peer
/// already known not to match (tailscaled writes `Name` before
/// `Addresses`) are skipped unparsed: most of a large netmap's peers cost
/// no allocation at all.
struct PeerSeed<'f> {
    want: &'f str,
}

impl<'de> DeserializeSeed<'de> for PeerSeed<'_> {
    type Value = (u64, Option<Node>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PeerSeed<'_> {
    type Value = (u64, Option<Node>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Node object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = 0;
        let mut stable_id: Option<Cow<'de, str>> = None;
        let mut name: Option<Cow<'de, str>> = None;
        let mut addresses = Vec::new();
        while let Some(field) = map.next_key::<NodeField>()? {
            match field {
                NodeField::Id => id = map.next_value::<Option<u64>>()?.unwrap_or_default(),
                NodeField::StableId => {
                    stable_id = map.next_value::<Option<Borrowed>>()?.map(|b| b.0)
                }
                NodeField::Name => name = map.next_value::<Option<Borrowed>>()?.map(|b| b.0),
                NodeField::Addresses => {
                    if name.as_deref().is_some_and(|n| !fqdn_matches(n, self.want)) {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        addresses = map.next_value::<Option<Vec<_>>>()?.unwrap_or_default();
                    }
                }
                NodeField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let name = name.unwrap_or_default();
        let node = fqdn_matches(&name, self.want).then(|| Node {
            id,
            stable_id: stable_id.unwrap_or_default().into_owned(),
            name: name.into_owned(),
            addresses,
        });
        Ok((id, node))
    }
}

/// A string, borrowed from the input when it has no escapes.
struct Borrowed<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Borrowed<'de>, E> {
                Ok(Borrowed(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Borrowed<'de>, E> {
                Ok(Borrowed(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// `null` as `None`, anything else through the inner seed.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("null or a value")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipn::Notify;

    /// The reference: the full `Notify`, reduced afterwards.
    fn reference(line: &str, fqdn: Option<&str>) -> BusMessage {
        BusMessage::from_notify(serde_json::from_str::<Notify>(line).unwrap(), fqdn)
    }

    #[test]
    fn agrees_with_the_full_notify_on_the_fixture_and_on_edge_cases() {
        let fixture = include_str!("../../fixtures/notify/running-netmap.json");
        let lines = [
            fixture.trim(),
            r#"{"State":6}"#,
            r#"{"State":null,"NetMap":null,"Version":"1.2.3"}"#,
            r#"{"NetMap":{"SelfNode":null,"Peers":null,"DNS":null}}"#,
            r#"{"NetMap":{"Peers":[{"Name":"target.ts.net.","StableID":"n1","Addresses":["100.64.0.9/32"]}],"Extra":{"a":[1,2,{"b":null}]}}}"#,
            r#"{"NetMap":{"DNS":{"CertDomains":["a.ts.net","b.ts.net"]},"SelfNode":{"Name":"me.","Addresses":null}},"State":2}"#,
            r#"{"SelfChange":{"ID":1,"Name":"me.ts.net.","StableID":"nME","Addresses":["100.64.0.2/32"],"Hostinfo":{}}}"#,
            r#"{"PeersChanged":[{"ID":7,"Name":"target.ts.net.","Addresses":["100.64.0.7/32"]},{"ID":8,"Name":"other.ts.net."}],"PeersRemoved":[9,10]}"#,
            r#"{"PeersChanged":null,"PeersRemoved":null,"SelfChange":null}"#,
        ];
        for line in lines {
            for fqdn in [None, Some("target.ts.net"), Some("TARGET.ts.net.")] {
                assert_eq!(
                    decode(line.as_bytes(), fqdn).unwrap(),
                    reference(line, fqdn),
                    "{line} with {fqdn:?}"
                );
            }
        }
    }

    #[test]
    fn keeps_only_matching_peers_in_order() {
        let line = r#"{"NetMap":{"Peers":[
            {"Name":"a.ts.net.","StableID":"n1","Hostinfo":{"Services":[{"Port":1}]}},
            {"Name":"target.ts.net.","StableID":"n2"},
            {"Name":"Target.TS.net","StableID":"n3"}]}}"#;
        let m = decode(line.as_bytes(), Some("target.ts.net")).unwrap();
        let ids: Vec<_> = m
            .net_map
            .unwrap()
            .matching_peers
            .into_iter()
            .map(|n| n.stable_id)
            .collect();
        assert_eq!(ids, ["n2", "n3"]);
        // Addresses before the name, an escaped name, a bad address of a
        // peer that does not match (skipped, as tailscaled writes Name
        // first) and of one that does (an error).
        let line = r#"{"NetMap":{"Peers":[
            {"Addresses":["100.64.0.1/32"],"Name":"t\u0061rget.ts.net.","StableID":"n\u0031"},
            {"Name":"other.ts.net.","Addresses":["not an address"]}]}}"#;
        let m = decode(line.as_bytes(), Some("target.ts.net")).unwrap();
        let peers = m.net_map.unwrap().matching_peers;
        assert_eq!(peers.len(), 1);
        assert_eq!(
            (peers[0].name.as_str(), peers[0].stable_id.as_str()),
            ("target.ts.net.", "n1")
        );
        assert_eq!(peers[0].addresses, vec!["100.64.0.1/32".parse().unwrap()]);
        let bad =
            r#"{"NetMap":{"Peers":[{"Name":"target.ts.net.","Addresses":["not an address"]}]}}"#;
        assert!(decode(bad.as_bytes(), Some("target.ts.net")).is_err());
        let none = decode(line.as_bytes(), None).unwrap();
        assert!(none.net_map.unwrap().matching_peers.is_empty());
    }

    #[test]
    fn peer_deltas_keep_matching_peers_and_name_the_rest_gone() {
        let line = br#"{"PeersChanged":[
            {"ID":7,"Name":"target.ts.net.","Addresses":["100.64.0.7/32"]},
            {"ID":8,"Name":"renamed-away.ts.net.","Addresses":["100.64.0.8/32"]}],
            "PeersRemoved":[9]}"#;
        let m = decode(line, Some("target.ts.net")).unwrap();
        assert_eq!(m.peers_changed.len(), 1);
        assert_eq!(m.peers_changed[0].id, 7);
        assert_eq!(m.peers_gone, [8, 9]);
        assert!(m.has_delta());
        // The same with PeersRemoved first on the line.
        let swapped = br#"{"PeersRemoved":[9],"PeersChanged":[
            {"ID":7,"Name":"target.ts.net."},{"ID":8,"Name":"renamed-away.ts.net."}]}"#;
        assert_eq!(
            decode(swapped, Some("target.ts.net")).unwrap().peers_gone,
            [8, 9]
        );
        // Without an FQDN target no peer matters.
        let m = decode(line, None).unwrap();
        assert!(!m.has_delta(), "{m:?}");
        let m = decode(
            br#"{"SelfChange":{"ID":1,"Addresses":["100.64.0.2/32"]}}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            m.self_change.unwrap().addresses,
            vec!["100.64.0.2/32".parse().unwrap()]
        );
    }

    #[test]
    fn rejects_what_is_not_one_notify() {
        for bad in [
            "",
            "[]",
            "{\"State\":\"Running\"}",
            "{\"NetMap\":{\"Peers\":{}}}",
            "{} {}",
            "{\"NetMap\":{\"SelfNode\":{\"Addresses\":[\"x\"]}}}",
        ] {
            assert!(
                decode(bad.as_bytes(), Some("a")).is_err(),
                "{bad:?} accepted"
            );
        }
        // Peers are not looked at without an FQDN target, so their shape
        // is not checked either; the JSON must still be well-formed.
        assert!(decode(b"{\"NetMap\":{\"Peers\":{}}}", None).is_ok());
        assert!(decode(b"{\"NetMap\":{\"Peers\":[}}", None).is_err());
    }
}
