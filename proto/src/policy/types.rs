//! Proxy types as a bit set, so that "which proxy types may this invite
//! register" is one AND in the table.

use std::fmt;

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
}
