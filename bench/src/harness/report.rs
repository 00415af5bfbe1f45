//! Turning a `run.json` into a markdown table and SVG plots.

use super::attacks;
use super::runner::{RunRecord, Sample};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Which way a figure is better.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    High,
    Low,
}

/// (metric, figure, label, better, scale applied for display)
const ROWS: &[(&str, &str, &str, Better, f64)] = &[
    (
        "bulk1_up",
        "gbit_s",
        "bulk 1 stream up, Gbit/s",
        Better::High,
        1.0,
    ),
    (
        "bulk1_down",
        "gbit_s",
        "bulk 1 stream down, Gbit/s",
        Better::High,
        1.0,
    ),
    (
        "bulk2_down",
        "gbit_s",
        "bulk 2 streams down, Gbit/s",
        Better::High,
        1.0,
    ),
    (
        "bulk8_up",
        "gbit_s",
        "bulk 8 streams up, Gbit/s",
        Better::High,
        1.0,
    ),
    (
        "bulk8_down",
        "gbit_s",
        "bulk 8 streams down, Gbit/s",
        Better::High,
        1.0,
    ),
    (
        "rtt",
        "p50_us",
        "echo RTT p50, µs (64 B, sequential)",
        Better::Low,
        1.0,
    ),
    ("rtt", "p99_us", "echo RTT p99, µs", Better::Low, 1.0),
    (
        "connrate",
        "conns_per_s",
        "new conns/s with one echo",
        Better::High,
        1.0,
    ),
    (
        "http",
        "req_per_s",
        "HTTP req/s (1 KiB, keep-alive)",
        Better::High,
        1.0,
    ),
    ("http", "p99_us", "HTTP p99 latency, µs", Better::Low, 1.0),
    (
        "bulk1_up",
        "server_cpu_s_per_gb",
        "server CPU-s/GB, bulk 1 up",
        Better::Low,
        1.0,
    ),
    (
        "bulk1_down",
        "server_cpu_s_per_gb",
        "server CPU-s/GB, bulk 1 down",
        Better::Low,
        1.0,
    ),
    (
        "bulk8_up",
        "server_cpu_s_per_gb",
        "server CPU-s/GB, bulk 8 up",
        Better::Low,
        1.0,
    ),
    (
        "bulk8_down",
        "server_cpu_s_per_gb",
        "server CPU-s/GB, bulk 8 down",
        Better::Low,
        1.0,
    ),
    (
        "bulk1_up",
        "client_cpu_s_per_gb",
        "client process CPU-s/GB, bulk 1 up",
        Better::Low,
        1.0,
    ),
    (
        "bulk8_down",
        "client_cpu_s_per_gb",
        "client process CPU-s/GB, bulk 8 down",
        Better::Low,
        1.0,
    ),
    (
        "server",
        "rss_start_kib",
        "server RSS at start, MiB",
        Better::Low,
        1.0 / 1024.0,
    ),
    (
        "server",
        "peak_rss_kib",
        "server peak RSS under load, MiB",
        Better::Low,
        1.0 / 1024.0,
    ),
    (
        "idle",
        "bytes_per_conn",
        "server RSS per idle conn, bytes",
        Better::Low,
        1.0,
    ),
    (
        "idle_http",
        "bytes_per_conn",
        "server RSS per idle HTTP keep-alive conn, bytes",
        Better::Low,
        1.0,
    ),
    (
        "proxies",
        "bytes_per_proxy",
        "server RSS per registered proxy, bytes",
        Better::Low,
        1.0,
    ),
    ("login", "logins_per_s", "logins/s", Better::High, 1.0),
];

/// A number with about three significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{:.0}", v)
    } else if a >= 100.0 {
        format!("{:.1}", v)
    } else if a >= 10.0 {
        format!("{:.2}", v)
    } else {
        format!("{:.3}", v)
    }
}

/// An axis label: whole numbers without decimals.
fn tick(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        num(v)
    }
}

/// A round step (1, 2 or 5 × 10^k) giving about five intervals over `span`.
fn nice_step(span: f64) -> f64 {
    let raw = (span / 5.0).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Per (system, workers, metric, figure): the values over repeats.
type Table = BTreeMap<(String, usize, String, String), Vec<f64>>;

fn collect(samples: &[Sample]) -> Table {
    let mut t: Table = BTreeMap::new();
    for s in samples {
        for (k, v) in &s.figures {
            t.entry((s.system.clone(), s.workers, s.metric.clone(), k.clone()))
                .or_default()
                .push(*v);
        }
    }
    t
}

struct Cell {
    median: f64,
    spread: f64,
    n: usize,
}

fn cell(t: &Table, system: &str, workers: usize, metric: &str, fig: &str) -> Option<Cell> {
    let v = t.get(&(system.into(), workers, metric.into(), fig.into()))?;
    let m = median(v.clone())?;
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let spread = if m != 0.0 {
        (hi - lo) / 2.0 / m.abs()
    } else {
        0.0
    };
    Some(Cell {
        median: m,
        spread,
        n: v.len(),
    })
}

fn show(c: &Cell, scale: f64) -> String {
    if c.n > 1 && c.spread >= 0.005 {
        format!("{} ±{:.0}%", num(c.median * scale), c.spread * 100.0)
    } else {
        num(c.median * scale)
    }
}

/// The markdown report of a run.
pub fn markdown(r: &RunRecord) -> String {
    let t = collect(&r.samples);
    let mut o = String::new();
    let _ = writeln!(o, "### Suite `{}`, {}\n", r.suite.name, r.date);
    let _ = writeln!(
        o,
        "- **Machine:** {}, {} cores, {} GiB, Linux {}.",
        r.machine.cpu, r.machine.cores, r.machine.mem_gib, r.machine.kernel
    );
    let _ = writeln!(o, "- **Command:** `{}`", r.command);
    if let Some(c) = &r.commit {
        let _ = writeln!(o, "- **Commit:** `{c}`");
    }
    let _ = writeln!(
        o,
        "- **Repeats:** {} (systems alternate within each repeat; each is started fresh); cells are medians, ± is half the range over repeats. Wall time {:.0} s.",
        r.suite.repeats, r.wall_s
    );
    for (path, v) in &r.versions {
        let _ = writeln!(o, "- `{path}`: {v}");
    }
    for (name, why) in &r.skipped {
        let _ = writeln!(o, "- skipped: {name} ({why})");
    }
    for s in &r.systems {
        if !s.description.is_empty() {
            let _ = writeln!(o, "- `{}`: {}", s.name, s.description);
        }
    }
    o.push('\n');
    let attacked = r.samples.iter().any(|s| attacks::is_attack(&s.metric));
    if r.suite.scaling {
        scaling_table(&mut o, r, &t);
    } else if !attacked || r.samples.iter().any(|s| !attacks::is_attack(&s.metric)) {
        main_tables(&mut o, r, &t);
    }
    if attacked {
        attack_table(&mut o, r, &t);
    }
    let errors: Vec<&Sample> = r.samples.iter().filter(|s| s.error.is_some()).collect();
    if !errors.is_empty() {
        o.push_str("\n**Errors during the run:**\n\n");
        for s in errors {
            let _ = writeln!(
                o,
                "- {} (workers {}, repeat {}) {}: {}",
                s.system,
                s.workers,
                s.repeat + 1,
                s.metric,
                s.error
                    .as_deref()
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
        }
    }
    o
}

fn main_tables(o: &mut String, r: &RunRecord, t: &Table) {
    let w = r.workers.first().copied().unwrap_or(1);
    let names: Vec<&str> = r.systems.iter().map(|s| s.name.as_str()).collect();
    let _ = writeln!(o, "| metric | {} |", names.join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(names.len()));
    for &(metric, fig, label, _, scale) in ROWS {
        let cells: Vec<String> = names
            .iter()
            .map(|n| {
                cell(t, n, w, metric, fig)
                    .map(|c| show(&c, scale))
                    .unwrap_or("—".into())
            })
            .collect();
        if cells.iter().all(|c| c == "—") {
            continue;
        }
        let _ = writeln!(o, "| {label} | {} |", cells.join(" | "));
    }
    // Open-loop latency at each offered rate.
    if has_open_loop(r) {
        let _ = writeln!(
            o,
            "\nOpen-loop 64 B echo over {} connections, latency from the intended send time, p50 / p99 / p99.9 in µs (achieved rate in brackets when it fell more than 2% short):\n",
            r.suite.open_conns
        );
        let _ = writeln!(o, "| offered req/s | {} |", names.join(" | "));
        let _ = writeln!(o, "|---|{}", "---|".repeat(names.len()));
        for rate in &r.suite.open_rates {
            let metric = format!("open@{}", *rate as u64);
            let cells: Vec<String> = names
                .iter()
                .map(|n| {
                    let g = |f: &str| cell(t, n, w, &metric, f).map(|c| c.median);
                    match (g("p50_us"), g("p99_us"), g("p999_us")) {
                        (Some(a), Some(b), Some(c)) => {
                            let mut s = format!("{} / {} / {}", num(a), num(b), num(c));
                            if let Some(ach) = g("achieved_per_s") {
                                if ach < rate * 0.98 {
                                    let _ = write!(s, " [{}]", num(ach));
                                }
                            }
                            s
                        }
                        _ => "—".into(),
                    }
                })
                .collect();
            let _ = writeln!(o, "| {} | {} |", num(*rate), cells.join(" | "));
        }
    }
    // Ratios: against direct, and against each system's `compare`.
    let direct = r
        .systems
        .iter()
        .find(|s| s.kind == "direct")
        .map(|s| s.name.clone());
    let pairs: Vec<(String, String)> = r
        .systems
        .iter()
        .filter_map(|s| s.compare.clone().map(|c| (s.name.clone(), c)))
        .filter(|(_, c)| names.contains(&c.as_str()))
        .collect();
    if direct.is_none() && pairs.is_empty() {
        return;
    }
    let mut heads: Vec<String> = Vec::new();
    let mut cols: Vec<(String, String)> = Vec::new();
    if let Some(d) = &direct {
        for s in &r.systems {
            if s.kind != "direct" {
                heads.push(format!("{} vs direct", s.name));
                cols.push((s.name.clone(), d.clone()));
            }
        }
    }
    for (a, b) in &pairs {
        heads.push(format!("{a} / {b}"));
        cols.push((a.clone(), b.clone()));
    }
    let _ = writeln!(
        o,
        "\nRatios of medians (throughput: ×, higher is better; latency against direct: added µs; CPU and memory: ×, lower is better):\n"
    );
    let _ = writeln!(o, "| metric | {} |", heads.join(" | "));
    let _ = writeln!(o, "|---|{}", "---|".repeat(heads.len()));
    for &(metric, fig, label, better, _) in ROWS {
        let cells: Vec<String> = cols
            .iter()
            .map(|(a, b)| {
                let (Some(x), Some(y)) = (cell(t, a, w, metric, fig), cell(t, b, w, metric, fig))
                else {
                    return "—".into();
                };
                let vs_direct = direct.as_deref() == Some(b.as_str());
                if vs_direct && better == Better::Low && fig.ends_with("_us") {
                    format!("+{}", num(x.median - y.median))
                } else if y.median != 0.0 {
                    format!("{:.2}×", x.median / y.median)
                } else {
                    "—".into()
                }
            })
            .collect();
        if cells.iter().all(|c| c == "—") {
            continue;
        }
        let _ = writeln!(o, "| {label} | {} |", cells.join(" | "));
    }
}

/// Whether the run measured open-loop latency.
fn has_open_loop(r: &RunRecord) -> bool {
    !r.suite.open_rates.is_empty() && r.samples.iter().any(|s| s.metric.starts_with("open@"))
}

/// How an attack figure reads in a cell.
#[derive(Clone, Copy, PartialEq)]
enum Shown {
    /// KiB shown as MiB, with a ratio between compared systems.
    Mib,
    /// A number as it is.
    Plain,
    /// 1 or 0 over the repeats: "yes", "no" or "k/n".
    YesNo,
}

/// The attack table's figures, in row order: (figure, label, how shown).
/// Each attack shows the rows it has figures for.
const ATTACK_ROWS: &[(&str, &str, Shown)] = &[
    ("rss_before_kib", "server RSS before, MiB", Shown::Mib),
    ("rss_peak_kib", "server RSS at peak, MiB", Shown::Mib),
    ("rss_growth_kib", "peak − before, MiB", Shown::Mib),
    (
        "rss_after_kib",
        "server RSS after the attacker left, MiB",
        Shown::Mib,
    ),
    (
        "fds_before",
        "server's open descriptors before",
        Shown::Plain,
    ),
    ("fds_after", "… after the attacker left", Shown::Plain),
    ("hit_ceiling", "stopped at the memory ceiling", Shown::YesNo),
    ("connected", "connections opened", Shown::Plain),
    ("streams_sent", "stream opens sent", Shown::Plain),
    ("streams_acked", "streams acknowledged (ACK)", Shown::Plain),
    (
        "streams_reset",
        "streams reset by the server (RST)",
        Shown::Plain,
    ),
    (
        "sessions_closed",
        "sessions the server closed",
        Shown::Plain,
    ),
    (
        "kept_open",
        "connections kept open at the end of the hold",
        Shown::Plain,
    ),
    (
        "refused",
        "connections refused or closed by the server",
        Shown::Plain,
    ),
    ("users_connected", "user connections opened", Shown::Plain),
    (
        "work_conns",
        "work connections the client opened",
        Shown::Plain,
    ),
    ("mib_written", "MiB written towards the users", Shown::Plain),
    ("pings_sent", "Pings sent", Shown::Plain),
    (
        "stalled_s",
        "s the Ping writes waited (server not reading)",
        Shown::Plain,
    ),
    (
        "server_closed",
        "server closed the connection",
        Shown::YesNo,
    ),
    ("closed_after_s", "… after, s", Shown::Plain),
    (
        "login_ok",
        "a legitimate login succeeded during the attack",
        Shown::YesNo,
    ),
    ("login_ms", "its time to LoginResp, ms", Shown::Plain),
];

/// The attack family: one block of rows per attack, systems side by side,
/// and the ratio of each compared pair for the memory rows.
fn attack_table(o: &mut String, r: &RunRecord, t: &Table) {
    let w = r.workers.first().copied().unwrap_or(1);
    let names: Vec<&str> = r
        .systems
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| {
            r.samples
                .iter()
                .any(|s| s.system == *n && attacks::is_attack(&s.metric))
        })
        .collect();
    let pairs: Vec<(&str, &str)> = r
        .systems
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.compare.as_deref()?)))
        .filter(|(a, b)| names.contains(a) && names.contains(b))
        .collect();
    let p = &r.suite.attack;
    let _ = writeln!(
        o,
        "\nAttacks on the server's memory (each on a fresh start of the system; held {} s, RSS read {} s after the attacker left; the attacker connects from {}):\n",
        num(p.hold_secs),
        num(p.after_secs),
        crate::load::attack::dial::ATTACKER_SOURCE
    );
    let mut head = vec!["attack".to_string(), "figure".to_string()];
    head.extend(names.iter().map(|n| n.to_string()));
    head.extend(pairs.iter().map(|(a, b)| format!("{a} / {b}")));
    let _ = writeln!(o, "| {} |", head.join(" | "));
    let _ = writeln!(o, "|{}", "---|".repeat(head.len()));
    for (metric, _) in attacks::planned(p) {
        let mut first = true;
        for &(fig, label, shown) in ATTACK_ROWS {
            let cells: Vec<Option<String>> = names
                .iter()
                .map(|n| attack_cell(t, n, w, &metric, fig, shown))
                .collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            let mut row = vec![
                if first {
                    format!(
                        "{} (`{metric}`)",
                        attacks::describe(p, &metric).unwrap_or_default()
                    )
                } else {
                    String::new()
                },
                label.to_string(),
            ];
            first = false;
            row.extend(cells.into_iter().map(|c| c.unwrap_or("—".into())));
            for (a, b) in &pairs {
                let ratio = match (
                    shown,
                    cell(t, a, w, &metric, fig),
                    cell(t, b, w, &metric, fig),
                ) {
                    (Shown::Mib, Some(x), Some(y)) if y.median != 0.0 => {
                        format!("{:.2}×", x.median / y.median)
                    }
                    _ => String::new(),
                };
                row.push(ratio);
            }
            let _ = writeln!(o, "| {} |", row.join(" | "));
        }
    }
}

/// One attack figure of one system, or None where it has none.
fn attack_cell(
    t: &Table,
    system: &str,
    w: usize,
    metric: &str,
    fig: &str,
    shown: Shown,
) -> Option<String> {
    match shown {
        Shown::Mib => cell(t, system, w, metric, fig).map(|c| show(&c, 1.0 / 1024.0)),
        Shown::Plain => cell(t, system, w, metric, fig).map(|c| show(&c, 1.0)),
        Shown::YesNo => {
            let v = t.get(&(system.into(), w, metric.into(), fig.into()))?;
            let yes = v.iter().filter(|&&x| x > 0.5).count();
            Some(match yes {
                0 => "no".into(),
                y if y == v.len() => "yes".into(),
                y => format!("{y}/{}", v.len()),
            })
        }
    }
}

fn scaling_table(o: &mut String, r: &RunRecord, t: &Table) {
    use super::runner::server_cpus_for;
    let first = r.workers.first().copied().unwrap_or(1);
    let (streams, bulk) = scaling_bulk(r);
    let cpus = |w: usize| {
        let c = server_cpus_for(w, &r.server_cpus, &r.load_cpus);
        if c.is_empty() {
            "any".to_string()
        } else {
            let shared = c.iter().any(|x| r.load_cpus.contains(x));
            format!(
                "{}{}",
                cpu_list(&c),
                if shared { " (shared with load)" } else { "" }
            )
        }
    };
    if !r.load_cpus.is_empty() || r.suite.sessions > 1 {
        let _ = writeln!(
            o,
            "Load: {} bench-client session(s), {streams} bulk stream(s) and {} connection-rate threads spread over them; harness on CPUs {}.\n",
            r.suite.sessions,
            r.suite.connrate_threads,
            if r.load_cpus.is_empty() { "any".to_string() } else { cpu_list(&r.load_cpus) },
        );
    }
    for s in r.systems.iter().filter(|s| s.kind != "direct") {
        let _ = writeln!(
            o,
            "`{}` by worker count (ideal = workers × the {first}-worker figure / {first}):\n",
            s.name
        );
        let _ = writeln!(
            o,
            "| workers | server CPUs | bulk {streams} up Gbit/s | of linear | slowest / fastest stream | server CPU-s/GB | conns/s | of linear |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        let base_b = cell(t, &s.name, first, &bulk, "gbit_s").map(|c| c.median);
        let base_c = cell(t, &s.name, first, "connrate", "conns_per_s").map(|c| c.median);
        for &w in &r.workers {
            let b = cell(t, &s.name, w, &bulk, "gbit_s");
            let cpu = cell(t, &s.name, w, &bulk, "server_cpu_s_per_gb");
            // Medians over repeats; records before these figures: "—".
            let slow = cell(t, &s.name, w, &bulk, "stream_min_gbit_s");
            let fast = cell(t, &s.name, w, &bulk, "stream_max_gbit_s");
            let spread = match (slow, fast) {
                (Some(a), Some(b)) => format!("{:.2} / {:.2}", a.median, b.median),
                _ => "—".into(),
            };
            let c = cell(t, &s.name, w, "connrate", "conns_per_s");
            let lin = |v: Option<&Cell>, base: Option<f64>| match (v, base) {
                (Some(v), Some(b)) if b > 0.0 => {
                    format!("{:.2}", v.median / (b * w as f64 / first as f64))
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                o,
                "| {w} | {} | {} | {} | {spread} | {} | {} | {} |",
                cpus(w),
                b.as_ref().map(|c| show(c, 1.0)).unwrap_or("—".into()),
                lin(b.as_ref(), base_b),
                cpu.as_ref().map(|c| show(c, 1.0)).unwrap_or("—".into()),
                c.as_ref().map(|c| show(c, 1.0)).unwrap_or("—".into()),
                lin(c.as_ref(), base_c),
            );
        }
        o.push('\n');
    }
    if let Some(d) = r.systems.iter().find(|s| s.kind == "direct") {
        let b = cell(t, &d.name, first, &bulk, "gbit_s");
        let c = cell(t, &d.name, first, "connrate", "conns_per_s");
        let _ = writeln!(
            o,
            "Direct loopback on the same machine: bulk {streams} up {} Gbit/s, {} conns/s.\n",
            b.map(|c| show(&c, 1.0)).unwrap_or("—".into()),
            c.map(|c| show(&c, 1.0)).unwrap_or("—".into())
        );
    }
}

/// The scaling suite's bulk cell: its stream count and metric name
/// (`bulk32_up` since the suite spreads its load over sessions; `bulk8_up`
/// in older records).
fn scaling_bulk(r: &RunRecord) -> (usize, String) {
    let n = r.suite.bulk.first().map_or(8, |b| b.0);
    (n, format!("bulk{n}_up"))
}

/// `0-7,9` for [0, 1, …, 7, 9].
fn cpu_list(c: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let mut j = i;
        while j + 1 < c.len() && c[j + 1] == c[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            c[i].to_string()
        } else {
            format!("{}-{}", c[i], c[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    pub color: usize,
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as a standalone SVG document.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
    series: &[Series],
) -> String {
    let (w, h) = (860.0, 460.0);
    let (l, r, top, b) = (80.0, 300.0, 40.0, 60.0);
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| !log_y || p.1 > 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        (l + w - r) / 2.0,
        esc(title)
    );
    if x0 > x1 {
        o.push_str("<text x=\"40\" y=\"80\">no data</text>\n</svg>\n");
        return o;
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    let (ty0, ty1) = if log_y {
        let a = y0.max(1e-9).log10().floor();
        let mut b = y1.max(1e-9).log10().ceil();
        if b <= a {
            b = a + 1.0;
        }
        (a, b)
    } else {
        let lo = 0.0f64.min(y0);
        let hi = if y1 <= 0.0 { 1.0 } else { y1 * 1.05 };
        let step = nice_step(hi - lo);
        (lo, (hi / step).ceil() * step)
    };
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| {
        let v = if log_y { y.max(1e-9).log10() } else { y };
        h - b - (v - ty0) / (ty1 - ty0) * (h - top - b)
    };
    // Axes and grid.
    let _ = writeln!(
        o,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{l}\" y1=\"{top}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>",
        h - b,
        w - r,
        h - b,
        h - b
    );
    let yticks: Vec<f64> = if log_y {
        (ty0 as i32..=ty1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        let step = nice_step(ty1 - ty0);
        let n = ((ty1 - ty0) / step).round() as i64;
        (0..=n).map(|i| ty0 + step * i as f64).collect()
    };
    for y in yticks {
        let yy = py(y);
        let _ = writeln!(
            o,
            "<line x1=\"{l}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - r,
            l - 6.0,
            yy + 4.0,
            tick(y)
        );
    }
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.dedup();
    for x in xs {
        let xx = px(x);
        let _ = writeln!(
            o,
            "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            h - b,
            h - b + 16.0,
            tick(x)
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">{}</text>",
        (l + w - r) / 2.0,
        h - 18.0,
        esc(x_label),
        (top + h - b) / 2.0,
        (top + h - b) / 2.0,
        esc(&format!("{y_label}{}", if log_y { " (log scale)" } else { "" }))
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[s.color % COLORS.len()];
        let mut p: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| !log_y || p.1 > 0.0)
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in &p {
            let _ = writeln!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                px(x),
                py(y)
            );
        }
        let ly = top + 14.0 + i as f64 * 18.0;
        let lx = w - r + 12.0;
        let _ = writeln!(
            o,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{}</text>",
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// The SVG plots of a run: (file name, document).
pub fn plots(r: &RunRecord) -> Vec<(String, String)> {
    let t = collect(&r.samples);
    let mut out = Vec::new();
    if r.suite.scaling {
        let mut series = Vec::new();
        let (n, bulk) = scaling_bulk(r);
        let bulk_label = format!("bulk {n} up, Gbit/s");
        for (i, s) in r.systems.iter().filter(|s| s.kind != "direct").enumerate() {
            for (metric, fig, label, dashed) in [
                (bulk.as_str(), "gbit_s", bulk_label.as_str(), false),
                ("connrate", "conns_per_s", "conns/s ÷ 1000", true),
            ] {
                let scale = if fig == "conns_per_s" { 1e-3 } else { 1.0 };
                let points: Vec<(f64, f64)> = r
                    .workers
                    .iter()
                    .filter_map(|&w| {
                        cell(&t, &s.name, w, metric, fig).map(|c| (w as f64, c.median * scale))
                    })
                    .collect();
                // Linear scaling from the smallest worker count, for reference.
                let first = r.workers.first().copied().unwrap_or(1) as f64;
                let ideal: Vec<(f64, f64)> = match points.first() {
                    Some(&(w0, v0)) if w0 == first => r
                        .workers
                        .iter()
                        .map(|&w| (w as f64, v0 * w as f64 / first))
                        .collect(),
                    _ => Vec::new(),
                };
                series.push(Series {
                    name: format!("{} {label}", s.name),
                    points,
                    dashed: false,
                    color: 2 * i + usize::from(dashed),
                });
                if ideal.len() > 1 {
                    series.push(Series {
                        name: format!("linear, {label}"),
                        points: ideal,
                        dashed: true,
                        color: 2 * i + usize::from(dashed),
                    });
                }
            }
        }
        out.push((
            "scaling.svg".into(),
            line_chart(
                "Throughput and connection rate vs workers (dashed: linear)",
                "fastpath workers",
                "Gbit/s, or thousands of conns/s",
                false,
                &series,
            ),
        ));
    } else if has_open_loop(r) {
        let w = r.workers.first().copied().unwrap_or(1);
        let mut series = Vec::new();
        for (i, s) in r.systems.iter().enumerate() {
            for (fig, dashed) in [("p99_us", false), ("p50_us", true)] {
                let points = r
                    .suite
                    .open_rates
                    .iter()
                    .filter_map(|rate| {
                        cell(&t, &s.name, w, &format!("open@{}", *rate as u64), fig)
                            .map(|c| (*rate, c.median))
                    })
                    .collect();
                series.push(Series {
                    name: format!("{} {}", s.name, &fig[..3]),
                    points,
                    dashed,
                    color: i,
                });
            }
        }
        out.push((
            "latency.svg".into(),
            line_chart(
                "Open-loop echo latency vs offered rate (p99 solid, p50 dashed)",
                "offered requests/s",
                "µs",
                true,
                &series,
            ),
        ));
    }
    out
}

/// Writes `results.md` and the plots next to `run.json`.
pub fn write(dir: &std::path::Path, r: &RunRecord) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut written = Vec::new();
    let md = dir.join("results.md");
    std::fs::write(&md, markdown(r))?;
    written.push(md);
    for (name, svg) in plots(r) {
        let p = dir.join(name);
        std::fs::write(&p, svg)?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::runner::{Machine, RunRecord, Sample, Suite};
    use crate::harness::systems::SystemSpec;

    fn spec(name: &str, kind: &str, compare: Option<&str>) -> SystemSpec {
        SystemSpec {
            name: name.into(),
            description: String::new(),
            kind: kind.into(),
            frp: false,
            scales: false,
            compare: compare.map(Into::into),
            suites: vec![],
            server: None,
            client: None,
        }
    }

    fn sample(system: &str, repeat: usize, metric: &str, fig: &str, v: f64) -> Sample {
        Sample {
            system: system.into(),
            workers: 2,
            repeat,
            metric: metric.into(),
            figures: [(fig.to_string(), v)].into_iter().collect(),
            detail: serde_json::Value::Null,
            error: None,
        }
    }

    fn record(samples: Vec<Sample>) -> RunRecord {
        let mut suite = Suite::named("full").expect("full suite");
        suite.open_rates.clear();
        RunRecord {
            suite,
            started: 0,
            date: "1970-01-01".into(),
            machine: Machine {
                cpu: "test".into(),
                cores: 2,
                mem_gib: 1.0,
                kernel: "x".into(),
            },
            command: "test".into(),
            commit: None,
            systems: vec![
                spec("direct", "direct", None),
                spec("a", "tunnel", Some("b")),
                spec("b", "tunnel", None),
            ],
            skipped: vec![],
            server_cpus: vec![],
            load_cpus: vec![],
            workers: vec![2],
            versions: BTreeMap::new(),
            samples,
            wall_s: 1.0,
        }
    }

    #[test]
    fn medians_ratios_and_latency_differences() {
        let mut s = Vec::new();
        for (i, (d, a, b)) in [(30.0, 10.0, 4.0), (32.0, 12.0, 5.0), (31.0, 50.0, 6.0)]
            .into_iter()
            .enumerate()
        {
            s.push(sample("direct", i, "bulk1_up", "gbit_s", d));
            s.push(sample("a", i, "bulk1_up", "gbit_s", a));
            s.push(sample("b", i, "bulk1_up", "gbit_s", b));
        }
        s.push(sample("direct", 0, "rtt", "p50_us", 60.0));
        s.push(sample("a", 0, "rtt", "p50_us", 75.0));
        let md = markdown(&record(s));
        // Medians: direct 31, a 12 (the outlier 50 does not move it), b 5.
        assert!(
            md.contains("| bulk 1 stream up, Gbit/s | 31.00 ±3% | 12.00 ±167% | 5.000 ±20% |"),
            "{md}"
        );
        assert!(
            md.contains("| metric | a vs direct | b vs direct | a / b |"),
            "{md}"
        );
        assert!(
            md.contains("| bulk 1 stream up, Gbit/s | 0.39× | 0.16× | 2.40× |"),
            "{md}"
        );
        // Latency against direct is an added time, not a ratio.
        assert!(
            md.contains("| echo RTT p50, µs (64 B, sequential) | +15.00 | — | — |"),
            "{md}"
        );
    }

    #[test]
    fn errors_are_listed_and_empty_rows_left_out() {
        let mut s = vec![sample("a", 0, "http", "req_per_s", 1000.0)];
        s.push(Sample {
            error: Some("connection refused".into()),
            figures: BTreeMap::new(),
            ..sample("b", 0, "http", "req_per_s", 0.0)
        });
        let md = markdown(&record(s));
        assert!(
            md.contains("- b (workers 2, repeat 1) http: connection refused"),
            "{md}"
        );
        assert!(!md.contains("bulk 8 streams up"), "{md}");
    }

    #[test]
    fn attack_table_shows_each_attack_side_by_side() {
        let mut s = Vec::new();
        for (i, (a, b)) in [(8000.0, 200_000.0), (9000.0, 210_000.0)]
            .into_iter()
            .enumerate()
        {
            s.push(sample("a", i, "attack_preauth_streams", "rss_peak_kib", a));
            s.push(sample("b", i, "attack_preauth_streams", "rss_peak_kib", b));
        }
        s.push(sample("a", 0, "attack_ping_flood", "server_closed", 0.0));
        s.push(sample("b", 0, "attack_ping_flood", "server_closed", 1.0));
        s.push(sample("a", 0, "attack_ping_flood", "login_ok", 1.0));
        s.push(sample("a", 1, "attack_ping_flood", "login_ok", 0.0));
        let md = markdown(&record(s));
        assert!(md.contains("| attack | figure | a | b | a / b |"), "{md}");
        assert!(
            md.contains("| streams before login: 20 conns × 4096 streams (`attack_preauth_streams`) | server RSS at peak, MiB | 8.301 ±6% | 200.2 ±2% | 0.04× |"),
            "{md}"
        );
        assert!(
            md.contains("| Ping flood for 10 s, never reading (`attack_ping_flood`) | server closed the connection | no | yes |  |"),
            "{md}"
        );
        assert!(
            md.contains("|  | a legitimate login succeeded during the attack | 1/2 | — |  |"),
            "{md}"
        );
        // Only attacks: no table of the other metrics.
        assert!(!md.contains("| metric |"), "{md}");
    }

    #[test]
    fn chart_is_svg_with_one_polyline_per_series() {
        let svg = line_chart(
            "t",
            "x",
            "y",
            true,
            &[
                Series {
                    name: "one".into(),
                    points: vec![(1.0, 10.0), (2.0, 1000.0)],
                    dashed: false,
                    color: 0,
                },
                Series {
                    name: "two <b>".into(),
                    points: vec![(1.0, 20.0)],
                    dashed: true,
                    color: 1,
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("two &lt;b&gt;"));
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn dates() {
        assert_eq!(crate::harness::runner::date_of(0), "1970-01-01");
        assert_eq!(crate::harness::runner::date_of(1_795_400_000), "2026-11-23");
    }

    #[test]
    fn cpu_lists_fold_runs() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(cpu_list(&[4]), "4");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn scaling_table_reads_the_suites_bulk_cell_and_placement() {
        let mut s = Vec::new();
        for (w, g) in [(1, 10.0), (2, 19.0)] {
            let mut x = sample("a", 0, "bulk32_up", "gbit_s", g);
            x.workers = w;
            s.push(x);
        }
        let mut slowest = sample("a", 0, "bulk32_up", "stream_min_gbit_s", 0.25);
        slowest.workers = 1;
        slowest.figures.insert("stream_max_gbit_s".into(), 0.5);
        s.push(slowest);
        let mut r = record(s);
        r.suite = Suite::named("scaling").expect("scaling suite");
        r.workers = vec![1, 2, 4];
        r.server_cpus = vec![0, 1];
        r.load_cpus = vec![2, 3];
        r.systems.retain(|x| x.name == "a");
        let mut o = String::new();
        scaling_table(&mut o, &r, &collect(&r.samples));
        assert!(o.contains("32 bench-client session(s)"), "{o}");
        assert!(o.contains("| 1 | 0 | 10.00 | 1.00 | 0.25 / 0.50 |"), "{o}");
        assert!(o.contains("| 2 | 0-1 | 19.00 | 0.95 | — |"), "{o}");
        assert!(o.contains("| 4 | 0-3 (shared with load) | — |"), "{o}");
    }
}
