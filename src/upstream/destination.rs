//! Where an upstream may send berth: the rules for redirect targets and
//! token realms, which the upstream chooses and berth then fetches.
//!
//! Left unchecked, an upstream (or whoever controls its answers) could point
//! berth at the cloud's metadata service or at a private network berth can
//! reach and its clients cannot, and berth would fetch it for them. So a
//! target must be http(s), and its addresses must be public, or of a class
//! the upstream itself lives in (a registry on a private network may
//! redirect within it), or of a class the configuration allows. Host names
//! are checked where they are resolved (`Resolver`), so a name that
//! resolves to a forbidden address is refused too, whatever it is called.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Address classes that are not the public internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    Loopback,
    /// RFC 1918, shared address space (100.64/10), unique local (fc00::/7).
    Private,
    /// 169.254/16 and fe80::/10: where metadata services live.
    LinkLocal,
    /// Unspecified, multicast, broadcast, documentation: never a target.
    Reserved,
    Public,
}

impl AddressClass {
    pub fn of(ip: IpAddr) -> AddressClass {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                if v4.is_loopback() {
                    AddressClass::Loopback
                } else if v4.is_link_local() {
                    AddressClass::LinkLocal
                } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                    AddressClass::Private
                } else if v4.is_unspecified()
                    || v4.is_multicast()
                    || v4.is_broadcast()
                    || v4.is_documentation()
                    || a == 0
                    || a >= 240
                {
                    AddressClass::Reserved
                } else {
                    AddressClass::Public
                }
            }
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                if v6.is_loopback() {
                    AddressClass::Loopback
                } else if first & 0xffc0 == 0xfe80 {
                    AddressClass::LinkLocal
                } else if first & 0xfe00 == 0xfc00 {
                    AddressClass::Private
                } else if v6.is_unspecified()
                    || v6.is_multicast()
                    || first == 0x2001 && v6.segments()[1] == 0xdb8
                {
                    AddressClass::Reserved
                } else {
                    AddressClass::Public
                }
            }
        }
    }

    /// The configuration's name for the class.
    pub fn name(self) -> &'static str {
        match self {
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Reserved => "reserved",
            AddressClass::Public => "public",
        }
    }

    /// The classes a configuration may allow by name.
    pub fn parse(name: &str) -> Option<AddressClass> {
        match name {
            "loopback" => Some(AddressClass::Loopback),
            "private" => Some(AddressClass::Private),
            "link-local" => Some(AddressClass::LinkLocal),
            _ => None,
        }
    }
}

impl serde::Serialize for AddressClass {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One upstream's rules: its own hosts (always reachable, whatever their
/// addresses) and the address classes targets may have.
#[derive(Debug)]
pub struct Policy {
    own_hosts: HashSet<String>,
    allowed: Mutex<HashSet<AddressClass>>,
}

impl Policy {
    /// `own_hosts` are the upstream's endpoint hosts; `configured` the
    /// classes the configuration allows on top of public addresses.
    pub fn new(own_hosts: impl IntoIterator<Item = String>, configured: &[AddressClass]) -> Policy {
        let mut allowed: HashSet<AddressClass> = configured.iter().copied().collect();
        allowed.insert(AddressClass::Public);
        let own_hosts: HashSet<String> = own_hosts
            .into_iter()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
            .collect();
        // An upstream at an address literal lives in that address's class.
        for host in &own_hosts {
            if let Ok(ip) = host.parse::<IpAddr>() {
                allowed.insert(AddressClass::of(ip));
            }
        }
        allowed.remove(&AddressClass::Reserved);
        Policy {
            own_hosts,
            allowed: Mutex::new(allowed),
        }
    }

    fn is_own(&self, host: &str) -> bool {
        self.own_hosts.contains(&host.to_ascii_lowercase())
    }

    fn allows(&self, class: AddressClass) -> bool {
        self.allowed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&class)
    }

    /// The upstream's own host resolved to `addrs`: targets in those
    /// classes are the upstream's neighbours, and allowed.
    fn learn_own(&self, addrs: &[SocketAddr]) {
        let mut allowed = self.allowed.lock().unwrap_or_else(|e| e.into_inner());
        for addr in addrs {
            let class = AddressClass::of(addr.ip());
            if class != AddressClass::Reserved {
                allowed.insert(class);
            }
        }
    }

    /// Whether berth may fetch `url` for this upstream: http(s), and an
    /// address literal of an allowed class. Names are checked when they are
    /// resolved.
    pub fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{} is not an http(s) URL", url.scheme()));
        }
        let Some(host) = url.host_str() else {
            return Err("the URL has no host".to_owned());
        };
        let host = host.trim_matches(['[', ']']);
        if self.is_own(host) {
            return Ok(());
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                let class = AddressClass::of(ip);
                if self.allows(class) {
                    Ok(())
                } else {
                    Err(format!("{host} is a {} address", class.name()))
                }
            }
            Err(_) => Ok(()),
        }
    }
}

/// The DNS resolver of an upstream's HTTP client: the upstream's own hosts
/// resolve as they are; any other name only to addresses its policy allows.
pub struct Resolver {
    policy: Arc<Policy>,
}

impl Resolver {
    pub fn new(policy: Arc<Policy>) -> Self {
        Resolver { policy }
    }
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.is_own(&host) {
                policy.learn_own(&addrs);
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let usable: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.allows(AddressClass::of(a.ip())))
                .collect();
            if usable.is_empty() && !addrs.is_empty() {
                return Err(format!(
                    "{host} resolves only to addresses berth may not fetch for this upstream \
                     ({}); see redirect_allow",
                    AddressClass::of(addrs[0].ip()).name()
                )
                .into());
            }
            Ok(Box::new(usable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("url")
    }

    #[test]
    fn address_classes() {
        let class = |s: &str| AddressClass::of(s.parse().expect("ip"));
        assert_eq!(class("127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("::1"), AddressClass::Loopback);
        assert_eq!(class("169.254.169.254"), AddressClass::LinkLocal);
        assert_eq!(class("fe80::1"), AddressClass::LinkLocal);
        assert_eq!(class("10.1.2.3"), AddressClass::Private);
        assert_eq!(class("100.100.0.1"), AddressClass::Private);
        assert_eq!(class("fd00::1"), AddressClass::Private);
        assert_eq!(class("::ffff:169.254.169.254"), AddressClass::LinkLocal);
        assert_eq!(class("0.0.0.0"), AddressClass::Reserved);
        assert_eq!(class("224.0.0.1"), AddressClass::Reserved);
        assert_eq!(class("8.8.8.8"), AddressClass::Public);
        assert_eq!(class("2606:4700::1111"), AddressClass::Public);
    }

    #[test]
    fn a_loopback_upstream_may_redirect_to_loopback_but_not_to_metadata() {
        let policy = Policy::new(["127.0.0.1".to_owned()], &[]);
        assert!(policy.check(&url("http://127.0.0.1:9/x")).is_ok());
        assert!(policy.check(&url("http://169.254.169.254/latest")).is_err());
        assert!(policy.check(&url("http://10.0.0.1/x")).is_err());
        assert!(
            policy.check(&url("https://203.0.113.9/x")).is_err(),
            "documentation range"
        );
        assert!(policy.check(&url("https://8.8.8.8/x")).is_ok());
        assert!(policy.check(&url("file:///etc/passwd")).is_err());
        assert!(
            policy.check(&url("http://cdn.example/x")).is_ok(),
            "names are checked when resolved"
        );
    }

    #[test]
    fn configured_classes_are_allowed() {
        let policy = Policy::new(["registry.example".to_owned()], &[AddressClass::Private]);
        assert!(policy.check(&url("http://10.0.0.1/x")).is_ok());
        assert!(policy.check(&url("http://127.0.0.1/x")).is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_forbidden_addresses_are_refused() {
        use reqwest::dns::Resolve;
        let policy = Arc::new(Policy::new(["registry.example".to_owned()], &[]));
        let resolver = Resolver::new(policy);
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        assert!(resolver.resolve(name).await.is_err());
    }
}
