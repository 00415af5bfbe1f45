//! What the vhost listeners (frps's `vhostHTTPPort`, `vhostHTTPSPort`,
//! `tcpmuxHTTPConnectPort`) need to decide where a connection goes, without
//! any I/O: the head of an HTTP/1.x request and the body framing that finds
//! the next one ([`head`]), the server name of a TLS ClientHello ([`sni`]),
//! and the table of live routes, host × location × HTTP user → payload, with
//! frps's precedence ([`routes`]).

pub mod head;
pub mod rewrite;
pub mod routes;
pub mod sni;

use std::borrow::Cow;

/// A Host header, CONNECT target or server name in the form routes are
/// keyed by, as frps's `CanonicalHost` makes it: lower case, without a port,
/// without a trailing dot. None when it names a port but does not split
/// into host and port (`a:b:c`, `[::1`).
pub fn canonical_host(host: &str) -> Option<Cow<'_, str>> {
    let host = match split_port(host)? {
        Some(h) => h,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// `Some(Some(host))` when `s` carries a port (one colon, or a bracketed
/// IPv6 literal followed by `:`), `Some(None)` when it carries none, None
/// when it looks like it carries one but is not `host:port`. The brackets
/// of an IPv6 literal go, as Go's `net.SplitHostPort` drops them.
fn split_port(s: &str) -> Option<Option<&str>> {
    let colons = s.bytes().filter(|&b| b == b':').count();
    let has_port = match colons {
        0 => false,
        1 => true,
        _ => s.starts_with('[') && s.contains("]:"),
    };
    if !has_port {
        return Some(None);
    }
    let i = s.rfind(':')?;
    let (host, port) = (&s[..i], &s[i + 1..]);
    if port.contains(']') {
        return None;
    }
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        if inner.contains('[') || inner.contains(']') {
            return None;
        }
        inner
    } else {
        if host.contains('[') || host.contains(']') || host.contains(':') {
            return None;
        }
        host
    };
    Some(Some(host))
}

#[cfg(test)]
mod tests {
    use super::canonical_host;

    #[test]
    fn canonical_host_follows_frps() {
        let c = |s| canonical_host(s).map(|h| h.into_owned());
        assert_eq!(c("Example.COM").as_deref(), Some("example.com"));
        assert_eq!(c("example.com:8080").as_deref(), Some("example.com"));
        assert_eq!(c("example.com.").as_deref(), Some("example.com"));
        assert_eq!(c("example.com.:80").as_deref(), Some("example.com"));
        assert_eq!(c("[::1]:80").as_deref(), Some("::1"));
        // Two colons without brackets: an IPv6 address without a port.
        assert_eq!(c("::1").as_deref(), Some("::1"));
        assert_eq!(c("").as_deref(), Some(""));
        // More colons, not `[v6]:port`: no port to strip (as frps).
        assert_eq!(c("a:b]:c").as_deref(), Some("a:b]:c"));
        // One colon: a port, but not `host:port`.
        assert_eq!(c("a]:80"), None);
        assert_eq!(c("[a:80"), None);
    }
}
