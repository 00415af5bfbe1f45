//! The harness's smoke mode, run by CI so that it never rots: the real
//! `totoro-bench` binary runs the `smoke` suite against direct loopback and
//! the real fastpath (with the bench's frp client), and every metric must
//! produce figures.

use std::path::PathBuf;
use std::process::Command;

fn fastpath_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FASTPATH_BIN") {
        return PathBuf::from(p);
    }
    bench::harness::systems::sibling_binary("fastpath").unwrap_or_else(|| {
        panic!(
            "the fastpath binary is missing next to {}: build it first (`cargo build -p totoro-fastpath`; `cargo test --workspace` does)",
            env!("CARGO_BIN_EXE_totoro-bench")
        )
    })
}

/// Runs the real `totoro-bench run` with `args` and `--out` a fresh
/// directory named after `name`; returns run.json, that directory and what
/// it printed. Fails unless it exits 0 and every metric produced figures.
fn bench_run(name: &str, args: &[&str]) -> (serde_json::Value, PathBuf, String) {
    let out = std::env::temp_dir().join(format!("totoro-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_totoro-bench"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(&out)
        .env("FASTPATH_BIN", fastpath_bin())
        .output()
        .expect("run totoro-bench");
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(o.status.success(), "totoro-bench failed:\n{printed}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).expect("run.json"))
            .expect("run.json parses");
    let errors: Vec<String> = record["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| !s["error"].is_null())
        .map(|s| format!("{} {}: {}", s["system"], s["metric"], s["error"]))
        .collect();
    assert!(errors.is_empty(), "metrics failed: {errors:#?}\n{printed}");
    (record, out, printed)
}

#[test]
fn smoke_suite_measures_every_metric_on_fastpath_and_direct() {
    let t0 = std::time::Instant::now();
    let (record, out, printed) = bench_run("smoke", &["--suite", "smoke", "--workers", "2"]);
    eprintln!(
        "{printed}\nsmoke run took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let samples = record["samples"].as_array().expect("samples");
    let fig = |system: &str, metric: &str, name: &str| -> f64 {
        samples
            .iter()
            .find(|s| {
                s["system"] == system && s["metric"] == metric && !s["figures"][name].is_null()
            })
            .and_then(|s| s["figures"][name].as_f64())
            .unwrap_or_else(|| panic!("no {metric}.{name} for {system}"))
    };
    for system in ["direct", "fastpath+bench"] {
        assert!(fig(system, "bulk1_up", "gbit_s") > 0.0);
        assert!(fig(system, "bulk2_down", "gbit_s") > 0.0);
        assert!(fig(system, "rtt", "p50_us") > 0.0);
        assert!(fig(system, "open@2000", "achieved_per_s") > 0.0);
        assert!(fig(system, "connrate", "conns_per_s") > 0.0);
        assert_eq!(fig(system, "connrate", "failures"), 0.0);
        assert!(fig(system, "http", "req_per_s") > 0.0);
    }
    // Server-side figures exist only where there is a server process.
    assert!(fig("fastpath+bench", "bulk1_up", "server_cpu_s_per_gb") > 0.0);
    assert!(fig("fastpath+bench", "server", "peak_rss_kib") > 0.0);
    assert_eq!(fig("fastpath+bench", "idle", "failed"), 0.0);
    assert_eq!(fig("fastpath+bench", "idle", "opened"), 200.0);
    assert_eq!(fig("fastpath+bench", "proxies", "registered"), 20.0);
    assert!(fig("fastpath+bench", "login", "logins_per_s") > 0.0);
    let login = samples
        .iter()
        .find(|s| s["system"] == "fastpath+bench" && s["metric"] == "login")
        .expect("login sample");
    assert_eq!(
        fig("fastpath+bench", "login", "failures"),
        0.0,
        "{}",
        login["detail"]
    );

    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("| metric | direct | fastpath+bench |"), "{md}");
    assert!(md.contains("fastpath+bench vs direct"), "{md}");
    let svg = std::fs::read_to_string(out.join("latency.svg")).expect("latency.svg");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");

    // `report` regenerates the same table from run.json alone.
    let again = Command::new(env!("CARGO_BIN_EXE_totoro-bench"))
        .arg("report")
        .arg(&out)
        .output()
        .expect("run totoro-bench report");
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(out.join("results.md")).expect("results.md"),
        md
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_system_whose_binary_variable_is_unset_is_skipped_with_a_line() {
    let dir = std::env::temp_dir().join(format!("totoro-bench-skip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let systems = dir.join("systems.toml");
    std::fs::write(
        &systems,
        r#"
[[system]]
name = "direct"
kind = "direct"

[[system]]
name = "nothing"
[system.server]
cmd = "${TOTORO_BENCH_SURELY_UNSET_BIN}"
[system.client]
kind = "command"
[system.client.command]
cmd = "/bin/true"
"#,
    )
    .expect("write systems");
    let o = Command::new(env!("CARGO_BIN_EXE_totoro-bench"))
        .args(["run", "--suite", "smoke", "--only", "nothing", "--systems"])
        .arg(&systems)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .expect("run totoro-bench");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("skipped: nothing (TOTORO_BENCH_SURELY_UNSET_BIN not set)"),
        "{stderr}"
    );
    // Nothing left to run is an error, not an empty report.
    assert!(!o.status.success());
    assert!(stderr.contains("no system can run"), "{stderr}");

    // A typo in the systems file names the key.
    std::fs::write(
        &systems,
        "[[system]]\nname = \"x\"\nkind = \"direct\"\ncompre = \"y\"\n",
    )
    .expect("write systems");
    let o = Command::new(env!("CARGO_BIN_EXE_totoro-bench"))
        .args(["run", "--suite", "smoke", "--systems"])
        .arg(&systems)
        .output()
        .expect("run totoro-bench");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("compre"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first CPU this process may run on (`Cpus_allowed_list`).
fn first_allowed_cpu() -> String {
    bench::proc::allowed_cpus()[0].to_string()
}

/// The scaling suite as a 16-core host runs it, cut down: its load is
/// spread over several bench-client sessions (each with tunnels of its
/// own), and server and harness are confined to the CPUs given; no stream
/// is starved by the others.
#[test]
fn scaling_suite_spreads_its_load_over_sessions() {
    let cpu = first_allowed_cpu();
    let args = [
        "--suite",
        "scaling",
        "--scale-workers",
        "1,2",
        "--repeats",
        "1",
        "--sessions",
        "4",
    ];
    let pin = ["--server-cpus", &cpu, "--load-cpus", &cpu];
    let (record, out, printed) = bench_run("scaling", &[&args[..], &pin[..]].concat());
    assert_eq!(record["suite"]["sessions"], 4);
    assert_eq!(record["server_cpus"][0].to_string(), cpu);
    let samples = record["samples"].as_array().expect("samples");
    for w in [1, 2] {
        let s = samples
            .iter()
            .find(|s| {
                s["system"] == "fastpath+bench" && s["workers"] == w && s["metric"] == "bulk32_up"
            })
            .unwrap_or_else(|| panic!("no bulk32_up at {w} workers:\n{printed}"));
        // 32 streams over 4 sessions' sink tunnels: a tunnel that does
        // not work fails the run (its streams' connections are refused).
        assert!(s["figures"]["gbit_s"].as_f64().unwrap() > 0.0, "{s}");
        assert_eq!(s["figures"]["errors"], 0.0, "{s}");
        // Streams sharing a worker (and here a CPU with their load) get
        // shares of one order: measured 0.37-0.69 of the fastest for the
        // slowest; before relays took turns, 0.006.
        let (slow, fast) = (
            s["figures"]["stream_min_gbit_s"].as_f64().unwrap(),
            s["figures"]["stream_max_gbit_s"].as_f64().unwrap(),
        );
        assert!(
            slow >= fast / 20.0,
            "at {w} workers the slowest stream moved {slow} Gbit/s, the fastest {fast}: {s}"
        );
    }
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    let _ = std::fs::remove_dir_all(&out);
    assert!(md.contains("4 bench-client session(s)"), "{md}");
    assert!(
        md.contains(&format!("| 2 | {cpu} (shared with load) |")),
        "{md}"
    );
}
