//! Metrics exposition formats: Prometheus asks for OpenMetrics text,
//! which `prometheus-client` writes; older scrapers and `promtool check
//! metrics` read the classic text format (0.0.4), whose counter families
//! are named with their `_total` samples and which has no `# EOF`.

/// The classic Prometheus text format (0.0.4) of an OpenMetrics
/// exposition: a counter family is named with its `_total` samples, and
/// there is no `# EOF`.
pub fn to_text_format(open: &str) -> String {
    let counters: Vec<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The content type and body to answer a scrape with: OpenMetrics when
/// the request's `Accept` names it (Prometheus does), the classic text
/// format otherwise (curl, older scrapers, promtool).
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if accept.is_some_and(|a| {
        a.to_ascii_lowercase()
            .contains("application/openmetrics-text")
    }) {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            openmetrics,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            to_text_format(&openmetrics),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_families_take_their_samples_name() {
        let open = "# HELP x_bytes bytes.\n# TYPE x_bytes counter\nx_bytes_total{w=\"0\"} 3\n\
                    # HELP x_up up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            to_text_format(open),
            "# HELP x_bytes_total bytes.\n# TYPE x_bytes_total counter\nx_bytes_total{w=\"0\"} 3\n\
             # HELP x_up up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }
}
