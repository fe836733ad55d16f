//! Which URLs the server may POST to: the allowlist of URL prefixes and the refusal of private and
//! loopback addresses (no SSRF through a registration, FERRY-PUSH-3).
//!
//! Two checks, because a name can resolve anywhere: at registration the URL must start with an allowed
//! prefix, and an IP-literal or `localhost` host must be named by that prefix itself; at connection time
//! [`GuardedResolver`] drops every private address a name resolves to unless some prefix (or the
//! gateway) names that host. Redirects are never followed (see `notifier`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use url::{Host, Url};

/// Longest endpoint URL accepted, bytes.
pub(crate) const MAX_ENDPOINT_LEN: usize = 2048;

/// Why an endpoint was refused at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Not an absolute http(s) URL with a host (or too long, or with credentials).
    #[error("endpoint is not a valid URL: {0}")]
    Malformed(String),
    /// No allowed prefix matches.
    #[error("endpoint is not allowed by this server's push.allow list")]
    NotAllowed,
    /// A private, loopback or link-local host that the matching prefix does not name.
    #[error("endpoint is on a private or loopback address that push.allow does not name")]
    Private,
}

/// Parses an absolute `http`/`https` URL with a host and without credentials.
pub(crate) fn parse_http_url(text: &str) -> Result<Url, String> {
    if text.len() > MAX_ENDPOINT_LEN {
        return Err(format!("longer than {MAX_ENDPOINT_LEN} bytes"));
    }
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("scheme must be https (or http where push.allow says so)".into());
    }
    if url.host().is_none() {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    Ok(url)
}

/// A prefix of only a scheme: every public host (never a private one, which needs a prefix naming it).
fn is_scheme_only(prefix: &str) -> bool {
    matches!(prefix, "https://" | "http://")
}

/// Checks an allow prefix: `https://` (any public host), or an http(s) URL whose text ends with `/`,
/// so that `https://push.example/` cannot be satisfied by `https://push.example.evil/`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if is_scheme_only(prefix) {
        return Ok(());
    }
    parse_http_url(prefix)?;
    if !prefix.ends_with('/') {
        return Err("must end with '/' (e.g. https://push.example/)".into());
    }
    Ok(())
}

/// True for addresses a push must not reach unless the operator names them: loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast, documentation and unique-local ranges.
pub(crate) fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local, fe80::/10
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

fn host_is_private(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost")
        }
        Host::Ipv4(ip) => is_private_ip(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => is_private_ip(IpAddr::V6(*ip)),
    }
}

/// The configured prefixes, normalized, and the hosts they (and the gateway) name.
#[derive(Debug, Clone)]
pub(crate) struct Allowlist {
    prefixes: Vec<(String, String)>,
    named_hosts: Arc<HashSet<String>>,
}

impl Allowlist {
    /// From settings already checked by [`check_prefix`] and [`parse_http_url`].
    pub(crate) fn new(prefixes: &[String], gateway: Option<&str>) -> Allowlist {
        let parsed: Vec<Url> = prefixes
            .iter()
            .chain(gateway.map(String::from).as_ref())
            .filter_map(|p| parse_http_url(p).ok())
            .collect();
        let named_hosts = parsed
            .iter()
            .filter_map(|u| u.host_str().map(str::to_owned))
            .collect();
        let prefixes = prefixes
            .iter()
            .filter_map(|p| {
                if is_scheme_only(p) {
                    return Some((p.clone(), String::new()));
                }
                let url = parse_http_url(p).ok()?;
                Some((url.as_str().to_owned(), url.host_str()?.to_owned()))
            })
            .collect();
        Allowlist {
            prefixes,
            named_hosts: Arc::new(named_hosts),
        }
    }

    /// Checks a device endpoint at registration; the normalized URL if it may be used.
    pub(crate) fn check(&self, endpoint: &str) -> Result<Url, Refused> {
        let url = parse_http_url(endpoint).map_err(Refused::Malformed)?;
        let Some((_, prefix_host)) = self
            .prefixes
            .iter()
            .find(|(prefix, _)| url.as_str().starts_with(prefix.as_str()))
        else {
            return Err(Refused::NotAllowed);
        };
        let host = url
            .host()
            .ok_or_else(|| Refused::Malformed("no host".into()))?;
        if host_is_private(&host) && url.host_str() != Some(prefix_host.as_str()) {
            return Err(Refused::Private);
        }
        Ok(url)
    }

    /// The resolver the HTTP client must use, enforcing the same rule for names.
    pub(crate) fn resolver(&self) -> GuardedResolver {
        GuardedResolver {
            named_hosts: self.named_hosts.clone(),
        }
    }
}

/// A DNS resolver that drops private addresses of every host no prefix names, so a public name that
/// resolves (or is rebound) to an internal address is not reached.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    named_hosts: Arc<HashSet<String>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let named = self.named_hosts.contains(&host);
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = resolved
                .filter(|addr| named || !is_private_ip(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to private addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(prefixes: &[&str]) -> Allowlist {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        Allowlist::new(&prefixes, None)
    }

    #[test]
    fn an_endpoint_must_start_with_an_allowed_prefix() {
        let allow = list(&["https://push.example/up/"]);
        assert!(allow.check("https://push.example/up/abc").is_ok());
        assert_eq!(
            allow.check("https://push.example/other"),
            Err(Refused::NotAllowed)
        );
        // The prefix's trailing slash keeps a look-alike host out.
        assert_eq!(
            allow.check("https://push.example.evil/up/x"),
            Err(Refused::NotAllowed)
        );
        assert_eq!(
            allow.check("http://push.example/up/abc"),
            Err(Refused::NotAllowed)
        );
        assert!(matches!(
            allow.check("not a url"),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            allow.check("ftp://push.example/up/"),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            allow.check("https://user:pw@push.example/up/x"),
            Err(Refused::Malformed(_))
        ));
        let long = format!("https://push.example/up/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(matches!(allow.check(&long), Err(Refused::Malformed(_))));
    }

    #[test]
    fn private_hosts_need_a_prefix_that_names_them() {
        let broad = list(&["https://"]);
        assert!(broad.check("https://push.example/x").is_ok());
        for private in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://localhost/x",
            "https://0.0.0.0/x",
        ] {
            assert_eq!(broad.check(private), Err(Refused::Private), "{private}");
        }
        let named = list(&["http://127.0.0.1:8080/push/"]);
        assert!(named.check("http://127.0.0.1:8080/push/d1").is_ok());
        assert_eq!(
            named.check("http://127.0.0.1:9090/push/d1"),
            Err(Refused::NotAllowed)
        );
    }

    #[test]
    fn prefixes_must_be_urls_ending_in_a_slash() {
        assert!(check_prefix("https://push.example/").is_ok());
        assert!(check_prefix("https://").is_ok());
        assert!(check_prefix("https://push.example").is_err());
        assert!(check_prefix("push.example/").is_err());
        assert!(parse_http_url("https://gw.example/_matrix/push/v1/notify").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_private_addresses_of_unnamed_hosts() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let resolve = |allow: &Allowlist| {
            let name = reqwest::dns::Name::from_str("localhost").expect("name");
            allow.resolver().resolve(name)
        };
        assert!(resolve(&list(&["https://"])).await.is_err());
        let named = resolve(&list(&["http://localhost:8080/"]))
            .await
            .expect("named host");
        assert!(named.into_iter().all(|a| a.ip().is_loopback()));
    }
}
