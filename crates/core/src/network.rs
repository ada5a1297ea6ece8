//! Styx's network contract: what a sandbox may reach (nothing by default), parsed and checked.
//!
//! On the wire a contract is either `"none"` (no interface at all, the default) or an object:
//! `{"egress": [{"cidr": "10.1.0.0/16", "ports": [443], "protocol": "tcp"}], "hosts": ["pypi.org:443"], "ingress": [8080]}`.
//! Egress rules allow IPv4 destinations (a CIDR, optionally only some ports of one protocol);
//! `hosts` are DNS names resolved by the node when the sandbox starts, each becoming rules for
//! the addresses it resolved to; `ingress` ports are served through Olympus's proxy only. Whatever a contract says, the node's own addresses, the cloud
//! metadata address and other sandboxes stay unreachable.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most egress rules (and hosts) in one contract.
pub const MAX_RULES: usize = 64;

/// An IPv4 network: an address and a prefix length, the address's host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub prefix: u8,
}

impl Cidr {
    /// The mask of the prefix.
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether all of `other` is inside this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// A single address as a /32.
    pub fn host(ip: Ipv4Addr) -> Self {
        Self { addr: ip, prefix: 32 }
    }
}

impl FromStr for Cidr {
    type Err = String;
    /// `a.b.c.d/n`, or a bare address (a /32). Host bits must be zero (`10.0.0.1/8` is refused:
    /// it is ambiguous).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>().ok().filter(|p| *p <= 32).ok_or(format!("{s:?}: the prefix length must be 0 to 32"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr =
            addr.parse().map_err(|_| format!("{s:?} is not an IPv4 address or CIDR (like 10.0.0.0/8)"))?;
        if u32::from(addr) & !Self::mask(prefix) != 0 {
            return Err(format!(
                "{s:?} has host bits set: did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(addr) & Self::mask(prefix))
            ));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A transport protocol of an egress rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Its name (as iptables takes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One allowed egress destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Destination network (`10.0.0.0/8`, or an address).
    #[schema(value_type = String, example = "10.0.0.0/8")]
    pub cidr: Cidr,
    /// Destination ports (all when empty; ports need a protocol, TCP by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// `tcp` or `udp` (both when absent and no ports are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

impl EgressRule {
    /// Parses the CLI form `CIDR[:PORT[/tcp|udp]]`, e.g. `10.0.0.0/8`, `1.2.3.4:443`, `8.8.8.8:53/udp`.
    pub fn parse_cli(s: &str) -> Result<Self, String> {
        let (net, port) = match s.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let cidr: Cidr = net.trim().parse()?;
        let (ports, protocol) = match port {
            None => (Vec::new(), None),
            Some(p) => {
                let (num, proto) = match p.split_once('/') {
                    Some((n, "tcp")) => (n, Protocol::Tcp),
                    Some((n, "udp")) => (n, Protocol::Udp),
                    Some((_, other)) => return Err(format!("{s:?}: unknown protocol {other:?} (tcp or udp)")),
                    None => (p, Protocol::Tcp),
                };
                (vec![parse_port(num).map_err(|e| format!("{s:?}: {e}"))?], Some(proto))
            }
        };
        Ok(Self { cidr, ports, protocol })
    }

    /// Checks ports and protocol.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.ports.iter().find(|p| **p == 0) {
            return Err(format!("{}: port {p} is not a port (1 to 65535)", self.cidr));
        }
        if self.ports.len() > MAX_RULES {
            return Err(format!("{}: {} ports; at most {MAX_RULES}", self.cidr, self.ports.len()));
        }
        Ok(())
    }

    /// The protocols the rule allows.
    pub fn protocols(&self) -> Vec<Protocol> {
        match self.protocol {
            Some(p) => vec![p],
            None if self.ports.is_empty() => vec![],
            None => vec![Protocol::Tcp],
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(format!("port {s:?} is not 1 to 65535")),
    }
}

/// A DNS name (with an optional port) whose addresses a sandbox may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowedHost {
    /// The name.
    pub name: String,
    /// The port (all ports when absent).
    pub port: Option<u16>,
}

impl TryFrom<String> for AllowedHost {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) => (n, Some(parse_port(p).map_err(|e| format!("{s:?}: {e}"))?)),
            None => (s.as_str(), None),
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
            });
        if !ok {
            return Err(format!("{s:?} is not a host name (like pypi.org or pypi.org:443)"));
        }
        Ok(Self { name: name.to_ascii_lowercase(), port })
    }
}

impl From<AllowedHost> for String {
    fn from(h: AllowedHost) -> String {
        match h.port {
            Some(p) => format!("{}:{p}", h.name),
            None => h.name,
        }
    }
}

/// What a sandbox may reach over the network.
#[derive(Debug, Clone, PartialEq, Eq, Default, ToSchema)]
#[schema(example = json!({"egress": [{"cidr": "10.1.0.0/16", "ports": [443], "protocol": "tcp"}], "hosts": ["pypi.org:443"]}))]
pub struct NetworkContract {
    /// Allowed destinations; nothing else is reachable.
    pub egress: Vec<EgressRule>,
    /// Host names (`name` or `name:port`) resolved at launch into more allowed destinations.
    #[schema(value_type = Vec<String>)]
    pub hosts: Vec<AllowedHost>,
    /// Ports the sandbox serves, reachable only through Olympus's proxy
    /// (`/v1/sandboxes/{id}/ports/{port}/…`), never opened on a host.
    pub ingress: Vec<u16>,
}

impl NetworkContract {
    /// `none`: no interface at all.
    pub fn is_none(&self) -> bool {
        self.egress.is_empty() && self.hosts.is_empty() && self.ingress.is_empty()
    }

    /// Checks every rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.egress.len() + self.hosts.len() > MAX_RULES {
            return Err(format!("{} rules; at most {MAX_RULES}", self.egress.len() + self.hosts.len()));
        }
        if self.ingress.len() > MAX_RULES {
            return Err(format!("ingress: {} ports; at most {MAX_RULES}", self.ingress.len()));
        }
        if self.ingress.contains(&0) {
            return Err("ingress: port 0 is not a port (1 to 65535)".into());
        }
        self.egress.iter().try_for_each(EgressRule::validate)
    }
}

/// A sandbox's network as its node set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkInfo {
    /// Its IPv4 address on the node's bridge.
    pub address: String,
    /// How the runtime is networked.
    pub mode: String,
    /// The rules in force, in words.
    pub rules: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Name(String),
    Contract {
        #[serde(default)]
        egress: Vec<EgressRule>,
        #[serde(default)]
        hosts: Vec<AllowedHost>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ingress: Vec<u16>,
    },
}

impl Serialize for NetworkContract {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_none() {
            Wire::Name("none".into()).serialize(s)
        } else {
            Wire::Contract { egress: self.egress.clone(), hosts: self.hosts.clone(), ingress: self.ingress.clone() }
                .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for NetworkContract {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) if s == "none" => Ok(Self::default()),
            serde_json::Value::String(s) => Err(serde::de::Error::custom(format!(
                "unknown network {s:?}: \"none\" or {{\"egress\": […], \"hosts\": […]}}"
            ))),
            serde_json::Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| !["egress", "hosts", "ingress"].contains(&k.as_str())) {
                    return Err(serde::de::Error::custom(format!(
                        "unknown network field {k:?} (egress, hosts, ingress)"
                    )));
                }
                let get = |k: &str| o.get(k).cloned().unwrap_or(serde_json::Value::Array(vec![]));
                let egress = serde_json::from_value(get("egress")).map_err(serde::de::Error::custom)?;
                let hosts = serde_json::from_value(get("hosts")).map_err(serde::de::Error::custom)?;
                let ingress = serde_json::from_value(get("ingress"))
                    .map_err(|e| serde::de::Error::custom(format!("ingress: ports are numbers 1 to 65535 ({e})")))?;
                Ok(Self { egress, hosts, ingress })
            }
            _ => Err(serde::de::Error::custom("network must be \"none\" or an object")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_strictly() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.9.9.9".parse().unwrap()) && !c.contains("11.0.0.1".parse().unwrap()));
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap(), Cidr::host("1.2.3.4".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().covers(&c));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "10.0.0/8", "::1/128", "ten/8", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_rules_and_bad_ports() {
        let r = EgressRule::parse_cli("8.8.8.8:53/udp").unwrap();
        assert_eq!((r.cidr.to_string(), r.ports, r.protocol), ("8.8.8.8/32".into(), vec![53], Some(Protocol::Udp)));
        assert_eq!(EgressRule::parse_cli("10.0.0.0/8").unwrap().protocols(), vec![]);
        assert_eq!(EgressRule::parse_cli("1.2.3.4:443").unwrap().protocols(), vec![Protocol::Tcp]);
        for bad in ["1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:80/sctp", "300.1.1.1"] {
            assert!(EgressRule::parse_cli(bad).is_err(), "{bad}");
        }
        let zero: NetworkContract = serde_json::from_str(r#"{"egress":[{"cidr":"1.2.3.4/32","ports":[0]}]}"#).unwrap();
        assert!(zero.validate().is_err());
    }

    #[test]
    fn contracts_round_trip_and_none_stays_a_string() {
        let none: NetworkContract = serde_json::from_str(r#""none""#).unwrap();
        assert!(none.is_none());
        assert_eq!(serde_json::to_string(&none).unwrap(), r#""none""#);
        let text = r#"{"egress":[{"cidr":"10.1.0.0/16","ports":[443],"protocol":"tcp"}],"hosts":["pypi.org:443"]}"#;
        let c: NetworkContract = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
        assert!(serde_json::from_str::<NetworkContract>(r#""open""#).is_err());
        assert!(serde_json::from_str::<NetworkContract>(r#"{"ports":[80]}"#).is_err());
        assert!(serde_json::from_str::<NetworkContract>(r#"{"ingress":[70000]}"#).is_err());
        let exposed: NetworkContract = serde_json::from_str(r#"{"ingress":[8080]}"#).unwrap();
        assert!(!exposed.is_none() && exposed.validate().is_ok());
        assert!(serde_json::from_str::<NetworkContract>(r#"{"hosts":["bad host"]}"#).is_err());
    }
}
