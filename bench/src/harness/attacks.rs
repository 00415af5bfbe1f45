//! The `attack` metric family in a run: its sizes ([`AttackPlan`]), its
//! metrics (one per attack, [`planned`]), running one on a system and the
//! figures it reports ([`measure`]), and the words the report uses for it
//! ([`describe`]).
//!
//! The family runs only when `--metrics` names it (`attack`, or one
//! `attack_…` metric): it opens tens of thousands of connections and may
//! make a server hold gigabytes, which a run of the other metrics should
//! not do by surprise. Each attack gets a fresh start of the system, so
//! that its "before" is a server nobody has attacked yet.

use super::systems::SystemSpec;
use crate::load::attack::{
    ping_flood, preauth_streams, slow_reader, stalled_conns, Footprint, LoginCheck, Target, Timing,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The family's name in `--metrics`: every `attack_…` metric.
pub const FAMILY: &str = "attack";

/// Whether `metric` is one of the family's.
pub fn is_attack(metric: &str) -> bool {
    metric
        .strip_prefix(FAMILY)
        .is_some_and(|r| r.starts_with('_'))
}

/// The sizes of the attacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackPlan {
    /// Pre-login streams: connections, each one yamux session.
    pub preauth_conns: usize,
    /// Pre-login streams: streams each session opens.
    pub preauth_streams: usize,
    /// The scaled variant `attack_preauth_streams_x{scale}` opens `scale`
    /// times the connections, each with as many streams (none below 2).
    pub scale: usize,
    /// Stalled connections (both variants).
    pub stalled_conns: usize,
    /// Slow reader: user connections that never read.
    pub slow_readers: usize,
    /// Slow reader: bytes written towards each.
    pub slow_reader_bytes: u64,
    /// Ping flood: how long.
    pub ping_secs: f64,
    /// How long each attack holds everything open.
    pub hold_secs: f64,
    /// How long after the attacker has gone the last RSS is read.
    pub after_secs: f64,
}

impl AttackPlan {
    /// The sizes issue 13 asks for.
    pub fn full() -> AttackPlan {
        AttackPlan {
            preauth_conns: 20,
            preauth_streams: 4096,
            scale: 10,
            stalled_conns: 10_000,
            slow_readers: 1000,
            slow_reader_bytes: 2 << 20,
            ping_secs: 10.0,
            hold_secs: 3.0,
            after_secs: 2.0,
        }
    }

    /// Small sizes, to try the family in seconds.
    pub fn smoke() -> AttackPlan {
        AttackPlan {
            preauth_conns: 2,
            preauth_streams: 64,
            scale: 10,
            stalled_conns: 200,
            slow_readers: 20,
            slow_reader_bytes: 256 << 10,
            ping_secs: 2.0,
            hold_secs: 1.0,
            after_secs: 1.0,
        }
    }
}

impl Default for AttackPlan {
    fn default() -> AttackPlan {
        AttackPlan::full()
    }
}

/// One attack of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// `conns` sessions of the plan's streams each, never logging in.
    PreauthStreams { conns: usize },
    /// The plan's stalled connections, sending `first_byte` or nothing.
    StalledConns { first_byte: Option<u8> },
    /// Users who never read.
    SlowReader,
    /// Pings, never reading the Pongs.
    PingFlood,
}

/// The family's metrics under `plan`, in the order they run.
pub fn planned(plan: &AttackPlan) -> Vec<(String, Attack)> {
    let mut v = vec![(
        "attack_preauth_streams".to_string(),
        Attack::PreauthStreams {
            conns: plan.preauth_conns,
        },
    )];
    if plan.scale > 1 {
        v.push((
            format!("attack_preauth_streams_x{}", plan.scale),
            Attack::PreauthStreams {
                conns: plan.preauth_conns * plan.scale,
            },
        ));
    }
    v.extend([
        (
            "attack_stalled_conns".to_string(),
            Attack::StalledConns { first_byte: None },
        ),
        (
            "attack_stalled_conns_byte".to_string(),
            Attack::StalledConns {
                first_byte: Some(0),
            },
        ),
        ("attack_slow_reader".to_string(), Attack::SlowReader),
        ("attack_ping_flood".to_string(), Attack::PingFlood),
    ]);
    v
}

/// What the report calls `metric` under `plan`.
pub fn describe(plan: &AttackPlan, metric: &str) -> Option<String> {
    let (_, a) = planned(plan).into_iter().find(|(m, _)| m == metric)?;
    Some(match a {
        Attack::PreauthStreams { conns } => format!(
            "streams before login: {conns} conns × {} streams",
            plan.preauth_streams
        ),
        Attack::StalledConns { first_byte: None } => {
            format!("{} stalled conns, silent", plan.stalled_conns)
        }
        Attack::StalledConns {
            first_byte: Some(b),
        } => format!(
            "{} stalled conns after one byte 0x{b:02x}",
            plan.stalled_conns
        ),
        Attack::SlowReader => format!(
            "slow reader: {} users × {} KiB, never reading",
            plan.slow_readers,
            plan.slow_reader_bytes >> 10
        ),
        Attack::PingFlood => format!("Ping flood for {} s, never reading", plan.ping_secs),
    })
}

/// How long any one attack may take before the harness kills the server
/// to end it: the plan's own waits, and two and a half minutes for opening
/// connections, filling and logging in, each of which has limits of its
/// own that this only backs up.
pub fn time_limit(plan: &AttackPlan) -> Duration {
    secs(plan.hold_secs + plan.after_secs + plan.ping_secs) + Duration::from_secs(150)
}

/// Runs `attack` on a started system (its server `pid`, its frp port
/// `frp`) and returns its figures and its full result.
pub fn measure(
    plan: &AttackPlan,
    attack: Attack,
    spec: &SystemSpec,
    frp: std::net::SocketAddr,
    pid: u32,
    token: &str,
) -> anyhow::Result<(BTreeMap<String, f64>, serde_json::Value)> {
    // The bench client logs in as the system's own client does; a stock
    // frpc's defaults are yamux, and TLS the servers do not insist on.
    let (tls, mux) = match &spec.client {
        Some(c) if c.kind == "bench" => (c.tls, c.mux),
        _ => (false, true),
    };
    let target = Target {
        frp,
        token: token.to_string(),
        tls,
        mux,
        pid,
    };
    let timing = Timing::new(secs(plan.hold_secs), secs(plan.after_secs));
    let timeout = Duration::from_secs(5);
    let mut f = BTreeMap::new();
    let detail = match attack {
        Attack::PreauthStreams { conns } => {
            if !mux {
                anyhow::bail!(
                    "needs a server with tcpMux on: this system's client logs in without yamux"
                );
            }
            let r = preauth_streams::run(
                &target,
                &timing,
                preauth_streams::PreauthOpts {
                    conns,
                    streams: plan.preauth_streams,
                    timeout,
                },
            )?;
            common(&mut f, &r.memory, &r.login);
            put(&mut f, "connected", r.connected as f64);
            put(&mut f, "streams_sent", r.streams_sent as f64);
            put(&mut f, "streams_acked", r.streams_acked as f64);
            put(&mut f, "streams_reset", r.streams_reset as f64);
            put(&mut f, "sessions_closed", r.sessions_closed as f64);
            serde_json::to_value(&r)?
        }
        Attack::StalledConns { first_byte } => {
            let r = stalled_conns::run(
                &target,
                &timing,
                stalled_conns::StalledOpts {
                    conns: plan.stalled_conns,
                    first_byte,
                    threads: 4,
                    timeout,
                    open_limit: Duration::from_secs(30),
                },
            )?;
            common(&mut f, &r.memory, &r.login);
            put(&mut f, "connected", r.connected as f64);
            put(&mut f, "refused", r.refused as f64);
            put(&mut f, "kept_open", r.kept_open as f64);
            serde_json::to_value(&r)?
        }
        Attack::SlowReader => {
            let r = slow_reader::run(
                &target,
                &timing,
                slow_reader::SlowReaderOpts {
                    users: plan.slow_readers,
                    bytes_per_user: plan.slow_reader_bytes,
                    stall: Duration::from_secs(2),
                    fill_limit: Duration::from_secs(30),
                    timeout,
                },
            )?;
            common(&mut f, &r.memory, &r.login);
            put(&mut f, "users_connected", r.users_connected as f64);
            put(&mut f, "work_conns", r.work_conns as f64);
            put(&mut f, "mib_written", r.bytes_written as f64 / 1048576.0);
            serde_json::to_value(&r)?
        }
        Attack::PingFlood => {
            let r = ping_flood::run(
                &target,
                &timing,
                ping_flood::PingFloodOpts {
                    duration: secs(plan.ping_secs),
                    timeout,
                },
            )?;
            common(&mut f, &r.memory, &r.login);
            put(&mut f, "pings_sent", r.pings_sent as f64);
            put(&mut f, "stalled_s", r.stalled_s);
            put(
                &mut f,
                "server_closed",
                f64::from(u8::from(r.server_closed_after_s.is_some())),
            );
            if let Some(s) = r.server_closed_after_s {
                put(&mut f, "closed_after_s", s);
            }
            serde_json::to_value(&r)?
        }
    };
    Ok((f, detail))
}

/// The figures every attack reports.
fn common(f: &mut BTreeMap<String, f64>, m: &Footprint, l: &LoginCheck) {
    put(f, "rss_before_kib", m.rss_before_kib as f64);
    put(f, "rss_peak_kib", m.rss_peak_kib as f64);
    put(f, "rss_after_kib", m.rss_after_kib as f64);
    put(
        f,
        "rss_growth_kib",
        m.rss_peak_kib as f64 - m.rss_before_kib as f64,
    );
    put(f, "harness_rss_peak_kib", m.harness_rss_peak_kib as f64);
    if let (Some(b), Some(a)) = (m.fds_before, m.fds_after) {
        put(f, "fds_before", b as f64);
        put(f, "fds_after", a as f64);
    }
    if m.hit_ceiling {
        put(f, "hit_ceiling", 1.0);
    }
    put(f, "login_ok", f64::from(u8::from(l.ok)));
    if let Some(ms) = l.ms {
        put(f, "login_ms", ms);
    }
}

fn put(f: &mut BTreeMap<String, f64>, k: &str, v: f64) {
    f.insert(k.to_string(), v);
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_and_its_scaled_variant() {
        let mut p = AttackPlan::full();
        let names: Vec<String> = planned(&p).into_iter().map(|(m, _)| m).collect();
        assert_eq!(
            names,
            [
                "attack_preauth_streams",
                "attack_preauth_streams_x10",
                "attack_stalled_conns",
                "attack_stalled_conns_byte",
                "attack_slow_reader",
                "attack_ping_flood"
            ]
        );
        assert!(names.iter().all(|n| is_attack(n)));
        assert!(!is_attack("attack") && !is_attack("attacks") && !is_attack("idle"));
        assert_eq!(
            describe(&p, "attack_preauth_streams_x10").as_deref(),
            Some("streams before login: 200 conns × 4096 streams")
        );
        p.scale = 1;
        assert!(!planned(&p)
            .iter()
            .any(|(m, _)| m.starts_with("attack_preauth_streams_x")));
    }
}
