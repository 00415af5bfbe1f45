//! Proxy types as a bit set, so that "which proxy types may this invite
//! register" is one AND in the table.

use std::fmt;

/// One frp proxy type; its discriminant is its bit in [`ProxyTypes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProxyType {
    /// `tcp`: a public TCP port.
    Tcp = 0,
    /// `udp`: a public UDP port.
    Udp = 1,
    /// `http`: virtual hosts on the HTTP port.
    Http = 2,
    /// `https`: virtual hosts on the HTTPS port (SNI).
    Https = 3,
    /// `stcp`: secret TCP, reached through a visitor.
    Stcp = 4,
    /// `sudp`: secret UDP, reached through a visitor.
    Sudp = 5,
    /// `xtcp`: peer to peer, the server only brokers.
    Xtcp = 6,
    /// `tcpmux`: TCP multiplexed by HTTP CONNECT.
    Tcpmux = 7,
}

impl ProxyType {
    const EVERY: [ProxyType; 8] = [
        ProxyType::Tcp,
        ProxyType::Udp,
        ProxyType::Http,
        ProxyType::Https,
        ProxyType::Stcp,
        ProxyType::Sudp,
        ProxyType::Xtcp,
        ProxyType::Tcpmux,
    ];

    /// The type a NewProxy's `proxy_type` names; an empty name is `tcp`, as
    /// in frp. None for a name frp does not know.
    pub fn from_frp(name: &str) -> Option<ProxyType> {
        if name.is_empty() {
            return Some(ProxyType::Tcp);
        }
        NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::EVERY[i])
    }

    /// frp's name for it.
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    /// Whether proxies of this type take a public port of their own
    /// (`remotePort`), so that port pools and port caps concern them: tcp
    /// and udp. The others are reached through vhosts, visitors or peers.
    pub fn takes_port(self) -> bool {
        ProxyTypes::WITH_PORT.contains(self)
    }
}

impl fmt::Display for ProxyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of frp proxy types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyTypes(pub u32);

const NAMES: [&str; 8] = [
    "tcp", "udp", "http", "https", "stcp", "sudp", "xtcp", "tcpmux",
];

impl ProxyTypes {
    /// Every type frp knows.
    pub const ALL: ProxyTypes = ProxyTypes((1 << NAMES.len()) - 1);
    /// No type at all.
    pub const NONE: ProxyTypes = ProxyTypes(0);
    /// The types that take a public port of their own: tcp and udp.
    pub const WITH_PORT: ProxyTypes =
        ProxyTypes(1 << ProxyType::Tcp as u32 | 1 << ProxyType::Udp as u32);

    /// The set holding only `t`.
    pub const fn only(t: ProxyType) -> ProxyTypes {
        ProxyTypes(1 << t as u32)
    }

    /// This set and `t`.
    pub const fn with(self, t: ProxyType) -> ProxyTypes {
        ProxyTypes(self.0 | 1 << t as u32)
    }

    /// Whether `t` is in the set.
    pub fn contains(self, t: ProxyType) -> bool {
        self.0 & Self::only(t).0 != 0
    }

    /// The bit for one type name, if frp has such a type.
    pub fn bit(name: &str) -> Option<u32> {
        NAMES.iter().position(|n| *n == name).map(|i| 1 << i)
    }

    /// Parse a list of names; the error names the unknown one.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<ProxyTypes, String> {
        let mut bits = 0;
        for n in names {
            let n = n.as_ref().trim();
            bits |= Self::bit(n)
                .ok_or_else(|| format!("unknown proxy type {n:?} (known: {})", NAMES.join(", ")))?;
        }
        Ok(ProxyTypes(bits))
    }

    /// Parse `"tcp,udp"`; empty text is the empty set.
    pub fn parse(text: &str) -> Result<ProxyTypes, String> {
        let names: Vec<&str> = text.split(',').filter(|s| !s.trim().is_empty()).collect();
        Self::parse_list(&names)
    }

    /// Whether a proxy of this type name is allowed.
    pub fn allows(self, name: &str) -> bool {
        Self::bit(name).is_some_and(|b| self.0 & b != 0)
    }

    /// The names in the set, in frp's order.
    pub fn names(self) -> Vec<&'static str> {
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }

    /// The types in both sets.
    pub fn intersect(self, other: ProxyTypes) -> ProxyTypes {
        ProxyTypes(self.0 & other.0)
    }
}

impl fmt::Display for ProxyTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_membership() {
        let t = ProxyTypes::parse("tcp, udp").unwrap();
        assert!(t.allows("tcp") && t.allows("udp") && !t.allows("http"));
        assert!(!t.allows("nonsense"));
        assert_eq!(t.to_string(), "tcp,udp");
        assert_eq!(ProxyTypes::ALL.names().len(), 8);
        let e = ProxyTypes::parse("tcp,ftp").unwrap_err();
        assert!(e.contains("\"ftp\""), "{e}");
    }

    #[test]
    fn one_type_is_its_bit() {
        for (i, name) in NAMES.iter().enumerate() {
            let t = ProxyType::from_frp(name).unwrap();
            assert_eq!(t.name(), *name);
            assert_eq!(ProxyTypes::only(t).0, 1 << i);
            assert_eq!(ProxyTypes::bit(name), Some(1 << i));
            assert!(ProxyTypes::ALL.contains(t) && !ProxyTypes::NONE.contains(t));
        }
        assert_eq!(ProxyType::from_frp(""), Some(ProxyType::Tcp));
        assert_eq!(ProxyType::from_frp("ftp"), None);
        let with_port: Vec<_> = ProxyType::EVERY.iter().filter(|t| t.takes_port()).collect();
        assert_eq!(with_port, [&ProxyType::Tcp, &ProxyType::Udp]);
    }
}
