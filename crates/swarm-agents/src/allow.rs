//! Which hosts an HTTP pool may be given at runtime
//! (`[pools.NAME.http] allow_hosts`).
//!
//! An instance added through `POST /api/pools/{pool}/instances` gets the
//! pool's shared settings, its `headers` (a backend's bearer token, say)
//! among them. So a runtime addition must name a host the operator listed:
//! a host name (`backend.internal`), an address (`10.0.0.5`, `[::1]`), either
//! with a port (`10.0.0.5:8000`), or a CIDR block (`10.0.0.0/8`). Without
//! `allow_hosts`, the hosts (with their ports) of the configured `urls` are
//! the list: instances can be re-added, moved elsewhere never. URLs in the
//! configuration file itself are trusted as they are.

use std::net::IpAddr;

use reqwest::Url;
use swarm_core::FieldError;

/// One `allow_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A host name or address, lower case (IPv6 without brackets), and a
    /// port if given.
    Host(String, Option<u16>),
    /// An address block.
    Cidr(IpAddr, u8),
}

/// The hosts runtime additions to one pool may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllowList(Vec<Entry>);

impl HostAllowList {
    /// Reads `allow_hosts` (a list of strings); errors name the entry
    /// (`allow_hosts.1`).
    pub fn parse(v: &toml::Value) -> Result<Self, FieldError> {
        let items = v.as_array().ok_or_else(|| {
            FieldError::invalid(
                "allow_hosts",
                "must be a list of hosts, `host:port` or CIDR blocks",
            )
        })?;
        let entries = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .and_then(parse_entry)
                    .ok_or_else(|| {
                        FieldError::invalid(
                            format!("allow_hosts.{i}"),
                            "must be a host (`backend.internal`), `host:port` or a CIDR block (`10.0.0.0/8`)",
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(entries))
    }

    /// The hosts and ports of `urls` (the default list).
    pub fn of_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Self {
        Self(
            urls.into_iter()
                .filter_map(|u| Url::parse(u).ok())
                .filter_map(|u| {
                    Some(Entry::Host(
                        bare_host(u.host_str()?),
                        u.port_or_known_default(),
                    ))
                })
                .collect(),
        )
    }

    /// Whether `url`'s host (and port) is listed.
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str().map(bare_host) else {
            return false;
        };
        let port = url.port_or_known_default();
        let ip: Option<IpAddr> = host.parse().ok();
        self.0.iter().any(|e| match e {
            Entry::Host(h, p) => *h == host && p.is_none_or(|p| Some(p) == port),
            Entry::Cidr(net, bits) => ip.is_some_and(|ip| in_block(ip, *net, *bits)),
        })
    }

    /// Checks a runtime addition's URL: `host_not_allowed` on `url` when
    /// its host is not listed.
    pub fn check(&self, pool: &str, url: &str) -> Result<(), FieldError> {
        self.check_in(
            "url",
            url,
            &format!(
                "`[pools.{pool}.http] allow_hosts` (default: the hosts of its configured `urls`)"
            ),
            "the pool's shared settings and headers go only to listed hosts",
        )
    }

    /// Checks `url` (given as `field`): an http(s) URL whose host is in
    /// this list, named `list` in the error, which says `purpose`.
    pub fn check_in(
        &self,
        field: &str,
        url: &str,
        list: &str,
        purpose: &str,
    ) -> Result<(), FieldError> {
        let parsed = crate::http::parse_http_url(field, url)?;
        if self.allows(&parsed) {
            return Ok(());
        }
        Err(FieldError {
            code: "host_not_allowed",
            message: format!(
                "host `{}` is not in {list}; {purpose}",
                parsed.host_str().unwrap_or_default()
            ),
            field: Some(field.into()),
        })
    }
}

/// A host without IPv6 brackets, lower case.
fn bare_host(h: &str) -> String {
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

fn parse_entry(s: &str) -> Option<Entry> {
    let s = s.trim();
    if s.is_empty() || s.contains('@') {
        return None;
    }
    if let Some((net, bits)) = s.split_once('/') {
        let net: IpAddr = net.parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        return (bits <= max).then_some(Entry::Cidr(net, bits));
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Some(Entry::Host(ip.to_string(), None));
    }
    // `host:port` or `[v6]:port` or a host name: let the URL parser judge.
    let url = Url::parse(&format!("http://{s}/")).ok()?;
    if url.path() != "/" || url.username() != "" || url.query().is_some() {
        return None;
    }
    let port = s.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
    Some(Entry::Host(bare_host(url.host_str()?), port))
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    if shift >= width {
        return true;
    }
    (ip >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> HostAllowList {
        let v = toml::Value::Array(entries.iter().map(|e| toml::Value::from(*e)).collect());
        HostAllowList::parse(&v).unwrap()
    }

    fn allowed(l: &HostAllowList, url: &str) -> bool {
        l.allows(&Url::parse(url).unwrap())
    }

    #[test]
    fn hosts_ports_and_blocks() {
        let l = list(&["backend.internal", "127.0.0.1:9000", "10.0.0.0/8", "[::1]"]);
        assert!(allowed(&l, "http://Backend.Internal:1234/run"));
        assert!(allowed(&l, "http://127.0.0.1:9000/run"));
        assert!(!allowed(&l, "http://127.0.0.1:9001/run"));
        assert!(allowed(&l, "https://10.200.3.4/x"));
        assert!(!allowed(&l, "https://11.0.0.1/x"));
        assert!(allowed(&l, "http://[::1]:80/"));
        assert!(!allowed(&l, "http://evil.example/run"));
        assert!(!allowed(&l, "http://backend.internal.evil.example/run"));
    }

    #[test]
    fn the_default_is_the_configured_hosts() {
        let l = HostAllowList::of_urls(["http://127.0.0.1:9000/work", "https://api.example/v1"]);
        assert!(allowed(&l, "http://127.0.0.1:9000/other"));
        assert!(!allowed(&l, "http://127.0.0.1:9001/work"));
        assert!(allowed(&l, "https://api.example:443/v2"));
        assert!(!allowed(&l, "http://api.example/v1"), "port 80 is not 443");
    }

    #[test]
    fn bad_entries_name_their_index() {
        let v = toml::Value::Array(vec!["ok.example".into(), "10.0.0.0/99".into()]);
        assert_eq!(
            HostAllowList::parse(&v).unwrap_err().field.as_deref(),
            Some("allow_hosts.1")
        );
        for bad in ["", "http://x/", "u:p@host", "host/path"] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
        let e = list(&["a.example"])
            .check("remote", "http://b.example/")
            .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("host_not_allowed", Some("url"))
        );
    }
}
