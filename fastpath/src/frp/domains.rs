//! The domains of virtual-host proxies: what a NewProxy's `customDomains`
//! and `subdomain` name, by frps's rules, and claiming them in the shared
//! route table all or nothing. Apart from the listeners
//! ([`vhost`](crate::frp::vhost)), so that registering a proxy does not
//! depend on how its connections are served.

use proto::policy::decide::under_suffix;
use proto::policy::Refusal;
use proto::vhost::{canonical_host, routes::Routes};

use crate::frp::targets::VhostTarget;

/// The domains an `https` or `tcpmux` proxy is reached by, in routing form
/// and frps's order: each of `customDomains`, then `subdomain` under
/// `subDomainHost`, with frps's checks.
pub fn domains(
    custom_domains: &[String],
    subdomain: &str,
    sub_domain_host: &str,
) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::with_capacity(custom_domains.len() + 1);
    for d in custom_domains {
        let d = d.trim();
        if d.is_empty() {
            continue;
        }
        let host = canonical_host(d)
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b))
            })
            .ok_or_else(|| {
                Refusal::invalid_proxy(format!("custom domain [{d}] is not a host name"))
            })?;
        if !sub_domain_host.is_empty() && under_suffix(&host, sub_domain_host) {
            return Err(Refusal::invalid_proxy(format!(
                "custom domain [{host}] should not belong to subdomain host [{sub_domain_host}]"
            )));
        }
        out.push(host.into_owned());
    }
    if !subdomain.is_empty() {
        if sub_domain_host.is_empty() {
            return Err(Refusal::invalid_proxy(
                "subdomain is not supported because this feature is not enabled in server",
            ));
        }
        if subdomain.contains(['.', '*']) {
            return Err(Refusal::invalid_proxy(
                "'.' and '*' are not supported in subdomain",
            ));
        }
        out.push(format!(
            "{}.{sub_domain_host}",
            subdomain.to_ascii_lowercase()
        ));
    }
    if out.is_empty() {
        return Err(Refusal::invalid_proxy(
            "custom domains and subdomain should set at least one of them",
        ));
    }
    // frps's order (customDomains as given, then the subdomain), each once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| seen.insert(d.clone()));
    Ok(out)
}

/// Add a proxy's routes, one per domain and location: all of them, or
/// none and the conflicting domain.
pub fn add_routes(
    routes: &mut Routes<VhostTarget>,
    domains: &[String],
    locations: &[String],
    user: &str,
    target: &VhostTarget,
) -> Result<(), Refusal> {
    let pairs = || {
        domains
            .iter()
            .flat_map(|d| locations.iter().map(move |l| (d, l)))
    };
    for (i, (d, l)) in pairs().enumerate() {
        if routes.add(d, l, user, target.clone()).is_err() {
            for (done, l) in pairs().take(i) {
                routes.remove(done, l, user);
            }
            return Err(Refusal::route_conflict(d));
        }
    }
    Ok(())
}

/// Remove a proxy's routes. Each (domain, location, user) it added is its
/// own: [`add_routes`] refuses one that another proxy holds.
pub fn remove_routes(
    routes: &mut Routes<VhostTarget>,
    domains: &[String],
    locations: &[String],
    user: &str,
) {
    for d in domains {
        for l in locations {
            routes.remove(d, l, user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_follow_frps_rules() {
        let cd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            domains(&cd(&["A.example.com.", "b.example.com:443"]), "", "").unwrap(),
            vec!["a.example.com", "b.example.com"]
        );
        assert_eq!(
            domains(&cd(&[]), "App", "t.example.net").unwrap(),
            vec!["app.t.example.net"]
        );
        let err = |r: Result<Vec<String>, Refusal>| r.unwrap_err().detail;
        assert!(err(domains(&cd(&[]), "", "")).contains("at least one"));
        assert!(err(domains(&cd(&[]), "app", "")).contains("not enabled in server"));
        assert!(err(domains(&cd(&[]), "a.b", "t.example.net")).contains("'.' and '*'"));
        assert!(err(domains(&cd(&["x.t.example.net"]), "", "t.example.net"))
            .contains("should not belong to subdomain host [t.example.net]"));
        assert!(err(domains(&cd(&["a:b:c"]), "", "")).contains("[a:b:c] is not a host name"));
    }

    #[test]
    fn routes_go_in_whole_or_not_at_all() {
        let t = crate::frp::targets::test_target;
        let mut r = Routes::new();
        let any = [String::new()];
        add_routes(
            &mut r,
            &["a.com".into(), "b.com".into()],
            &any,
            "",
            &t("one"),
        )
        .unwrap();
        let e = add_routes(
            &mut r,
            &["c.com".into(), "b.com".into()],
            &any,
            "",
            &t("two"),
        )
        .unwrap_err();
        assert_eq!(e.detail, "router config conflict: b.com");
        assert_eq!(r.len(), 2, "c.com of the refused proxy is not left behind");
        // Locations: another location of a taken domain is free; the same
        // one is not, and what was added before it goes again.
        let (api, web) = (String::from("/api"), String::from("/web"));
        add_routes(
            &mut r,
            &["a.com".into()],
            std::slice::from_ref(&api),
            "",
            &t("three"),
        )
        .unwrap();
        let e = add_routes(
            &mut r,
            &["d.com".into(), "a.com".into()],
            &[web, api],
            "",
            &t("four"),
        )
        .unwrap_err();
        assert_eq!(e.detail, "router config conflict: a.com");
        assert_eq!(r.len(), 3);
        remove_routes(&mut r, &["a.com".into(), "b.com".into()], &any, "");
        remove_routes(&mut r, &["a.com".into()], &["/api".into()], "");
        assert!(r.is_empty());
    }
}
