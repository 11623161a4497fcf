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
//! With the message's sender known ([`Resolver::sender_route`] once per
//! message, then [`Resolver::resolve_from`] per recipient: qmgr),
//! `sender_dependent_relayhost_maps` overrides `relayhost` and
//! `sender_dependent_default_transport_maps` overrides `default_transport`
//! (keys: the sender, its forms without extension, the bare user for a
//! local domain, `@domain`; the null sender is looked up as
//! `empty_address_relayhost_maps_lookup_key` /
//! `empty_address_default_transport_maps_lookup_key`, `<>`; `DUNNO` ends
//! the search with no override). A next hop written in the transport
//! itself (`smtp:[host]`) still wins over both relay hosts.
//!
//! Last, a recipient found in `relocated_maps` (its address, the forms
//! without extension, the bare user for a local domain, `@domain`) goes
//! to the error agent: `5.1.6 User has moved to NEW_LOCATION`.
//!
//! Classes are tried in that order. Then `transport_maps` (keys from
//! [`crate::table::search::transport_keys`]) may override the transport,
//! the next hop, or both: `smtp:[mx.example]`, `:[host]` (next hop only),
//! `local:` (transport only), `error:text`, `discard:text`.

use super::domains::DomainList;
use super::rewrite::{Context, Rewriter};
use crate::config::params::{split_list, Params};
use crate::table::search::{address_keys, transport_keys, Key, Maps};
use crate::table::TableError;

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
    /// `relocated_maps`.
    relocated: Option<Maps>,
    /// `sender_dependent_relayhost_maps` and its null-sender key.
    sender_relayhost: Option<(Maps, String)>,
    /// `sender_dependent_default_transport_maps` and its null-sender key.
    sender_default_transport: Option<(Maps, String)>,
}

/// What the sender-dependent tables say for one sender: the relay host
/// and default transport that replace the global ones (`None`: no
/// override). Looked up once per message ([`Resolver::sender_route`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderRoute {
    relayhost: Option<String>,
    default_transport: Option<String>,
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
        let parents = v("parent_domain_matches_subdomains")?;
        let maps = |name: &str| Maps::from_param(params, name).map_err(TableError::Config);
        let sender_maps = |name: &str, key: &str| -> Result<Option<(Maps, String)>, TableError> {
            Ok(match maps(name)? {
                Some(m) => Some((m, v(key)?.trim().to_string())),
                None => None,
            })
        };
        Ok(Resolver {
            rewriter: Rewriter::new(params),
            mydestination: DomainList::from_param(params, "mydestination")?,
            virtual_alias_domains: DomainList::from_param(params, "virtual_alias_domains")?,
            virtual_mailbox_domains: DomainList::from_param(params, "virtual_mailbox_domains")?,
            relay_domains: DomainList::from_param(params, "relay_domains")?,
            transport_maps: maps("transport_maps")?,
            local_transport: v("local_transport")?,
            virtual_transport: v("virtual_transport")?,
            relay_transport: v("relay_transport")?,
            default_transport: v("default_transport")?,
            relayhost: v("relayhost")?.trim().to_string(),
            myhostname: v("myhostname")?,
            delimiters: v("recipient_delimiter")?,
            parent_transport: split_list(&parents).contains(&"transport_maps"),
            relocated: maps("relocated_maps")?,
            sender_relayhost: sender_maps(
                "sender_dependent_relayhost_maps",
                "empty_address_relayhost_maps_lookup_key",
            )?,
            sender_default_transport: sender_maps(
                "sender_dependent_default_transport_maps",
                "empty_address_default_transport_maps_lookup_key",
            )?,
        })
    }

    /// What a sender-dependent table says for `sender`; `None` for no
    /// entry, an empty value or `DUNNO` (the global setting applies).
    fn by_sender(
        &self,
        table: &Option<(Maps, String)>,
        sender: &str,
    ) -> Result<Option<String>, TableError> {
        let Some((maps, null_key)) = table else {
            return Ok(None);
        };
        let keys = if sender.is_empty() {
            vec![Key {
                text: null_key.clone(),
                whole: true,
            }]
        } else {
            let domain = super::domain_of(sender);
            let local = !domain.is_empty() && self.mydestination.matches(&domain)?;
            address_keys(sender, &self.delimiters, local)
        };
        Ok(maps
            .find_first(&keys)?
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("DUNNO")))
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

    /// The sender-dependent relay host and default transport of mail
    /// from `sender` (`""`: the null sender), for
    /// [`resolve_from`](Self::resolve_from).
    pub fn sender_route(&self, sender: &str) -> Result<SenderRoute, TableError> {
        Ok(SenderRoute {
            relayhost: self.by_sender(&self.sender_relayhost, sender)?,
            default_transport: self.by_sender(&self.sender_default_transport, sender)?,
        })
    }

    /// Resolves one recipient, whoever sends (no sender-dependent
    /// tables: smtpd's relay and validation checks).
    pub fn resolve(&self, addr: &str) -> Result<Resolved, TableError> {
        self.resolve_from(&SenderRoute::default(), addr)
    }

    /// Resolves one recipient of mail whose sender's tables said `route`
    /// (relay and default classes only).
    pub fn resolve_from(&self, route: &SenderRoute, addr: &str) -> Result<Resolved, TableError> {
        let recipient = self.rewriter.rewrite(Context::Local, addr);
        let domain = super::domain_of(&recipient);
        let class = self.class_of(&domain)?;
        let relayhost = route.relayhost.as_deref().unwrap_or(&self.relayhost);
        let remote_hop = |spec: &str| -> (String, String) {
            let (t, h) = split_transport(spec);
            let hop = if !h.is_empty() {
                h.to_string()
            } else if !relayhost.is_empty() {
                relayhost.to_string()
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
            Class::Default => remote_hop(
                route
                    .default_transport
                    .as_deref()
                    .unwrap_or(&self.default_transport),
            ),
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
        if let Some(maps) = &self.relocated {
            let local = class == Class::Local;
            let keys = address_keys(&recipient, &self.delimiters, local);
            if let Some((_, place)) = maps.find_first(&keys)? {
                transport = "error".to_string();
                nexthop = format!("5.1.6 User has moved to {}", place.trim());
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
    fn relocated_users_go_to_the_error_agent() {
        let res = resolver(
            "recipient_delimiter = +\n\
             relocated_maps = inline:{ {old@example.com=new@example.net}, {bob=bob@home.example}, \
             {@gone.example=the new company, +1 555 0100} }\n\
             transport_maps = inline:{ {old@example.com=smtp:[elsewhere]} }\n",
        );
        let moved = |a: &str| {
            let x = res.resolve(a).unwrap();
            (x.transport, x.nexthop)
        };
        let err = |t: &str| ("error".to_string(), format!("5.1.6 User has moved to {t}"));
        // Over transport_maps too; with an extension; bare user only here.
        assert_eq!(moved("old@example.com"), err("new@example.net"));
        assert_eq!(moved("old+x@example.com"), err("new@example.net"));
        assert_eq!(moved("bob@mx.example.com"), err("bob@home.example"));
        assert_eq!(moved("bob@other.example").0, "smtp");
        assert_eq!(
            moved("anyone@gone.example"),
            err("the new company, +1 555 0100")
        );
        assert_eq!(moved("someone@example.com").0, "smtp");
    }

    #[test]
    fn sender_dependent_relayhost_and_default_transport() {
        let res = resolver(
            "relayhost = [global.example]\nrecipient_delimiter = +\n\
             sender_dependent_relayhost_maps = inline:{ {alice@example.com=[a.example]:587}, \
             {@example.org=[org.example]}, {bob@example.com=DUNNO}, {<>=[bounces.example]}, \
             {carol@mx.example.com=[local.example]} }\n\
             sender_dependent_default_transport_maps = inline:{ {dave@example.com=lmtp:unix:/run/x}, \
             {erin@example.com=smtp:[fixed.example]} }\n",
        );
        let hop = |s: &str, a: &str| {
            let route = res.sender_route(s).unwrap();
            let x = res.resolve_from(&route, a).unwrap();
            (x.transport, x.nexthop)
        };
        let smtp = |h: &str| ("smtp".to_string(), h.to_string());
        assert_eq!(
            hop("alice@example.com", "x@remote.test"),
            smtp("[a.example]:587")
        );
        assert_eq!(
            hop("alice+tag@example.com", "x@remote.test"),
            smtp("[a.example]:587")
        );
        assert_eq!(
            hop("zed@example.org", "x@remote.test"),
            smtp("[org.example]")
        );
        // DUNNO, no entry: the global relayhost.
        assert_eq!(
            hop("bob@example.com", "x@remote.test"),
            smtp("[global.example]")
        );
        assert_eq!(
            hop("zed@else.test", "x@remote.test"),
            smtp("[global.example]")
        );
        // The null sender has its own key; a local sender its bare forms.
        assert_eq!(hop("", "x@remote.test"), smtp("[bounces.example]"));
        assert_eq!(
            hop("carol@mx.example.com", "x@remote.test"),
            smtp("[local.example]")
        );
        // Relay domains too; never local mail.
        assert_eq!(
            hop("alice@example.com", "x@relay.example"),
            ("relay".to_string(), "[a.example]:587".to_string())
        );
        assert_eq!(hop("alice@example.com", "bob").0, "local");
        // The default transport per sender; its own next hop wins.
        assert_eq!(
            hop("dave@example.com", "x@remote.test"),
            ("lmtp".to_string(), "unix:/run/x".to_string())
        );
        assert_eq!(
            hop("erin@example.com", "x@remote.test"),
            smtp("[fixed.example]")
        );
        // Without a sender (smtpd's checks) the tables are not asked.
        assert_eq!(
            res.resolve("x@remote.test").unwrap().nexthop,
            "[global.example]"
        );
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
