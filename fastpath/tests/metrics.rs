//! `fastpath.metricsAddr`: `GET /metrics` on the real binary answers the
//! stats as OpenMetrics text that moves with the traffic, and that
//! Prometheus's own checker (`promtool check metrics`, Debian's
//! `prometheus`) accepts when it is installed (under CI it must be).

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use bench::proc::free_port;
use common::Fastpath;

fn get(port: u16, path: &str) -> (String, String) {
    get_as(port, path, "application/openmetrics-text; version=1.0.0")
}

fn get_as(port: u16, path: &str, accept: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_owned(), body.to_owned())
}

#[test]
fn metrics_follow_the_traffic_and_pass_promtool() {
    let (metrics, stun) = (free_port(), free_port());
    let fp = Fastpath::start(
        &format!("fastpath.metricsAddr = \"127.0.0.1:{metrics}\"\nfastpath.stunPort = {stun}\n"),
        2,
    );
    assert!(bench::proc::wait_listening(
        format!("127.0.0.1:{metrics}").parse().unwrap(),
        Duration::from_secs(10)
    ));
    let (head, body) = get(metrics, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(
        body.contains("# TYPE totoro_fastpath_sessions gauge"),
        "{body}"
    );
    assert!(
        body.contains("totoro_fastpath_stun_answers_total{worker=\"0\"} 0"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));

    // Three STUN answers show up in the sum over the workers.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for i in 0..3u8 {
        let mut req = Vec::new();
        proto::stun::Builder::new(&mut req, proto::stun::kind::BINDING_REQUEST, [i; 12]);
        c.send_to(&req, ("127.0.0.1", stun)).unwrap();
        let mut buf = [0u8; 256];
        c.recv_from(&mut buf).unwrap();
    }
    let (_, body) = get(metrics, "/metrics");
    let answers: u64 = body
        .lines()
        .filter(|l| l.starts_with("totoro_fastpath_stun_answers_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(answers, 3, "{body}");
    assert!(get(metrics, "/other").0.starts_with("HTTP/1.1 404"));

    // A login and a refused one land in the decision histogram.
    let _c = bench::client::Client::login(fp.opts()).unwrap();
    let mut bad = fp.opts();
    bad.token = "wrong".into();
    assert!(bench::client::Client::login(bad).is_err());
    let (_, body) = get(metrics, "/metrics");
    let count = |outcome: &str| -> u64 {
        body.lines()
            .filter(|l| {
                l.starts_with("totoro_fastpath_login_decision_seconds_count{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!((count("admitted"), count("refused")), (1, 1), "{body}");

    // Without OpenMetrics in Accept: the classic text format, which is
    // what promtool checks.
    let (head, body) = get_as(metrics, "/metrics", "*/*");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("# TYPE totoro_fastpath_stun_answers_total counter"),
        "{body}"
    );
    match bench::proc::promtool_check(&body) {
        Some(verdict) => verdict.unwrap_or_else(|e| panic!("promtool: {e}\n{body}")),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed (.ci/metrics.sh installs Debian's prometheus)"
            );
            println!("SKIPPED: promtool not installed");
        }
    }
    drop(fp);
}
