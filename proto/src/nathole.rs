//! The xtcp broker's decisions, sans-IO: how frps (0.52+) classifies each
//! side's NAT from the addresses its STUN discovery mapped, which punching
//! behaviour it recommends for the pair (and learns from reported
//! successes), and the `NatHoleResp` each side gets.
//!
//! Facts of frp's protocol, written here from its behaviour:
//! - A side with fewer than two mapped addresses cannot be classified.
//! - All mapped addresses alike: EasyNAT. Otherwise HardNAT, by what
//!   changed (IP, port or both); a port-only change whose spread is 1 to 5
//!   is "regular". A mapped IP among the side's own (assisted) addresses
//!   means it is on a public network.
//! - Five modes of (client, visitor) behaviour pairs; which modes are tried
//!   depends on the pair's classes. Each candidate starts with a score; the
//!   best (first of equals) is recommended and loses a point, a reported
//!   success gives it two (at most 10), so failed attempts rotate through
//!   the list.
//! - Mode 1: the HardNAT side sends; mode 2: the HardNAT side receives;
//!   mode 4: the side with regular port changes sends.
//! - Read timeout: the larger send delay + 5 s, + 30 s when a side listens
//!   on random ports, less the side's own send delay.
//! - Candidate ports: around the peer's last mapped port, the peer's
//!   spread + 5 either way, at most the side's range number, within 1–65535.

use std::collections::HashMap;

use crate::msg::{NatHoleClient, NatHoleDetectBehavior, NatHoleResp, NatHoleVisitor, PortsRange};

/// A side's NAT class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatType {
    /// The same mapping for every destination.
    Easy,
    /// The mapping changes.
    Hard,
}

/// What changed between a side's mapped addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// Nothing.
    None,
    /// The IP.
    Ip,
    /// The port.
    Port,
    /// Both.
    Both,
}

/// A side's NAT, as its mapped addresses show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatFeature {
    /// Easy or hard.
    pub nat_type: NatType,
    /// What changed.
    pub change: Change,
    /// Spread of the mapped ports, when only the port changed.
    pub ports_difference: i64,
    /// A port-only change with a spread of 1 to 5.
    pub regular_ports_change: bool,
    /// A mapped IP is one of the side's own.
    pub public_network: bool,
}

/// Split `ip:port` (`[v6]:port` too) into the IP text and the port.
fn split(addr: &str) -> Option<(&str, i64)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok().filter(|p| (0..=65535).contains(p))?))
}

/// The IPs of `ip:port` addresses (those that parse).
pub fn ips(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .filter_map(|a| split(a).map(|(h, _)| h.to_string()))
        .collect()
}

/// Classify a side from its mapped addresses and its own IPs.
pub fn classify(mapped: &[String], own_ips: &[String]) -> Result<NatFeature, String> {
    if mapped.len() <= 1 {
        return Err("not enough addresses".into());
    }
    let mut first: Option<(&str, i64)> = None;
    let (mut ip_changed, mut port_changed, mut public) = (false, false, false);
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for a in mapped {
        let (ip, port) = split(a).ok_or_else(|| format!("bad address {a:?}"))?;
        public |= own_ips.iter().any(|o| o == ip);
        lo = lo.min(port);
        hi = hi.max(port);
        match first {
            None => first = Some((ip, port)),
            Some((ip0, port0)) => {
                ip_changed |= ip != ip0;
                port_changed |= port != port0;
            }
        }
    }
    let (nat_type, change) = match (ip_changed, port_changed) {
        (true, true) => (NatType::Hard, Change::Both),
        (true, false) => (NatType::Hard, Change::Ip),
        (false, true) => (NatType::Hard, Change::Port),
        (false, false) => (NatType::Easy, Change::None),
    };
    let ports_difference = if change == Change::Port { hi - lo } else { 0 };
    Ok(NatFeature {
        nat_type,
        change,
        ports_difference,
        regular_ports_change: change == Change::Port && (1..=5).contains(&ports_difference),
        public_network: public,
    })
}

/// One side's part in a punching attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Behaviour {
    /// Sends the detect datagrams (else receives them).
    pub sender: bool,
    /// TTL of the detect datagrams (0: the system's).
    pub ttl: i64,
    /// Delay before sending, ms.
    pub send_delay_ms: i64,
    /// How many ports around the peer's to try.
    pub ports_range_number: i64,
    /// Random ports to send to.
    pub ports_random_number: i64,
    /// Random ports to listen on.
    pub listen_random_ports: i64,
}

const fn s(ttl: i64, delay: i64, range: i64, random: i64) -> Behaviour {
    Behaviour {
        sender: true,
        ttl,
        send_delay_ms: delay,
        ports_range_number: range,
        ports_random_number: random,
        listen_random_ports: 0,
    }
}

const fn r(ttl: i64, range: i64, listen: i64) -> Behaviour {
    Behaviour {
        sender: false,
        ttl,
        send_delay_ms: 0,
        ports_range_number: range,
        ports_random_number: 0,
        listen_random_ports: listen,
    }
}

/// Mode 0: both easy (a side on a public network receives).
const MODE0: [(Behaviour, Behaviour); 10] = [
    (s(0, 0, 0, 0), r(7, 0, 0)),
    (r(7, 0, 0), s(0, 0, 0, 0)),
    (s(0, 0, 0, 0), r(4, 0, 0)),
    (r(4, 0, 0), s(0, 0, 0, 0)),
    (s(0, 0, 0, 0), r(0, 0, 0)),
    (r(0, 0, 0), s(0, 0, 0, 0)),
    (s(0, 5000, 0, 0), r(0, 0, 0)),
    (s(0, 10000, 0, 0), r(0, 0, 0)),
    (r(0, 0, 0), s(0, 5000, 0, 0)),
    (r(0, 0, 0), s(0, 10000, 0, 0)),
];
/// Mode 1: the hard side (regular port changes) sends.
const MODE1: [(Behaviour, Behaviour); 6] = [
    (s(0, 0, 0, 0), r(7, 10, 0)),
    (s(0, 2000, 0, 0), r(7, 10, 0)),
    (s(0, 0, 0, 0), r(4, 10, 0)),
    (s(0, 2000, 0, 0), r(4, 10, 0)),
    (s(0, 0, 0, 0), r(0, 10, 0)),
    (s(0, 2000, 0, 0), r(0, 10, 0)),
];
/// Mode 2: the hard side receives on random ports.
const MODE2: [(Behaviour, Behaviour); 3] = [
    (s(0, 3000, 0, 1000), r(7, 0, 256)),
    (s(0, 3000, 0, 1000), r(4, 0, 256)),
    (s(0, 3000, 0, 1000), r(0, 0, 256)),
];
/// Mode 3: both hard, both with regular port changes.
const MODE3: [(Behaviour, Behaviour); 6] = [
    (s(0, 0, 10, 0), r(7, 10, 0)),
    (s(0, 0, 10, 0), r(4, 10, 0)),
    (s(0, 0, 10, 0), r(0, 10, 0)),
    (r(7, 10, 0), s(0, 0, 10, 0)),
    (r(4, 10, 0), s(0, 0, 10, 0)),
    (r(0, 10, 0), s(0, 0, 10, 0)),
];
/// Mode 4: both hard, one regular: that one sends.
const MODE4: [(Behaviour, Behaviour); 3] = [
    (s(0, 3000, 0, 1000), r(7, 2, 256)),
    (s(0, 3000, 0, 1000), r(4, 2, 256)),
    (s(0, 3000, 0, 1000), r(0, 2, 256)),
];

fn mode_table(mode: usize) -> &'static [(Behaviour, Behaviour)] {
    match mode {
        1 => &MODE1,
        2 => &MODE2,
        3 => &MODE3,
        4 => &MODE4,
        _ => &MODE0,
    }
}

/// One candidate behaviour pair and its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Score {
    mode: usize,
    index: usize,
    score: i64,
}

/// The candidates for one pair of NATs.
#[derive(Debug, Clone)]
struct Records {
    scores: Vec<Score>,
    last_used: u64,
}

fn scores(mode: usize, sender: i64, receiver: i64) -> impl Iterator<Item = Score> {
    mode_table(mode)
        .iter()
        .enumerate()
        .map(move |(index, (c, _))| Score {
            mode,
            index,
            score: if c.sender { sender } else { receiver },
        })
}

impl Records {
    fn new(c: &NatFeature, v: &NatFeature, now: u64) -> Records {
        let easy = [c, v]
            .iter()
            .filter(|f| f.nat_type == NatType::Easy)
            .count();
        let hard = 2 - easy;
        let regular = [c, v]
            .iter()
            .filter(|f| f.nat_type == NatType::Hard && f.regular_ports_change)
            .count();
        let mode0 = || -> Vec<Score> {
            if c.public_network {
                scores(0, 0, 1).collect()
            } else if v.public_network {
                scores(0, 1, 0).collect()
            } else {
                scores(0, 0, 0).collect()
            }
        };
        let mut out: Vec<Score> = Vec::new();
        match (easy, hard, regular) {
            (2, _, _) => out.extend(mode0()),
            (_, 1, 1) => {
                out.extend(scores(1, 0, 0));
                out.extend(scores(2, 0, 0));
                out.extend(mode0());
            }
            (_, 1, 0) => {
                out.extend(scores(2, 0, 0));
                out.extend(scores(1, 0, 0));
                out.extend(mode0());
            }
            (_, 2, 2) => {
                out.extend(scores(3, 0, 0));
                out.extend(scores(4, 0, 0));
            }
            (_, 2, 1) => out.extend(scores(4, 0, 0)),
            _ => {
                out.extend(scores(0, 1, 1));
                out.extend(scores(1, 1, 1));
                out.extend(scores(3, 1, 1));
            }
        }
        Records {
            scores: out,
            last_used: now,
        }
    }

    /// The best candidate (the first of equals), which loses a point.
    fn recommend(&mut self, now: u64) -> (usize, usize) {
        self.last_used = now;
        let mut best: Option<&mut Score> = None;
        for sc in self.scores.iter_mut() {
            if best.as_ref().is_none_or(|b| sc.score > b.score) {
                best = Some(sc);
            }
        }
        match best {
            Some(b) => {
                b.score -= 1;
                (b.mode, b.index)
            }
            None => (0, 0),
        }
    }

    fn report_success(&mut self, mode: usize, index: usize, now: u64) {
        self.last_used = now;
        if let Some(sc) = self
            .scores
            .iter_mut()
            .find(|s| s.mode == mode && s.index == index)
        {
            sc.score = (sc.score + 2).min(10);
        }
    }
}

/// What the broker learned per pair of NATs (keyed by both sides' first
/// mapped IP and class).
#[derive(Debug, Default)]
pub struct Analyzer {
    records: HashMap<String, Records>,
}

/// A decision for one attempt, to credit when it is reported a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The pair's key.
    pub key: String,
    /// The mode tried.
    pub mode: usize,
    /// The behaviour pair tried within it.
    pub index: usize,
}

fn feature_key(mapped: &[String], f: &NatFeature) -> String {
    let ip = ips(mapped).into_iter().next().unwrap_or_default();
    format!(
        "{ip}/{:?}/{:?}/{}",
        f.nat_type, f.change, f.regular_ports_change
    )
}

impl Analyzer {
    /// Forget pairs unused for `keep` seconds (frps keeps them a week by
    /// default); how many were dropped.
    pub fn clean(&mut self, now: u64, keep: u64) -> usize {
        let before = self.records.len();
        self.records
            .retain(|_, r| now.saturating_sub(r.last_used) <= keep);
        before - self.records.len()
    }

    /// Pairs remembered.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Credit a successful attempt (NatHoleReport with success).
    pub fn report_success(&mut self, a: &Attempt, now: u64) {
        if let Some(r) = self.records.get_mut(&a.key) {
            r.report_success(a.mode, a.index, now);
        }
    }

    /// The behaviours for the client and the visitor of this attempt.
    fn recommend(
        &mut self,
        key: &str,
        c: &NatFeature,
        v: &NatFeature,
        now: u64,
    ) -> (usize, usize, Behaviour, Behaviour) {
        let records = self
            .records
            .entry(key.to_string())
            .or_insert_with(|| Records::new(c, v, now));
        let (mode, index) = records.recommend(now);
        let (mut cb, mut vb) = mode_table(mode).get(index).copied().unwrap_or_default();
        let swap = match mode {
            1 => c.nat_type == NatType::Easy,
            2 => c.nat_type == NatType::Hard,
            4 => !c.regular_ports_change,
            _ => false,
        };
        if swap {
            std::mem::swap(&mut cb, &mut vb);
        }
        (mode, index, cb, vb)
    }

    /// Decide an attempt between the visitor and the client (the owner of
    /// the xtcp proxy) under `sid`: their responses, and the attempt to
    /// credit. An error is what both sides are told.
    pub fn decide(
        &mut self,
        sid: &str,
        visitor: &NatHoleVisitor,
        client: &NatHoleClient,
        now: u64,
    ) -> Result<(NatHoleResp, NatHoleResp, Attempt), String> {
        let cf = classify(&client.mapped_addrs, &ips(&client.assisted_addrs))
            .map_err(|e| format!("classify client nat feature error: {e}"))?;
        let vf = classify(&visitor.mapped_addrs, &ips(&visitor.assisted_addrs))
            .map_err(|e| format!("classify visitor nat feature error: {e}"))?;
        let key = format!(
            "{}|{}",
            feature_key(&visitor.mapped_addrs, &vf),
            feature_key(&client.mapped_addrs, &cf)
        );
        let (mode, index, cb, vb) = self.recommend(&key, &cf, &vf, now);
        let mut timeout = cb.send_delay_ms.max(vb.send_delay_ms) + 5000;
        if cb.listen_random_ports > 0 || vb.listen_random_ports > 0 {
            timeout += 30000;
        }
        let resp = |tid: &str,
                    own: &Behaviour,
                    peer_mapped: &[String],
                    peer_assisted: &[String],
                    peer: &NatFeature| NatHoleResp {
            transaction_id: tid.to_string(),
            sid: sid.to_string(),
            protocol: visitor.protocol.clone(),
            candidate_addrs: compact(peer_mapped),
            assisted_addrs: compact(peer_assisted),
            detect_behavior: NatHoleDetectBehavior {
                role: if own.sender { "sender" } else { "receiver" }.into(),
                mode: mode as i64,
                ttl: own.ttl,
                send_delay_ms: own.send_delay_ms,
                read_timeout_ms: timeout - own.send_delay_ms,
                candidate_ports: range_ports(
                    peer_mapped,
                    peer.ports_difference,
                    own.ports_range_number,
                ),
                send_random_ports: own.ports_random_number,
                listen_random_ports: own.listen_random_ports,
            },
            error: String::new(),
        };
        let v = resp(
            &visitor.transaction_id,
            &vb,
            &client.mapped_addrs,
            &client.assisted_addrs,
            &cf,
        );
        let c = resp(
            &client.transaction_id,
            &cb,
            &visitor.mapped_addrs,
            &visitor.assisted_addrs,
            &vf,
        );
        Ok((v, c, Attempt { key, mode, index }))
    }
}

/// Consecutive duplicates removed.
fn compact(v: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for a in v {
        if out.last() != Some(a) {
            out.push(a.clone());
        }
    }
    out
}

/// The ports to try around the peer's last mapped port.
fn range_ports(peer: &[String], difference: i64, max_number: i64) -> Vec<PortsRange> {
    if max_number <= 0 {
        return Vec::new();
    }
    let Some((_, port)) = peer.last().and_then(|a| split(a)) else {
        return Vec::new();
    };
    vec![PortsRange {
        from: (port - difference - 5).max(port - max_number).max(1),
        to: (port + difference + 5).min(port + max_number).min(65535),
    }]
}

/// An error answer (no sid, the transaction's id and the reason).
pub fn refusal(transaction_id: &str, error: &str) -> NatHoleResp {
    NatHoleResp {
        transaction_id: transaction_id.to_string(),
        error: error.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classification_follows_what_changed() {
        let f = classify(&addrs(&["1.2.3.4:5000", "1.2.3.4:5000"]), &[]).unwrap();
        assert_eq!((f.nat_type, f.change), (NatType::Easy, Change::None));
        let f = classify(&addrs(&["1.2.3.4:5000", "1.2.3.4:5003"]), &[]).unwrap();
        assert_eq!((f.nat_type, f.change), (NatType::Hard, Change::Port));
        assert_eq!(f.ports_difference, 3);
        assert!(f.regular_ports_change);
        let f = classify(&addrs(&["1.2.3.4:5000", "1.2.3.4:5100"]), &[]).unwrap();
        assert!(!f.regular_ports_change);
        let f = classify(&addrs(&["1.2.3.4:5000", "1.2.3.5:5000"]), &[]).unwrap();
        assert_eq!(f.change, Change::Ip);
        assert_eq!(f.ports_difference, 0);
        let f = classify(&addrs(&["1.2.3.4:5000", "1.2.3.5:6000"]), &[]).unwrap();
        assert_eq!(f.change, Change::Both);
        let f = classify(
            &addrs(&["[2001:db8::1]:5000", "[2001:db8::1]:5000"]),
            &addrs(&["2001:db8::1"]),
        )
        .unwrap();
        assert!(f.public_network && f.nat_type == NatType::Easy);
        assert_eq!(
            classify(&addrs(&["1.2.3.4:5000"]), &[]).unwrap_err(),
            "not enough addresses"
        );
        assert!(classify(&addrs(&["1.2.3.4:5000", "nonsense"]), &[]).is_err());
        assert!(classify(&addrs(&["1.2.3.4:5000", "1.2.3.4:70000"]), &[]).is_err());
    }

    fn pair(v_mapped: &[&str], c_mapped: &[&str]) -> (NatHoleVisitor, NatHoleClient) {
        (
            NatHoleVisitor {
                transaction_id: "tv".into(),
                proxy_name: "p".into(),
                protocol: "quic".into(),
                mapped_addrs: addrs(v_mapped),
                assisted_addrs: addrs(&["192.168.1.2:5000"]),
                ..Default::default()
            },
            NatHoleClient {
                transaction_id: "tc".into(),
                proxy_name: "p".into(),
                sid: "s".into(),
                mapped_addrs: addrs(c_mapped),
                assisted_addrs: addrs(&["10.0.0.2:6000"]),
            },
        )
    }

    #[test]
    fn two_easy_nats_get_mode_zero_and_rotate_on_failure() {
        let (v, c) = pair(
            &["198.51.100.1:4000", "198.51.100.1:4000"],
            &["203.0.113.9:6000", "203.0.113.9:6000", "203.0.113.9:6000"],
        );
        let mut a = Analyzer::default();
        let (vr, cr, first) = a.decide("s", &v, &c, 1).unwrap();
        assert_eq!((first.mode, first.index), (0, 0));
        assert_eq!(cr.detect_behavior.role, "sender");
        assert_eq!(vr.detect_behavior.role, "receiver");
        assert_eq!(vr.detect_behavior.ttl, 7);
        assert_eq!(vr.detect_behavior.read_timeout_ms, 5000);
        // Each side gets the other's addresses, consecutive repeats once.
        assert_eq!(vr.candidate_addrs, addrs(&["203.0.113.9:6000"]));
        assert_eq!(vr.assisted_addrs, addrs(&["10.0.0.2:6000"]));
        assert_eq!(cr.candidate_addrs, addrs(&["198.51.100.1:4000"]));
        assert_eq!(
            (vr.transaction_id.as_str(), cr.transaction_id.as_str()),
            ("tv", "tc")
        );
        assert_eq!((vr.sid.as_str(), vr.protocol.as_str()), ("s", "quic"));
        // No success reported: the next attempt tries the next pair.
        let (_, _, second) = a.decide("s2", &v, &c, 2).unwrap();
        assert_eq!((second.mode, second.index), (0, 1));
        // A success is tried first again.
        a.report_success(&second, 3);
        let (_, _, third) = a.decide("s3", &v, &c, 4).unwrap();
        assert_eq!((third.mode, third.index), (0, 1));
        assert_eq!(a.len(), 1);
        assert_eq!(a.clean(10_000, 60), 1);
        assert!(a.is_empty());
    }

    #[test]
    fn the_hard_side_sends_in_mode_one_with_ports_around_the_peer() {
        // Visitor: regular port changes (hard); client: easy.
        let (v, c) = pair(
            &["198.51.100.1:4000", "198.51.100.1:4002"],
            &["203.0.113.9:6000", "203.0.113.9:6000"],
        );
        let mut a = Analyzer::default();
        let (vr, cr, at) = a.decide("s", &v, &c, 1).unwrap();
        assert_eq!((at.mode, at.index), (1, 0));
        assert_eq!(vr.detect_behavior.role, "sender");
        assert_eq!(cr.detect_behavior.role, "receiver");
        assert_eq!(cr.detect_behavior.ttl, 7);
        // The receiver tries ports around the sender's last mapped port:
        // spread 2, so 4002 - 7 .. 4002 + 7, and at most 10 either way.
        assert_eq!(
            cr.detect_behavior.candidate_ports,
            vec![PortsRange {
                from: 3995,
                to: 4009
            }]
        );
        assert!(vr.detect_behavior.candidate_ports.is_empty());
    }

    #[test]
    fn a_side_without_two_addresses_is_an_error_for_both() {
        let (v, c) = pair(
            &["198.51.100.1:4000"],
            &["203.0.113.9:6000", "203.0.113.9:6000"],
        );
        let e = Analyzer::default().decide("s", &v, &c, 1).unwrap_err();
        assert_eq!(
            e,
            "classify visitor nat feature error: not enough addresses"
        );
        let (v, c) = pair(&["198.51.100.1:4000", "198.51.100.1:4000"], &[]);
        let e = Analyzer::default().decide("s", &v, &c, 1).unwrap_err();
        assert_eq!(e, "classify client nat feature error: not enough addresses");
    }

    #[test]
    fn random_listen_ports_lengthen_the_wait() {
        // Client hard (irregular), visitor easy: mode 2, the hard client
        // receives on 256 random ports, the visitor sends after 3 s.
        let (v, c) = pair(
            &["198.51.100.1:4000", "198.51.100.1:4000"],
            &["203.0.113.9:6000", "203.0.113.9:6900"],
        );
        let (vr, cr, at) = Analyzer::default().decide("s", &v, &c, 1).unwrap();
        assert_eq!(at.mode, 2);
        assert_eq!(cr.detect_behavior.role, "receiver");
        assert_eq!(cr.detect_behavior.listen_random_ports, 256);
        assert_eq!(vr.detect_behavior.send_random_ports, 1000);
        assert_eq!(
            vr.detect_behavior.read_timeout_ms,
            3000 + 5000 + 30000 - 3000
        );
        assert_eq!(cr.detect_behavior.read_timeout_ms, 38000);
    }
}
