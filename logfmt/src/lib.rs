//! One JSON object per log line, for log shippers (seed 000 §9.2): `ts`
//! (RFC 3339, UTC), `level`, `msg`, then the event's own fields at the top
//! level under their own names (`node_id`, `invite_id`, `tenant`,
//! `proxy_name`, `reason`, … where the code that logs has them), and the
//! process's fixed fields (a node's `node_id`) on every line.
//!
//! Numbers and booleans stay JSON numbers and booleans. A field logged as
//! an `Option` with `?` is written as its value, or left out when `None`,
//! so that `invite_id = ?grant.invite()` reads `"invite_id":"inv_…"`.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line format, with `fixed` fields on every line.
#[derive(Debug, Clone, Default)]
pub struct JsonLines {
    fixed: Map<String, Value>,
}

impl JsonLines {
    /// A format writing `fixed` (name, value) on every line.
    pub fn new<'a>(fixed: impl IntoIterator<Item = (&'a str, String)>) -> JsonLines {
        JsonLines {
            fixed: fixed
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect(),
        }
    }

    /// The line for an event with this level, message and fields, at
    /// `ts` (a test seam; [`FormatEvent`] calls it with the clock).
    pub fn line(&self, ts: &str, level: &str, fields: Map<String, Value>) -> String {
        let mut o = Map::with_capacity(fields.len() + self.fixed.len() + 3);
        o.insert("ts".into(), Value::String(ts.into()));
        o.insert("level".into(), Value::String(level.into()));
        let mut fields = fields;
        o.insert(
            "msg".into(),
            fields
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        for (k, v) in &self.fixed {
            o.insert(k.clone(), v.clone());
        }
        // An event's own field wins over a fixed one of the same name.
        o.extend(fields);
        Value::Object(o).to_string()
    }
}

/// Collects an event's fields as JSON values.
#[derive(Default)]
pub struct Fields(pub Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let s = format!("{value:?}");
        if field.name() == "message" {
            self.0.insert("message".into(), Value::String(s));
            return;
        }
        if s == "None" {
            return;
        }
        let inner = s
            .strip_prefix("Some(")
            .and_then(|x| x.strip_suffix(')'))
            .map(|x| {
                x.strip_prefix('"')
                    .and_then(|y| y.strip_suffix('"'))
                    .unwrap_or(x)
            });
        let v = inner.map(str::to_owned).unwrap_or(s);
        self.0.insert(field.name().into(), Value::String(v));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let ts = now_rfc3339();
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        writeln!(writer, "{}", self.line(&ts, &level, fields.0))
    }
}

/// The wall clock as RFC 3339 UTC with microseconds.
fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 as (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's civil-from-days algorithm); the slowpath's
/// clock uses it too.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fields_are_top_level_json_with_their_types() {
        let buf = Buf::default();
        let b = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(JsonLines::new([("node_id", "node-7".to_string())]))
            .with_writer(move || b.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            let invite: Option<&str> = Some("inv_abc");
            let none: Option<u32> = None;
            tracing::warn!(proxy_name = %"web", invite_id = ?invite, tenant = ?none, port = 6000u16, ok = true, reason = "port taken \"6000\"", "proxy refused");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "proxy refused");
        assert_eq!(v["node_id"], "node-7");
        assert_eq!(v["proxy_name"], "web");
        assert_eq!(v["invite_id"], "inv_abc");
        assert!(v.get("tenant").is_none(), "{v}");
        assert_eq!(v["port"], 6000);
        assert_eq!(v["ok"], true);
        assert_eq!(v["reason"], "port taken \"6000\"");
        let ts = v["ts"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }

    #[test]
    fn the_calendar_is_right_across_leap_years() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
