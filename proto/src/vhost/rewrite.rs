//! The heads an `http` proxy changes on the way through, as frps changes
//! them: a request's before it goes to frpc (Host rewritten, the
//! proxy's `requestHeaders.set`, the `X-Forwarded-*` fields), a response's
//! before it goes back to the user (`responseHeaders.set`). Only the head
//! is rewritten; the body goes on as it came, in its own framing.
//!
//! Fields the proxy sets replace every field of that name the peer sent
//! (names compare without case, as HTTP's do). The rest keep their order,
//! names and values; the start line keeps its method, target and version.

use super::head::{HeadError, MAX_HEADERS};

/// What changes in a request head.
#[derive(Debug, Clone, Copy)]
pub struct RequestEdits<'a> {
    /// `hostHeaderRewrite`: the Host sent on (empty: as the user sent it).
    pub host: &'a str,
    /// `requestHeaders.set`, applied last.
    pub set: &'a [(String, String)],
    /// The user's address: appended to `X-Forwarded-For` (after what the
    /// user sent, comma-separated, as Go's reverse proxy does) and sent as
    /// `X-Real-IP`.
    pub client_ip: &'a str,
    /// The authority the user asked for, sent as `X-Forwarded-Host`.
    pub forwarded_host: &'a str,
    /// `X-Forwarded-Proto`: `http`, or `https` where TLS was terminated.
    pub proto: &'a str,
    /// Leave out `Expect` (the proxy answered `100 Continue` itself).
    pub drop_expect: bool,
}

/// Write the head at the start of `buf` (a complete request head), edited,
/// to `out`.
pub fn request(buf: &[u8], e: &RequestEdits<'_>, out: &mut Vec<u8>) -> Result<(), HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HeadError::Malformed("request head is not complete")),
    }
    out.extend_from_slice(req.method.unwrap_or_default().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or_default().as_bytes());
    out.extend_from_slice(version(req.version));
    // Fields the Connection header names are for this hop only (RFC 9110
    // 7.6.1): they stop here, and Connection goes on with only the
    // tokens that still mean something to the origin (close, keep-alive,
    // upgrade), so that it cannot name the fields added below.
    let mut hop: Vec<&str> = Vec::new();
    let mut connection: Vec<&str> = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for t in std::str::from_utf8(h.value).unwrap_or_default().split(',') {
                let t = t.trim();
                if ["close", "keep-alive", "upgrade"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
                {
                    connection.push(t);
                } else if !t.is_empty()
                    // The body's framing and the Host go on whatever
                    // Connection says: the origin must frame and route
                    // the request as this proxy did.
                    && !["content-length", "transfer-encoding", "host"]
                        .iter()
                        .any(|k| t.eq_ignore_ascii_case(k))
                {
                    hop.push(t);
                }
            }
        }
    }
    let mut forwarded_for = Vec::new();
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("connection") || hop.iter().any(|t| t.eq_ignore_ascii_case(n)) {
            continue;
        }
        if n.eq_ignore_ascii_case("x-forwarded-for") {
            if !forwarded_for.is_empty() {
                forwarded_for.extend_from_slice(b", ");
            }
            forwarded_for.extend_from_slice(h.value);
            continue;
        }
        let replaced = ["x-forwarded-host", "x-forwarded-proto", "x-real-ip"]
            .iter()
            .any(|x| n.eq_ignore_ascii_case(x))
            || (!e.host.is_empty() && n.eq_ignore_ascii_case("host"))
            || (e.drop_expect && n.eq_ignore_ascii_case("expect"))
            || is_set(e.set, n);
        if !replaced {
            field(out, n, h.value);
        }
    }
    if !e.host.is_empty() {
        field(out, "Host", e.host.as_bytes());
    }
    if !connection.is_empty() {
        field(out, "Connection", connection.join(", ").as_bytes());
    }
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(e.client_ip.as_bytes());
    field(out, "X-Forwarded-For", &forwarded_for);
    if !e.forwarded_host.is_empty() {
        field(out, "X-Forwarded-Host", e.forwarded_host.as_bytes());
    }
    field(out, "X-Forwarded-Proto", e.proto.as_bytes());
    field(out, "X-Real-IP", e.client_ip.as_bytes());
    set_fields(out, e.set);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Write the response head at the start of `buf`, with `set` applied, to
/// `out`.
pub fn response(buf: &[u8], set: &[(String, String)], out: &mut Vec<u8>) -> Result<(), HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    match res.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HeadError::Malformed("response head is not complete")),
    }
    out.extend_from_slice(&version(res.version)[1..9]);
    out.extend_from_slice(format!(" {:03} ", res.code.unwrap_or_default()).as_bytes());
    out.extend_from_slice(res.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in res.headers.iter() {
        if !is_set(set, h.name) {
            field(out, h.name, h.value);
        }
    }
    set_fields(out, set);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Whether a header name and value may be sent as they are: a token name
/// and a value without CR, LF or NUL (the check for what a proxy's
/// configuration sets, before it is used).
pub fn valid_field(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// A field name as Go's `Header.Set` (frps's) sends it: the first letter
/// and each letter after a hyphen upper case, the rest lower case
/// (`x-served-by` → `X-Served-By`).
pub fn canonical_name(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

fn version(v: Option<u8>) -> &'static [u8] {
    if v == Some(0) {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    }
}

fn is_set(set: &[(String, String)], name: &str) -> bool {
    set.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

fn set_fields(out: &mut Vec<u8>, set: &[(String, String)]) {
    for (k, v) in set {
        field(out, k, v.as_bytes());
    }
}

fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits<'a>(set: &'a [(String, String)]) -> RequestEdits<'a> {
        RequestEdits {
            host: "",
            set,
            client_ip: "192.0.2.7",
            forwarded_host: "app.example.com",
            proto: "http",
            drop_expect: false,
        }
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    #[test]
    fn forwarded_fields_are_appended_and_replaced() {
        let head = b"GET /a?b HTTP/1.1\r\nHost: app.example.com\r\nx-forwarded-for: 10.0.0.1\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 10.0.0.2\r\nAccept: */*\r\n\r\nbody";
        let mut out = Vec::new();
        request(head, &edits(&[]), &mut out).unwrap();
        assert_eq!(
            text(&out),
            "GET /a?b HTTP/1.1\r\nHost: app.example.com\r\nAccept: */*\r\n\
             X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n\
             X-Forwarded-Host: app.example.com\r\nX-Forwarded-Proto: http\r\n\
             X-Real-IP: 192.0.2.7\r\n\r\n"
        );
    }

    #[test]
    fn host_rewrite_and_set_fields_replace_what_was_sent() {
        let set = vec![("x-from".to_string(), "frp".to_string())];
        let mut e = edits(&set);
        e.host = "internal.local";
        e.drop_expect = true;
        let head = b"POST / HTTP/1.0\r\nHOST: app.example.com\r\nX-From: user\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        let mut out = Vec::new();
        request(head, &e, &mut out).unwrap();
        let t = text(&out);
        assert!(t.starts_with("POST / HTTP/1.0\r\nContent-Length: 3\r\nHost: internal.local\r\n"));
        assert!(
            t.ends_with("X-Real-IP: 192.0.2.7\r\nx-from: frp\r\n\r\n"),
            "{t}"
        );
        assert!(!t.contains("X-From: user") && !t.contains("Expect"));
    }

    #[test]
    fn fields_named_by_connection_stop_here() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Real-IP, keep-alive, X-Secret, Content-Length, host\r\nX-Secret: s\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n";
        let mut out = Vec::new();
        request(head, &edits(&[]), &mut out).unwrap();
        let t = text(&out);
        assert!(!t.contains("X-Secret"), "{t}");
        assert!(t.contains("\r\nConnection: keep-alive\r\n"), "{t}");
        assert!(t.contains("X-Real-IP: 192.0.2.7\r\n"), "{t}");
        assert!(t.contains("Upgrade: websocket\r\n"), "{t}");
        assert!(
            t.contains("Content-Length: 0\r\n") && t.contains("Host: a\r\n"),
            "{t}"
        );
    }

    #[test]
    fn response_fields_are_set() {
        let set = vec![("X-Served-By".to_string(), "totoro".to_string())];
        let head = b"HTTP/1.1 404 Not Found\r\nx-served-by: origin\r\nContent-Length: 0\r\n\r\n";
        let mut out = Vec::new();
        response(head, &set, &mut out).unwrap();
        assert_eq!(
            text(&out),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nX-Served-By: totoro\r\n\r\n"
        );
        assert!(response(b"HTTP/1.1 200 OK\r\n", &set, &mut out).is_err());
    }

    #[test]
    fn names_are_canonical_as_go_writes_them() {
        assert_eq!(canonical_name("x-served-by"), "X-Served-By");
        assert_eq!(canonical_name("X-ENV"), "X-Env");
        assert_eq!(canonical_name("www-authenticate"), "Www-Authenticate");
    }

    #[test]
    fn configured_fields_are_checked() {
        assert!(valid_field("X-Env", "prod, eu"));
        assert!(!valid_field("X Env", "a"));
        assert!(!valid_field("", "a"));
        assert!(!valid_field("X-Env", "a\r\nX-Evil: 1"));
    }
}
