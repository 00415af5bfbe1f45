//! The live vhost routes: (domain, location, HTTP user) → payload (the
//! session and proxy a request goes to), looked up with frps's precedence.
//!
//! - A route is keyed by its domain (lower-cased; `*.example.com` wildcards
//!   and the catch-all `*` are domains like any other), its location (a path
//!   prefix; empty matches everything) and the HTTP user it is for
//!   (`routeByHTTPUser`; empty: any user).
//! - Adding a route whose domain, location and user are all taken is a
//!   conflict ([`Conflict`], frps's "router config conflict").
//! - A lookup tries the full host, then each wildcard made by replacing the
//!   first label with `*` while at least three labels remain
//!   (`a.b.example.com` → `*.b.example.com` → `*.example.com`; never
//!   `*.com`), then `*`. For each name it tries the request's user, then
//!   routes for any user. Among that name's routes for that user, the
//!   longest location that is a prefix of the path wins.
//!
//! Lookups allocate nothing (wildcard names are built in a stack buffer);
//! cost at 100k hostnames is measured by `totoro-bench routes`.

use std::collections::HashMap;
use std::fmt;

/// Two routes for the same domain, location and HTTP user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // frps's words (pkg/util/vhost ErrRouterConfigConflict).
        f.write_str("router config conflict")
    }
}

impl std::error::Error for Conflict {}

#[derive(Debug, Clone)]
struct Route<P> {
    user: Box<str>,
    location: Box<str>,
    payload: P,
}

/// The routes of one listener kind (http, https or tcpmux).
#[derive(Debug, Clone)]
pub struct Routes<P> {
    /// domain → its routes (all users), longest location first. One map
    /// level and a short list: a lookup is one hash probe and a scan of a
    /// few entries, not a walk through nested maps.
    by_domain: HashMap<Box<str>, Vec<Route<P>>>,
    len: usize,
}

impl<P> Default for Routes<P> {
    fn default() -> Self {
        Routes {
            by_domain: HashMap::new(),
            len: 0,
        }
    }
}

/// The longest host a wildcard is built for (a DNS name is at most 253).
const MAX_NAME: usize = 255;

impl<P> Routes<P> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a route; a route with the same domain, location and user is a
    /// [`Conflict`] and the table is left as it was.
    pub fn add(
        &mut self,
        domain: &str,
        location: &str,
        user: &str,
        payload: P,
    ) -> Result<(), Conflict> {
        let domain = domain.to_ascii_lowercase();
        let routes = self.by_domain.entry(domain.into()).or_default();
        if routes
            .iter()
            .any(|r| &*r.location == location && &*r.user == user)
        {
            return Err(Conflict);
        }
        // Longest first; among prefixes of one path, longer is greater, so
        // descending order gives the longest match first (as frps sorts).
        let at = routes.partition_point(|r| &*r.location > location);
        routes.insert(
            at,
            Route {
                user: user.into(),
                location: location.into(),
                payload,
            },
        );
        self.len += 1;
        Ok(())
    }

    /// Removes the route for exactly this domain, location and user.
    pub fn remove(&mut self, domain: &str, location: &str, user: &str) -> Option<P> {
        let domain = domain.to_ascii_lowercase();
        let routes = self.by_domain.get_mut(domain.as_str())?;
        let at = routes
            .iter()
            .position(|r| &*r.location == location && &*r.user == user)?;
        let route = routes.remove(at);
        if routes.is_empty() {
            self.by_domain.remove(domain.as_str());
        }
        self.len -= 1;
        Some(route.payload)
    }

    /// The route a request for `host` (already canonical: lower case, no
    /// port) with `path` and Basic-auth `user` (empty: none) goes to.
    pub fn get(&self, host: &str, path: &str, user: &str) -> Option<&P> {
        if let Some(p) = self.find(host, path, user) {
            return Some(p);
        }
        let mut buf = [0u8; MAX_NAME + 2];
        if host.len() <= MAX_NAME {
            // `*.` + what follows each dot, while that has two labels or
            // more (the name it makes has three or more).
            let mut rest = host;
            while let Some((_, tail)) = rest.split_once('.') {
                if !tail.contains('.') {
                    break;
                }
                buf[..2].copy_from_slice(b"*.");
                buf[2..2 + tail.len()].copy_from_slice(tail.as_bytes());
                // `*.` followed by part of a str: UTF-8.
                if let Ok(name) = std::str::from_utf8(&buf[..2 + tail.len()]) {
                    if let Some(p) = self.find(name, path, user) {
                        return Some(p);
                    }
                }
                rest = tail;
            }
        }
        self.find("*", path, user)
    }

    /// One name: the request's user, then any user.
    fn find(&self, name: &str, path: &str, user: &str) -> Option<&P> {
        let routes = self.by_domain.get(name)?;
        let longest = |u: &str| {
            routes
                .iter()
                .find(|r| &*r.user == u && path.starts_with(&*r.location))
                .map(|r| &r.payload)
        };
        longest(user).or_else(|| if user.is_empty() { None } else { longest("") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_wildcards_then_catch_all() {
        let mut t = Routes::new();
        t.add("app.example.com", "", "", "exact").unwrap();
        t.add("*.example.com", "", "", "wild").unwrap();
        t.add("*.b.example.com", "", "", "wild-b").unwrap();
        t.add("*.com", "", "", "never").unwrap();
        assert_eq!(t.get("app.example.com", "/", ""), Some(&"exact"));
        assert_eq!(t.get("x.example.com", "/", ""), Some(&"wild"));
        assert_eq!(t.get("a.b.example.com", "/", ""), Some(&"wild-b"));
        assert_eq!(t.get("a.c.example.com", "/", ""), Some(&"wild"));
        // A wildcard needs a label in front of it, and `*.com` is never
        // tried (frps stops at three labels).
        assert_eq!(t.get("example.com", "/", ""), None);
        assert_eq!(t.get("other.com", "/", ""), None);
        t.add("*", "", "", "all").unwrap();
        assert_eq!(t.get("other.com", "/", ""), Some(&"all"));
        assert_eq!(t.get("localhost", "/", ""), Some(&"all"));
    }

    #[test]
    fn longest_location_wins_and_prefixes_are_raw() {
        let mut t = Routes::new();
        t.add("a.com", "/", "", 1).unwrap();
        t.add("a.com", "/api", "", 2).unwrap();
        t.add("a.com", "/api/v2", "", 3).unwrap();
        t.add("a.com", "/b", "", 4).unwrap();
        assert_eq!(t.get("a.com", "/api/v2/x", ""), Some(&3));
        assert_eq!(t.get("a.com", "/api/v1", ""), Some(&2));
        // frps matches a plain string prefix.
        assert_eq!(t.get("a.com", "/apix", ""), Some(&2));
        assert_eq!(t.get("a.com", "/c", ""), Some(&1));
        assert_eq!(t.get("a.com", "", ""), None);
    }

    #[test]
    fn the_users_routes_first_then_anyones() {
        let mut t = Routes::new();
        t.add("a.com", "", "alice", "alice").unwrap();
        t.add("a.com", "", "", "anyone").unwrap();
        assert_eq!(t.get("a.com", "/", "alice"), Some(&"alice"));
        assert_eq!(t.get("a.com", "/", "bob"), Some(&"anyone"));
        assert_eq!(t.get("a.com", "/", ""), Some(&"anyone"));
        t.remove("a.com", "", "").unwrap();
        assert_eq!(t.get("a.com", "/", "bob"), None);
        assert_eq!(t.get("a.com", "/", ""), None);
    }

    #[test]
    fn a_taken_route_is_a_conflict_and_removal_frees_it() {
        let mut t = Routes::new();
        t.add("A.com", "/x", "", 1).unwrap();
        assert_eq!(t.add("a.com", "/x", "", 2), Err(Conflict));
        assert_eq!(Conflict.to_string(), "router config conflict");
        t.add("a.com", "/x", "u", 3).unwrap();
        t.add("a.com", "/y", "", 4).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.remove("a.com", "/x", ""), Some(1));
        assert_eq!(t.remove("a.com", "/x", ""), None);
        t.add("a.com", "/x", "", 5).unwrap();
        assert_eq!(t.get("a.com", "/x", ""), Some(&5));
        for (l, u) in [("/x", ""), ("/x", "u"), ("/y", "")] {
            t.remove("a.com", l, u).unwrap();
        }
        assert!(t.is_empty());
        assert!(t.by_domain.is_empty());
    }

    #[test]
    fn a_very_long_host_still_matches_exactly_and_the_catch_all() {
        let mut t = Routes::new();
        let long = format!("{}.example.com", "a".repeat(300));
        t.add(&long, "", "", 1).unwrap();
        t.add("*.example.com", "", "", 2).unwrap();
        assert_eq!(t.get(&long, "/", ""), Some(&1));
        let other = format!("{}.example.com", "b".repeat(300));
        assert_eq!(t.get(&other, "/", ""), None);
        t.add("*", "", "", 3).unwrap();
        assert_eq!(t.get(&other, "/", ""), Some(&3));
    }
}
