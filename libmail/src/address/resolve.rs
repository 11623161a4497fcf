//! The resolve half of trivial-rewrite: which transport and next hop
//! deliver a recipient. qmgr asks it for every recipient; smtpd will ask
//! it for `reject_unauth_destination` and recipient validation.
//!
//! | class | when the domain is in | transport (next hop) |
//! |---|---|---|
//! | local | `mydestination` (or there is no domain) | `local_transport` (`local:$myhostname`) |
//! | virtual alias | `virtual_alias_domains` | `error:User unknown in virtual alias table` (cleanup already expanded every known address) |
//! | virtual mailbox | `virtual_mailbox_domains` | `virtual_transport` (the domain) |
//! | relay | `relay_domains` | `relay_transport` (the transport's next hop, else `relayhost`, else the domain) |
//! | default | anything else | `default_transport` (same next-hop rule) |
//!
//! Classes are tried in that order. Then `transport_maps` (keys from
//! [`crate::table::search::transport_keys`]) may override the transport,
//! the next hop, or both: `smtp:[mx.example]`, `:[host]` (next hop only),
//! `local:` (transport only), `error:text`, `discard:text`.

use super::domains::DomainList;
use super::rewrite::{Context, Rewriter};
use crate::config::params::{split_list, Params};
use crate::table::search::{transport_keys, Maps};
use crate::table::{OpenOptions, TableError};

/// Postfix's address classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Local,
    VirtualAlias,
    VirtualMailbox,
    Relay,
    Default,
}

/// Where a recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub class: Class,
    /// The master.cf service name of the delivery agent.
    pub transport: String,
    /// The next hop (a domain, `[host]:port`, or for error/discard the text).
    pub nexthop: String,
    /// The recipient in canonical form.
    pub recipient: String,
}

/// The resolver of one configuration.
pub struct Resolver {
    rewriter: Rewriter,
    mydestination: DomainList,
    virtual_alias_domains: DomainList,
    virtual_mailbox_domains: DomainList,
    relay_domains: DomainList,
    transport_maps: Option<Maps>,
    local_transport: String,
    virtual_transport: String,
    relay_transport: String,
    default_transport: String,
    relayhost: String,
    myhostname: String,
    delimiters: String,
    parent_transport: bool,
}

/// `transport:nexthop` → (transport, nexthop); either may be empty.
pub fn split_transport(spec: &str) -> (&str, &str) {
    match spec.find(':') {
        Some(i) => (&spec[..i], &spec[i + 1..]),
        None => (spec, ""),
    }
}

impl Resolver {
    pub fn new(params: &Params) -> Result<Resolver, TableError> {
        let v = |n: &str| {
            params
                .value(n)
                .map_err(|e| TableError::Config(format!("{n}: {e}")))
        };
        let maps = v("transport_maps")?;
        let parents = v("parent_domain_matches_subdomains")?;
        Ok(Resolver {
            rewriter: Rewriter::new(params),
            mydestination: DomainList::from_param(params, "mydestination")?,
            virtual_alias_domains: DomainList::from_param(params, "virtual_alias_domains")?,
            virtual_mailbox_domains: DomainList::from_param(params, "virtual_mailbox_domains")?,
            relay_domains: DomainList::from_param(params, "relay_domains")?,
            transport_maps: if maps.trim().is_empty() {
                None
            } else {
                Some(Maps::open(
                    "transport_maps",
                    &maps,
                    &OpenOptions::default(),
                )?)
            },
            local_transport: v("local_transport")?,
            virtual_transport: v("virtual_transport")?,
            relay_transport: v("relay_transport")?,
            default_transport: v("default_transport")?,
            relayhost: v("relayhost")?.trim().to_string(),
            myhostname: v("myhostname")?,
            delimiters: v("recipient_delimiter")?,
            parent_transport: split_list(&parents).contains(&"transport_maps"),
        })
    }

    /// The rewriter this resolver canonicalizes with.
    pub fn rewriter(&self) -> &Rewriter {
        &self.rewriter
    }

    /// A message's content filter, `transport[:nexthop]`, as
    /// (transport, nexthop): Postfix's qmgr sends every recipient there
    /// unresolved, to `$myhostname` when no next hop is given.
    pub fn filter_route(&self, filter: &str) -> (String, String) {
        let (t, h) = split_transport(filter);
        let h = if h.is_empty() { &self.myhostname } else { h };
        (t.to_string(), h.to_string())
    }

    /// Whether `domain` is one of this machine's final destinations.
    pub fn is_local_domain(&self, domain: &str) -> Result<bool, TableError> {
        self.mydestination.matches(domain)
    }

    /// The address class of a domain (no transport_maps).
    pub fn class_of(&self, domain: &str) -> Result<Class, TableError> {
        Ok(
            if domain.is_empty() || self.mydestination.matches(domain)? {
                Class::Local
            } else if self.virtual_alias_domains.matches(domain)? {
                Class::VirtualAlias
            } else if self.virtual_mailbox_domains.matches(domain)? {
                Class::VirtualMailbox
            } else if self.relay_domains.matches(domain)? {
                Class::Relay
            } else {
                Class::Default
            },
        )
    }

    /// Resolves one recipient.
    pub fn resolve(&self, addr: &str) -> Result<Resolved, TableError> {
        let recipient = self.rewriter.rewrite(Context::Local, addr);
        let domain = super::domain_of(&recipient);
        let class = self.class_of(&domain)?;
        let remote_hop = |spec: &str| -> (String, String) {
            let (t, h) = split_transport(spec);
            let hop = if !h.is_empty() {
                h.to_string()
            } else if !self.relayhost.is_empty() {
                self.relayhost.clone()
            } else {
                domain.clone()
            };
            (t.to_string(), hop)
        };
        let (mut transport, mut nexthop) = match class {
            Class::Local => {
                let (t, h) = split_transport(&self.local_transport);
                let h = if h.is_empty() { &self.myhostname } else { h };
                (t.to_string(), h.to_string())
            }
            Class::VirtualAlias => (
                "error".to_string(),
                "5.1.1 User unknown in virtual alias table".to_string(),
            ),
            Class::VirtualMailbox => {
                let (t, h) = split_transport(&self.virtual_transport);
                (
                    t.to_string(),
                    if h.is_empty() {
                        domain.clone()
                    } else {
                        h.to_string()
                    },
                )
            }
            Class::Relay => remote_hop(&self.relay_transport),
            Class::Default => remote_hop(&self.default_transport),
        };
        if let Some(maps) = &self.transport_maps {
            if class != Class::VirtualAlias {
                let keys = transport_keys(&recipient, &self.delimiters, self.parent_transport);
                if let Some((_, value)) = maps.find_first(&keys)? {
                    let (t, h) = split_transport(value.trim());
                    if !t.is_empty() {
                        transport = t.to_string();
                    }
                    if !h.is_empty() {
                        nexthop = h.to_string();
                    } else if !t.is_empty() && matches!(t, "error" | "discard") {
                        nexthop.clear();
                    }
                }
            }
        }
        Ok(Resolved {
            class,
            transport,
            nexthop,
            recipient,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::maincf::MainCf;

    fn resolver(extra: &str) -> Resolver {
        let text = format!(
            "compatibility_level = 3.6\nmyhostname = mx.example.com\nmydomain = example.com\n\
             mydestination = $myhostname, localhost\nrelay_domains = relay.example\n{extra}"
        );
        let (m, _) = MainCf::parse(&text, "/x/main.cf");
        Resolver::new(&Params::new("/x", m)).unwrap()
    }

    fn r(res: &Resolver, a: &str) -> (Class, String, String, String) {
        let x = res.resolve(a).unwrap();
        (x.class, x.transport, x.nexthop, x.recipient)
    }

    #[test]
    fn classes_and_default_transports() {
        let res = resolver(
            "virtual_mailbox_domains = vmail.example\nvirtual_alias_domains = valias.example\n",
        );
        assert_eq!(
            r(&res, "bob"),
            (
                Class::Local,
                "local".into(),
                "mx.example.com".into(),
                "bob@mx.example.com".into()
            )
        );
        assert_eq!(r(&res, "bob@LOCALHOST").0, Class::Local);
        assert_eq!(
            r(&res, "a@vmail.example"),
            (
                Class::VirtualMailbox,
                "virtual".into(),
                "vmail.example".into(),
                "a@vmail.example".into()
            )
        );
        let va = r(&res, "a@valias.example");
        assert_eq!((va.0, va.1.as_str()), (Class::VirtualAlias, "error"));
        assert_eq!(
            r(&res, "a@x.relay.example").0,
            Class::Relay,
            "relay_domains is in parent_domain_matches_subdomains by default"
        );
        assert_eq!(
            r(&res, "a@relay.example"),
            (
                Class::Relay,
                "relay".into(),
                "relay.example".into(),
                "a@relay.example".into()
            )
        );
        assert_eq!(
            r(&res, "a@elsewhere.org"),
            (
                Class::Default,
                "smtp".into(),
                "elsewhere.org".into(),
                "a@elsewhere.org".into()
            )
        );
    }

    #[test]
    fn relayhost_and_transport_maps() {
        let dir = std::env::temp_dir().join(format!("resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("transport");
        std::fs::write(
            &t,
            "special.example  smtp:[10.0.0.1]:2525\n.sub.example  :[hop.example]\n\
             gone.example  error:5.1.2 domain gone\nlmtp.example  lmtp:unix:private/dovecot\n",
        )
        .unwrap();
        let res = resolver(&format!(
            "relayhost = [smarthost.example]\ntransport_maps = texthash:{}\n",
            t.display()
        ));
        assert_eq!(r(&res, "a@elsewhere.org").2, "[smarthost.example]");
        assert_eq!(r(&res, "a@relay.example").2, "[smarthost.example]");
        let s = r(&res, "a@special.example");
        assert_eq!((s.1.as_str(), s.2.as_str()), ("smtp", "[10.0.0.1]:2525"));
        let s = r(&res, "a@x.sub.example");
        assert_eq!((s.1.as_str(), s.2.as_str()), ("smtp", "[hop.example]"));
        let s = r(&res, "a@gone.example");
        assert_eq!((s.1.as_str(), s.2.as_str()), ("error", "5.1.2 domain gone"));
        let s = r(&res, "a@lmtp.example");
        assert_eq!(
            (s.1.as_str(), s.2.as_str()),
            ("lmtp", "unix:private/dovecot")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
