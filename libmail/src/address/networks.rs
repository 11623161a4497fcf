//! Network lists: `mynetworks`, `permit_mx_backup_networks`,
//! `smtpd_client_event_limit_exceptions` and the other parameters that name
//! clients by address or host name (Postfix's namadr_list).
//!
//! Items, tried left to right, first match wins:
//!
//! | item | matches |
//! |---|---|
//! | `192.0.2.0/24`, `[2001:db8::]/32`, `[2001:db8::/32]` | the client address is in the block |
//! | `192.0.2.7`, `[192.0.2.7]`, `[::1]` | that one address |
//! | `host.example.com` | that client host name; with the parameter listed in `parent_domain_matches_subdomains` (`mynetworks` is, by default) also its subdomains |
//! | `.example.com` | the subdomains of `example.com`, when the parameter is *not* in `parent_domain_matches_subdomains` (with parent matching, Postfix's match_hostname never matches a leading-dot pattern) |
//! | `/file/name` | the items in the file (lines starting with `#` are comments) |
//! | `type:table` | the client name (and, for fixed-key tables, its parent domains), then the client address, is a key of the table; the value is ignored |
//! | `!item` | a match ends the search with "no" (`!/file` negates every item of the file) |
//!
//! IPv6 addresses must be written inside `[]`, since a bare `::1` reads
//! as a `type:table`; such an item is refused with that explanation.
//! Separators are commas and whitespace. Names match without regard to
//! case. An IPv4 client never matches an IPv6 pattern and vice versa:
//! callers pass IPv4-mapped IPv6 clients (`::ffff:192.0.2.7`) in IPv4
//! form, as Postfix's smtpd does.
//!
//! Postfix reports a malformed `net/mask` (or a missing file) only when a
//! client is matched against it, with a temporary error; Facteur refuses
//! the list when it is built, with the parameter named, so the mistake
//! shows at start-up (`facteur check`) rather than as 451 replies.

use std::net::IpAddr;

use crate::config::params::{split_list, Params};
use crate::table::search::{Key, Maps};
use crate::table::{OpenOptions, TableError};

/// Most items a list may hold once files are read.
const MAX_ITEMS: usize = 100_000;
/// How deep `/file` items may include further `/file` items.
const MAX_FILE_DEPTH: usize = 8;
/// Longest file read for a `/file` item.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// A client address as Postfix writes it in logs, replies, tables and
/// policy requests: `unknown` when there is none (XCLIENT
/// `ADDR=[UNAVAILABLE]`).
pub fn addr_or_unknown(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// An address block: `addr/prefix`, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub net: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/len`, `[addr]/len`, `[addr/len]`, `addr` or `[addr]`
    /// as Postfix's cidr_match_parse does, with its error texts.
    pub fn parse(pattern: &str) -> Result<Cidr, String> {
        let (body, mask_len) = if let Some(rest) = pattern.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(format!("missing ']' character after \"[{rest}\""));
            };
            let inner = &rest[..close];
            let after = &rest[close + 1..];
            if let Some(m) = after.strip_prefix('/') {
                (inner, Some(m))
            } else if !after.is_empty() {
                return Err(format!("garbage after \"[{inner}]\""));
            } else {
                match inner.split_once('/') {
                    Some((a, m)) => (a, Some(m)),
                    None => (inner, None),
                }
            }
        } else {
            match pattern.split_once('/') {
                Some((a, m)) => (a, Some(m)),
                None => (pattern, None),
            }
        };
        match mask_len {
            Some(m) => {
                let bad = || format!("bad net/mask pattern: \"{body}/{m}\"");
                let net: IpAddr = parse_addr(body).ok_or_else(bad)?;
                let bits = if net.is_ipv4() { 32 } else { 128 };
                if m.is_empty() || !m.bytes().all(|c| c.is_ascii_digit()) || m.len() > 3 {
                    return Err(bad());
                }
                let prefix: u8 = m.parse().map_err(|_| bad())?;
                if prefix > bits {
                    return Err(bad());
                }
                let masked = mask(net, prefix);
                if masked != net {
                    return Err(format!(
                        "non-null host address bits in \"{body}/{m}\", \
                         perhaps you should use \"{masked}/{prefix}\" instead"
                    ));
                }
                Ok(Cidr { net, prefix })
            }
            None => {
                let net =
                    parse_addr(body).ok_or_else(|| format!("bad address pattern: \"{body}\""))?;
                Ok(Cidr {
                    net,
                    prefix: if net.is_ipv4() { 32 } else { 128 },
                })
            }
        }
    }

    /// Whether `addr` is inside the block (never across address families).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.net, addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(addr, self.prefix) == self.net
            }
            _ => false,
        }
    }
}

/// An address as `inet_pton` takes it (no zone index, no brackets).
fn parse_addr(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        s.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        s.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

enum Pattern {
    /// A host name, `.domain`, or an IPv4 address written plainly
    /// (compared as text with the client address, as Postfix does).
    Name(String),
    /// An address block or a bracketed address.
    Net(Cidr),
    Table(Maps),
}

/// One parameter's network list.
pub struct NetworkList {
    items: Vec<(bool, Pattern)>,
    parent_matches: bool,
    warnings: Vec<String>,
}

/// Whether an item names a table: `type:name`, unless it is bracketed
/// (Postfix's MATCH_DICTIONARY).
fn is_table(item: &str) -> bool {
    !item.starts_with('[') && item.contains(':')
}

/// Whether an item must be an address or block: Postfix hands such an
/// item to its CIDR parser (only address characters, and a `/` or
/// brackets).
fn is_address_form(item: &str) -> bool {
    let chars_ok = item
        .bytes()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, b'.' | b':' | b'[' | b']' | b'/'));
    chars_ok && (item.contains('/') || item.starts_with('['))
}

impl NetworkList {
    /// The list in parameter `name` of `params`.
    pub fn from_param(params: &Params, name: &str) -> Result<NetworkList, TableError> {
        let (value, parent_matches) = super::domains::list_param(params, name)?;
        NetworkList::new(name, &value, parent_matches)
    }

    /// A list from its text; `name` is the parameter, for messages.
    pub fn new(name: &str, value: &str, parent_matches: bool) -> Result<NetworkList, TableError> {
        let mut list = NetworkList {
            items: Vec::new(),
            parent_matches,
            warnings: Vec::new(),
        };
        list.parse(name, value, false, 0)?;
        Ok(list)
    }

    fn parse(
        &mut self,
        name: &str,
        value: &str,
        negated: bool,
        depth: usize,
    ) -> Result<(), TableError> {
        let config = |m: String| TableError::Config(format!("{name}: {m}"));
        let tokens = split_list(value);
        for (i, token) in tokens.iter().enumerate() {
            if token.starts_with('#') {
                self.warnings.push(format!(
                    "{name}: comment at end of line is not supported: {}",
                    tokens[i..].join(" ")
                ));
                break;
            }
            let mut neg = negated;
            let mut item = *token;
            while let Some(rest) = item.strip_prefix('!') {
                neg = !neg;
                item = rest;
            }
            if item.is_empty() {
                return Err(config("no pattern after '!'".to_string()));
            }
            if self.items.len() >= MAX_ITEMS {
                return Err(config(format!("more than {MAX_ITEMS} items")));
            }
            if item.starts_with('/') {
                if depth >= MAX_FILE_DEPTH {
                    return Err(config(format!(
                        "{item}: files nested more than {MAX_FILE_DEPTH} deep"
                    )));
                }
                let text = read_bounded(item).map_err(|e| config(format!("open {item}: {e}")))?;
                for line in text.lines() {
                    if line.starts_with('#') {
                        continue;
                    }
                    self.parse(name, line, neg, depth + 1)?;
                }
            } else if is_table(item) {
                let kind = item.split(':').next().unwrap_or("");
                if kind.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(config(format!(
                        "IPv6 address \"{item}\" must be written inside [] (as in [{item}]); \
                         a bare \"type:name\" names a lookup table"
                    )));
                }
                let maps = Maps::open(name, item, &OpenOptions::default())?;
                self.items.push((neg, Pattern::Table(maps)));
            } else if is_address_form(item) {
                let cidr = Cidr::parse(item).map_err(config)?;
                self.items.push((neg, Pattern::Net(cidr)));
            } else {
                self.items
                    .push((neg, Pattern::Name(item.to_ascii_lowercase())));
            }
        }
        Ok(())
    }

    /// Problems that did not stop the list from being built (comments
    /// after items), worded for a `warning:` line.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a client matches: its host name (`None` or `unknown` when
    /// it has none) and its address (`None` when unknown: XCLIENT
    /// `ADDR=[UNAVAILABLE]`; then, as in Postfix, the text `unknown` is
    /// matched against names and tables, and no block contains it). Each
    /// item is tried against the name, then the address, before the next.
    pub fn matches(
        &self,
        name: Option<&str>,
        addr: impl Into<Option<IpAddr>>,
    ) -> Result<bool, TableError> {
        let addr = addr.into();
        let name = name.map(str::to_ascii_lowercase);
        let addr_text = addr_or_unknown(addr);
        for (neg, pattern) in &self.items {
            let hit = match pattern {
                Pattern::Name(p) => {
                    name.as_deref().is_some_and(|n| self.name_matches(p, n))
                        || addr_text.eq_ignore_ascii_case(p)
                }
                Pattern::Net(c) => addr.is_some_and(|a| c.contains(a)),
                Pattern::Table(maps) => {
                    let by_name = match name.as_deref() {
                        Some(n) if !n.is_empty() => maps.find_first(&self.name_keys(n))?.is_some(),
                        _ => false,
                    };
                    by_name
                        || maps
                            .find_first(&[Key {
                                text: addr_text.clone(),
                                whole: true,
                            }])?
                            .is_some()
                }
            };
            if hit {
                return Ok(!neg);
            }
        }
        Ok(false)
    }

    /// True when matching may wait on something other than memory and
    /// local files: a table item whose lookups may block
    /// ([`Maps::may_block`]).
    pub fn may_block(&self) -> bool {
        self.items.iter().any(|(_, p)| match p {
            Pattern::Table(m) => m.may_block(),
            Pattern::Name(_) | Pattern::Net(_) => false,
        })
    }

    /// Whether an address matches (no host name known).
    pub fn matches_addr(&self, addr: IpAddr) -> Result<bool, TableError> {
        self.matches(None, addr)
    }

    fn name_matches(&self, pattern: &str, name: &str) -> bool {
        if name == pattern {
            return true;
        }
        if self.parent_matches {
            name.len() > pattern.len()
                && name.ends_with(pattern)
                && name.as_bytes()[name.len() - pattern.len() - 1] == b'.'
        } else {
            pattern.starts_with('.') && name.len() > pattern.len() && name.ends_with(pattern)
        }
    }

    /// The name, then its parent domains (`example.com` or `.example.com`
    /// by the parent style); pattern tables see only the whole name.
    fn name_keys(&self, name: &str) -> Vec<Key> {
        let mut keys = vec![Key {
            text: name.to_string(),
            whole: true,
        }];
        let mut rest = name;
        // The next dot after the first character: `.example.com`.
        while let Some(dot) = rest.get(1..).and_then(|r| r.find('.')).map(|i| i + 1) {
            let parent = &rest[dot..];
            if parent.len() <= 1 {
                break;
            }
            keys.push(Key {
                text: if self.parent_matches {
                    parent[1..].to_string()
                } else {
                    parent.to_string()
                },
                whole: false,
            });
            rest = parent;
        }
        keys
    }
}

fn read_bounded(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::maincf::MainCf;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(value: &str) -> NetworkList {
        NetworkList::new("mynetworks", value, true).unwrap()
    }

    fn err(value: &str) -> String {
        match NetworkList::new("mynetworks", value, true) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{value} was accepted"),
        }
    }

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("networks-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn ipv4_blocks_and_single_addresses() {
        let l = list("127.0.0.0/8, 192.0.2.0/28 198.51.100.7");
        assert!(l.matches_addr(ip("127.1.2.3")).unwrap());
        assert!(l.matches_addr(ip("192.0.2.15")).unwrap());
        assert!(!l.matches_addr(ip("192.0.2.16")).unwrap());
        assert!(l.matches_addr(ip("198.51.100.7")).unwrap());
        assert!(!l.matches_addr(ip("198.51.100.8")).unwrap());
        let all = list("0.0.0.0/0");
        assert!(all.matches_addr(ip("203.0.113.1")).unwrap());
        assert!(
            !all.matches_addr(ip("::1")).unwrap(),
            "no cross-family match"
        );
    }

    #[test]
    fn ipv6_bracket_forms() {
        let l = list("[::1]/128 [2001:db8::]/32, [2001:db9::/48] [fe80::1]");
        assert!(l.matches_addr(ip("::1")).unwrap());
        assert!(l.matches_addr(ip("2001:db8:ffff::1")).unwrap());
        assert!(l.matches_addr(ip("2001:db9:0:0::5")).unwrap());
        assert!(!l.matches_addr(ip("2001:db9:1::5")).unwrap());
        assert!(l.matches_addr(ip("fe80::1")).unwrap());
        assert!(!l.matches_addr(ip("127.0.0.1")).unwrap());
        // Debian's default: the mapped block never sees an IPv4 client.
        let d = list("127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128");
        assert!(d.matches_addr(ip("127.0.0.1")).unwrap());
        assert!(d.matches_addr(ip("::ffff:127.0.0.1")).unwrap());
    }

    #[test]
    fn an_unknown_address_is_the_text_unknown() {
        // XCLIENT ADDR=[UNAVAILABLE]: no block holds it, not even 0/0;
        // a name pattern or a table key `unknown` does (as in Postfix).
        let nets = list("0.0.0.0/0 [::]/0");
        assert!(!nets.matches(Some("host.example"), None).unwrap());
        assert!(list("unknown").matches(None, None).unwrap());
        assert!(!list("!unknown, 0.0.0.0/0").matches(None, None).unwrap());
        let d = scratch("unknown");
        let t = d.0.join("t");
        std::fs::write(&t, "unknown x\n").unwrap();
        let by_table = list(&format!("texthash:{}", t.display()));
        assert!(by_table.matches(Some("host.example"), None).unwrap());
        assert!(!by_table.matches(None, ip("192.0.2.1")).unwrap());
    }

    #[test]
    fn negation_first_match_wins() {
        let l = list("!192.168.0.1, 192.168.0.0/28");
        assert!(!l.matches_addr(ip("192.168.0.1")).unwrap());
        assert!(l.matches_addr(ip("192.168.0.2")).unwrap());
        let double = list("!!10.0.0.1");
        assert!(double.matches_addr(ip("10.0.0.1")).unwrap());
    }

    #[test]
    fn host_names_and_parent_domains() {
        let l = NetworkList::new("mynetworks", "example.com, .sub.org", true).unwrap();
        let a = ip("192.0.2.1");
        assert!(l.matches(Some("Example.COM"), a).unwrap());
        assert!(l.matches(Some("mx.example.com"), a).unwrap());
        assert!(!l.matches(Some("badexample.com"), a).unwrap());
        // Parent style: `.sub.org` is not a subdomain pattern (match_hostname).
        assert!(!l.matches(Some("a.sub.org"), a).unwrap());
        assert!(!l.matches(None, a).unwrap());
        let strict = NetworkList::new("x", "example.com, .sub.org", false).unwrap();
        assert!(!strict.matches(Some("mx.example.com"), a).unwrap());
        assert!(strict.matches(Some("example.com"), a).unwrap());
        assert!(strict.matches(Some("a.sub.org"), a).unwrap());
        assert!(!strict.matches(Some("sub.org"), a).unwrap());
    }

    #[test]
    fn malformed_blocks_are_refused_with_postfix_wording() {
        assert_eq!(
            err("192.0.2.1/24"),
            "mynetworks: non-null host address bits in \"192.0.2.1/24\", \
             perhaps you should use \"192.0.2.0/24\" instead"
        );
        assert_eq!(
            err("192.0.2.0/33"),
            "mynetworks: bad net/mask pattern: \"192.0.2.0/33\""
        );
        assert_eq!(
            err("[::1"),
            "mynetworks: missing ']' character after \"[::1\""
        );
        assert_eq!(err("[::1]a"), "mynetworks: garbage after \"[::1]\"");
        assert!(
            err("::1").contains("must be written inside []"),
            "{}",
            err("::1")
        );
        assert!(err("2001:db8::/32").contains("inside []"));
        assert_eq!(err("!"), "mynetworks: no pattern after '!'");
    }

    #[test]
    fn files_with_comments_and_negated_files() {
        let d = scratch("files");
        let f = d.0.join("nets");
        std::fs::write(
            &f,
            "# trusted\n!10.9.9.9\n10.0.0.0/8 [2001:db8::]/32\n192.0.2.1 # trailing\n",
        )
        .unwrap();
        let l = list(&f.display().to_string());
        assert!(l.matches_addr(ip("10.1.2.3")).unwrap());
        assert!(l.matches_addr(ip("2001:db8::5")).unwrap());
        assert!(!l.matches_addr(ip("10.9.9.9")).unwrap());
        assert!(l.matches_addr(ip("192.0.2.1")).unwrap());
        assert_eq!(l.warnings().len(), 1, "{:?}", l.warnings());
        assert!(l.warnings()[0].contains("comment at end of line"));
        let negated = list(&format!("!{}, 0.0.0.0/0", f.display()));
        assert!(!negated.matches_addr(ip("10.1.2.3")).unwrap());
        assert!(
            negated.matches_addr(ip("10.9.9.9")).unwrap(),
            "!! inside a ! file"
        );
        assert!(negated.matches_addr(ip("203.0.113.9")).unwrap());
        let missing = err("/nonexistent/networks");
        assert!(missing.starts_with("mynetworks: open /nonexistent/networks:"));
    }

    #[test]
    fn tables_are_keyed_by_name_then_address() {
        let d = scratch("tables");
        let t = d.0.join("clients");
        std::fs::write(&t, "192.0.2.9 ok\ntrusted.example x\n").unwrap();
        let c = d.0.join("nets.cidr");
        std::fs::write(&c, "198.51.100.0/24 ok\n").unwrap();
        let l = list(&format!("texthash:{}, cidr:{}", t.display(), c.display()));
        assert!(l.matches(Some("unknown"), ip("192.0.2.9")).unwrap());
        assert!(!l.matches(Some("unknown"), ip("192.0.2.10")).unwrap());
        assert!(l
            .matches(Some("mx.trusted.example"), ip("203.0.113.1"))
            .unwrap());
        assert!(l.matches_addr(ip("198.51.100.77")).unwrap());
        let inline = list("inline:{ 203.0.113.5=yes }");
        assert!(inline.matches_addr(ip("203.0.113.5")).unwrap());
    }

    #[test]
    fn from_param_reads_the_parent_style() {
        let (m, _) = MainCf::parse(
            "mynetworks = example.org 127.0.0.0/8\nparent_domain_matches_subdomains =\n",
            "main.cf",
        );
        let p = Params::new("/x", m);
        let l = NetworkList::from_param(&p, "mynetworks").unwrap();
        assert!(!l.matches(Some("a.example.org"), ip("192.0.2.1")).unwrap());
        assert!(l.matches(Some("example.org"), ip("192.0.2.1")).unwrap());
        assert!(l.matches_addr(ip("127.0.0.1")).unwrap());
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("[2001:db8::/32]").unwrap();
        assert_eq!(c.prefix, 32);
        assert!(c.contains(ip("2001:db8::1")));
        assert_eq!(Cidr::parse("192.0.2.7").unwrap().prefix, 32);
        assert!(Cidr::parse("192.0.2.0/x").is_err());
        assert!(Cidr::parse("10/8").is_err());
    }
}
