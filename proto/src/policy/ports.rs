//! Port sets: the port pools of nodes and invites, as sorted, merged,
//! inclusive ranges. The text form is frp's `allowPorts` shorthand,
//! `"2000-3000,3001,4000-4100"`.
//!
//! [`PortRange`] is one `allowPorts` entry as frps.toml (`{ single = 3001 }`,
//! `{ start = 2000, end = 3000 }`) and seed 002's tenant records (the same
//! keys in JSON) write it: the one range type of the config file, the
//! tenants and the wire's port ranges, which a [`PortSet`] collects.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A set of TCP/UDP ports, stored as sorted, non-overlapping, non-adjacent
/// inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    /// Every port from 1 to 65535.
    pub fn all() -> PortSet {
        PortSet {
            ranges: vec![(1, 65535)],
        }
    }

    /// Build from ranges in any order; overlapping or adjacent ranges merge.
    /// Ranges with `lo > hi` are ignored.
    pub fn from_ranges(mut ranges: Vec<(u16, u16)>) -> PortSet {
        ranges.retain(|&(lo, hi)| lo <= hi);
        ranges.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if lo as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        PortSet { ranges: out }
    }

    /// Parse `"2000-3000,3001"`. Port 0 is not a port; empty text is the
    /// empty set. The error says which item is wrong.
    pub fn parse(text: &str) -> Result<PortSet, String> {
        let mut ranges = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (parse_port(a.trim(), item)?, parse_port(b.trim(), item)?),
                None => {
                    let p = parse_port(item, item)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("range {item:?} runs backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(PortSet::from_ranges(ranges))
    }

    /// The ranges, sorted and merged.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        contains_in(&self.ranges, port)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many ports the set holds.
    pub fn len(&self) -> u32 {
        self.ranges
            .iter()
            .map(|&(lo, hi)| hi as u32 - lo as u32 + 1)
            .sum()
    }

    /// Whether every port of `self` is in `other`.
    pub fn is_subset_of(&self, other: &PortSet) -> bool {
        self.ranges.iter().all(|&(lo, hi)| {
            other
                .ranges
                .iter()
                .any(|&(olo, ohi)| olo <= lo && hi <= ohi)
        })
    }

    /// The ports in both sets.
    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            let lo = a.0.max(b.0);
            let hi = a.1.min(b.1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        PortSet { ranges: out }
    }

    /// Every port in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|&(lo, hi)| lo..=hi)
    }
}

impl FromIterator<PortRange> for PortSet {
    fn from_iter<I: IntoIterator<Item = PortRange>>(ranges: I) -> PortSet {
        PortSet::from_ranges(ranges.into_iter().map(|r| r.bounds()).collect())
    }
}

impl PortSet {
    /// The set as `allowPorts` entries: one `single` per lone port, one
    /// `start`/`end` per longer range.
    pub fn entries(&self) -> Vec<PortRange> {
        self.ranges
            .iter()
            .map(|&(lo, hi)| PortRange::from_bounds(lo, hi))
            .collect()
    }
}

/// One `allowPorts` entry: `{ single = 3001 }` or `{ start = 2000, end =
/// 3000 }` (in JSON `{"single": 3001}`, `{"start": 2000, "end": 3000}`).
/// Always a real range, 1 <= start <= end <= 65535: reading one checks it,
/// so holders need not. It keeps the form it was written in, so that a
/// record read and written back is the same record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PortRangeEntry", into = "PortRangeEntry")]
pub struct PortRange {
    start: u16,
    end: u16,
    /// Written as `{ single = N }`.
    single: bool,
}

impl PortRange {
    /// `{ single = port }`; None for port 0.
    pub fn single(port: u16) -> Option<PortRange> {
        (port != 0).then_some(PortRange {
            start: port,
            end: port,
            single: true,
        })
    }

    /// `{ start, end }`; None unless 1 <= start <= end.
    pub fn span(start: u16, end: u16) -> Option<PortRange> {
        (start != 0 && start <= end).then_some(PortRange {
            start,
            end,
            single: false,
        })
    }

    /// The first and last port, inclusive.
    pub fn bounds(&self) -> (u16, u16) {
        (self.start, self.end)
    }

    /// The shortest form of an inclusive range (`single` for one port);
    /// `lo` 0 is taken as 1 and `hi < lo` as `lo`, the nearest real range.
    fn from_bounds(lo: u16, hi: u16) -> PortRange {
        let lo = lo.max(1);
        let hi = hi.max(lo);
        PortRange {
            start: lo,
            end: hi,
            single: lo == hi,
        }
    }
}

/// What a valid entry must look like, for the error of an invalid one.
const PORT_RANGE_RULE: &str =
    "give `single` (a port) or `start` and `end` with 1 <= start <= end <= 65535";

/// [`PortRange`] as written, before it is checked.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRangeEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    single: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<i64>,
}

impl TryFrom<PortRangeEntry> for PortRange {
    type Error = String;

    fn try_from(e: PortRangeEntry) -> Result<PortRange, String> {
        let port = |n: i64| u16::try_from(n).ok();
        let range = match (e.single, e.start, e.end) {
            (Some(p), None, None) => port(p).and_then(PortRange::single),
            (None, Some(a), Some(b)) => port(a)
                .zip(port(b))
                .and_then(|(a, b)| PortRange::span(a, b)),
            _ => None,
        };
        range.ok_or_else(|| PORT_RANGE_RULE.to_owned())
    }
}

impl From<PortRange> for PortRangeEntry {
    fn from(r: PortRange) -> PortRangeEntry {
        if r.single {
            PortRangeEntry {
                single: Some(r.start.into()),
                start: None,
                end: None,
            }
        } else {
            PortRangeEntry {
                single: None,
                start: Some(r.start.into()),
                end: Some(r.end.into()),
            }
        }
    }
}

/// Membership test over sorted ranges (shared with the table reader, which
/// holds ranges in place).
pub(crate) fn contains_in(ranges: &[(u16, u16)], port: u16) -> bool {
    let i = ranges.partition_point(|&(_, hi)| hi < port);
    ranges.get(i).is_some_and(|&(lo, _)| lo <= port)
}

fn parse_port(s: &str, item: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "{item:?} is not a port or range of ports (1-65535)"
        )),
        Ok(p) => Ok(p),
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_merges_and_prints() {
        let s = PortSet::parse("4000-4100, 3001,2000-3000,3002").unwrap();
        assert_eq!(s.ranges(), &[(2000, 3002), (4000, 4100)]);
        assert_eq!(s.to_string(), "2000-3002,4000-4100");
        assert_eq!(s.len(), 1003 + 101);
        assert!(s.contains(2000) && s.contains(3002) && s.contains(4050));
        assert!(!s.contains(1999) && !s.contains(3003) && !s.contains(4101));
        assert!(PortSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_items_by_name() {
        for bad in ["0", "70000", "a-b", "10-5", "1-", "-"] {
            let e = PortSet::parse(bad).unwrap_err();
            assert!(e.contains(bad) || e.contains("backwards"), "{bad}: {e}");
        }
    }

    #[test]
    fn port_ranges_read_as_written_and_checked() {
        let rs: Vec<PortRange> = serde_json::from_str(
            r#"[{"single": 8080}, {"start": 9000, "end": 9100}, {"start": 7, "end": 7}]"#,
        )
        .unwrap();
        assert_eq!(rs[0].bounds(), (8080, 8080));
        assert_eq!(rs[1].bounds(), (9000, 9100));
        // Written back in the form it came in.
        assert_eq!(
            serde_json::to_string(&rs).unwrap(),
            r#"[{"single":8080},{"start":9000,"end":9100},{"start":7,"end":7}]"#
        );
        let set: PortSet = rs.iter().copied().collect();
        assert_eq!(set.to_string(), "7,8080,9000-9100");
        assert_eq!(
            serde_json::to_string(&set.entries()).unwrap(),
            r#"[{"single":7},{"single":8080},{"start":9000,"end":9100}]"#
        );
        for bad in [
            r#"{}"#,
            r#"{"single": 0}"#,
            r#"{"single": 70000}"#,
            r#"{"single": -1}"#,
            r#"{"start": 9, "end": 2}"#,
            r#"{"start": 0, "end": 2}"#,
            r#"{"start": 9}"#,
            r#"{"single": 9, "start": 9, "end": 9}"#,
            r#"{"single": 9, "stop": 10}"#,
        ] {
            assert!(serde_json::from_str::<PortRange>(bad).is_err(), "{bad}");
        }
        assert_eq!(PortRange::single(0), None);
        assert_eq!(PortRange::span(5, 4), None);
    }

    #[test]
    fn subset_and_intersection() {
        let node = PortSet::parse("10000-20000").unwrap();
        let inv = PortSet::parse("10000-10010,15000").unwrap();
        assert!(inv.is_subset_of(&node));
        assert!(!node.is_subset_of(&inv));
        let out = PortSet::parse("9990-10005").unwrap();
        assert!(!out.is_subset_of(&node));
        assert_eq!(out.intersect(&node).to_string(), "10000-10005");
        assert_eq!(
            inv.iter().take(3).collect::<Vec<_>>(),
            vec![10000, 10001, 10002]
        );
    }
}
