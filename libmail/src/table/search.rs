//! Postfix's search rules over lookup tables, in one place.
//!
//! A table answers one raw query; the programs look up *addresses*,
//! *domains* and *clients*, and Postfix tries a fixed series of keys for
//! each, first hit wins. Each key is tried in every table of a list before
//! the next key ([`Maps::find_first`]). Pattern tables (regexp, pcre, cidr)
//! see only the keys marked [`Key::whole`] — the string as given — never the
//! partial forms (parent domains, shortened addresses).
//!
//! | lookup | keys, in order |
//! |---|---|
//! | [`address_keys`] (virtual, canonical, relocated, recipient validation) | `user+ext@domain`, `user@domain`, then for local domains `user+ext`, `user`, then `@domain` |
//! | [`access_address_keys`] (check_sender_access, check_recipient_access) | `user+ext@domain`, `user@domain`, `domain`, parent domains, `user+ext@`, `user@` |
//! | [`access_host_keys`] (check_client_access, check_helo_access) | host name, parent domains; then the address `1.2.3.4`, `1.2.3`, `1.2`, `1` (IPv6 by `:` groups) |
//! | [`transport_keys`] | `user+ext@domain`, `user@domain`, `domain`, `.parent` domains, `*` |
//! | [`alias_keys`] | `user+ext`, `user` |
//!
//! Parent domains are written `example.com` when the lookup's parameter is
//! listed in `parent_domain_matches_subdomains` and `.example.com`
//! otherwise. The extension split uses `recipient_delimiter`: the local
//! part is cut at the first of its characters (not the first character of
//! the local part).

use super::{open, OpenOptions, Table, TableError};
use crate::config::params::split_list;

/// One key to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub text: String,
    /// The whole string as given: pattern tables are queried with it.
    pub whole: bool,
}

impl Key {
    fn whole(text: String) -> Key {
        Key { text, whole: true }
    }
    fn partial(text: String) -> Key {
        Key { text, whole: false }
    }
}

/// `owner_request_special` of this process's configuration (set once by
/// the daemon skeleton; Postfix keeps it in a global the same way).
static OWNER_REQUEST_SPECIAL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

/// Sets `owner_request_special` for [`split_extension`].
pub fn set_owner_request_special(on: bool) {
    OWNER_REQUEST_SPECIAL.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `owner-*` and `*-request` get their special handling
/// (`owner_request_special`, default yes).
pub fn owner_request_special() -> bool {
    OWNER_REQUEST_SPECIAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// `user+ext` → (`user`, Some(`+ext`)) at the first delimiter character.
/// Not split, as in Postfix: an empty delimiter set, a leading delimiter,
/// `postmaster`, `MAILER-DAEMON`, `double-bounce` (the default
/// `double_bounce_sender`), and, when `-` is a delimiter, `owner-*` and
/// `*-request` (while `owner_request_special = yes`, the default).
pub fn split_extension<'a>(local: &'a str, delimiters: &str) -> (&'a str, Option<&'a str>) {
    split_extension_with(local, delimiters, owner_request_special())
}

/// [`split_extension`] with `owner_request_special` given.
pub fn split_extension_with<'a>(
    local: &'a str,
    delimiters: &str,
    owner_special: bool,
) -> (&'a str, Option<&'a str>) {
    if delimiters.is_empty()
        || ["postmaster", "mailer-daemon", "double-bounce"]
            .iter()
            .any(|n| local.eq_ignore_ascii_case(n))
    {
        return (local, None);
    }
    if owner_special && delimiters.contains('-') {
        let lower = local.to_ascii_lowercase();
        if lower.starts_with("owner-") || (lower.len() > 8 && lower.ends_with("-request")) {
            return (local, None);
        }
    }
    match local
        .char_indices()
        .skip(1)
        .find(|(_, c)| delimiters.contains(*c))
    {
        Some((i, _)) => (&local[..i], Some(&local[i..])),
        None => (local, None),
    }
}

/// Split `local@domain` at the last `@` (no `@`: all local part).
pub fn split_address(addr: &str) -> (&str, Option<&str>) {
    match addr.rfind('@') {
        Some(i) => (&addr[..i], Some(&addr[i + 1..])),
        None => (addr, None),
    }
}

/// Keys for virtual(5)/canonical(5)-style address lookups.
/// `local_domain` tells whether the domain is one of this machine's
/// (`$myorigin`, `$mydestination`, `$inet_interfaces`): only then are the
/// bare `user` forms tried.
pub fn address_keys(addr: &str, delimiters: &str, local_domain: bool) -> Vec<Key> {
    let (local, domain) = split_address(addr);
    let (user, ext) = split_extension(local, delimiters);
    let mut keys = vec![Key::whole(addr.to_string())];
    let Some(domain) = domain else {
        if ext.is_some() {
            keys.push(Key::partial(user.to_string()));
        }
        return keys;
    };
    if ext.is_some() {
        keys.push(Key::partial(format!("{user}@{domain}")));
    }
    if local_domain {
        if ext.is_some() {
            keys.push(Key::partial(local.to_string()));
        }
        keys.push(Key::partial(user.to_string()));
    }
    keys.push(Key::partial(format!("@{domain}")));
    keys
}

/// The parent domains of `domain`, nearest first, as keys: `example.com`
/// form when `parent_matches` (the parameter is listed in
/// `parent_domain_matches_subdomains`), `.example.com` otherwise.
fn parent_keys(domain: &str, parent_matches: bool, out: &mut Vec<Key>) {
    let mut rest = domain;
    while let Some(i) = rest.find('.') {
        rest = &rest[i + 1..];
        if rest.is_empty() {
            break;
        }
        out.push(Key::partial(if parent_matches {
            rest.to_string()
        } else {
            format!(".{rest}")
        }));
    }
}

/// Keys for access(5) lookups of a sender or recipient address.
pub fn access_address_keys(addr: &str, delimiters: &str, parent_matches: bool) -> Vec<Key> {
    let (local, domain) = split_address(addr);
    let (user, ext) = split_extension(local, delimiters);
    let mut keys = vec![Key::whole(addr.to_string())];
    if ext.is_some() {
        if let Some(d) = domain {
            keys.push(Key::partial(format!("{user}@{d}")));
        }
    }
    if let Some(d) = domain {
        keys.push(Key::partial(d.to_string()));
        parent_keys(d, parent_matches, &mut keys);
        keys.push(Key::partial(format!("{local}@")));
        if ext.is_some() {
            keys.push(Key::partial(format!("{user}@")));
        }
    }
    keys
}

/// Keys for access(5) lookups of a client (or HELO name): the name and its
/// parent domains (not for `unknown` or a numeric name), then the address
/// and its shortened forms.
pub fn access_host_keys(name: Option<&str>, addr: Option<&str>, parent_matches: bool) -> Vec<Key> {
    let mut keys = Vec::new();
    if let Some(n) = name.filter(|n| !n.is_empty() && *n != "unknown") {
        keys.push(Key::whole(n.to_string()));
        if n.parse::<std::net::IpAddr>().is_err() {
            parent_keys(n, parent_matches, &mut keys);
        }
    }
    if let Some(a) = addr {
        keys.push(Key::whole(a.to_string()));
        let sep = if a.contains(':') { ':' } else { '.' };
        let mut rest = a;
        while let Some(i) = rest.rfind(sep) {
            rest = &rest[..i];
            if rest.is_empty() {
                break;
            }
            keys.push(Key::partial(rest.to_string()));
        }
    }
    keys
}

/// Keys for transport(5): never the bare user, parents as `.parent`
/// unless `transport_maps` is in `parent_domain_matches_subdomains`.
pub fn transport_keys(addr: &str, delimiters: &str, parent_matches: bool) -> Vec<Key> {
    let (local, domain) = split_address(addr);
    let (user, ext) = split_extension(local, delimiters);
    let mut keys = vec![Key::whole(addr.to_string())];
    if let Some(d) = domain {
        if ext.is_some() {
            keys.push(Key::partial(format!("{user}@{d}")));
        }
        keys.push(Key::partial(d.to_string()));
        parent_keys(d, parent_matches, &mut keys);
    }
    keys.push(Key::partial("*".to_string()));
    keys
}

/// Keys for aliases(5): the local part only.
pub fn alias_keys(local: &str, delimiters: &str) -> Vec<Key> {
    let (user, ext) = split_extension(local, delimiters);
    let mut keys = vec![Key::whole(local.to_string())];
    if ext.is_some() {
        keys.push(Key::partial(user.to_string()));
    }
    keys
}

/// A parameter's list of tables (`virtual_alias_maps = hash:a, regexp:b`).
pub struct Maps {
    pub parameter: String,
    pub tables: Vec<Box<dyn Table>>,
}

impl Maps {
    /// Open every `type:name` of `value` (commas and/or whitespace,
    /// `{ }` groups kept whole).
    pub fn open(parameter: &str, value: &str, opts: &OpenOptions) -> Result<Maps, TableError> {
        let tables = split_list(value)
            .into_iter()
            .map(|spec| {
                open(spec, opts).map_err(|e| match e {
                    TableError::Config(m) => TableError::Config(format!("{parameter}: {m}")),
                    t => t,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Maps {
            parameter: parameter.to_string(),
            tables,
        })
    }

    /// The tables of a parameter (`name` in `params`); `None` when it is
    /// empty. Errors name the parameter.
    pub fn from_param(
        params: &crate::config::params::Params,
        name: &str,
    ) -> Result<Option<Maps>, String> {
        let v = params.value(name).map_err(|e| format!("{name}: {e}"))?;
        if v.trim().is_empty() {
            return Ok(None);
        }
        Maps::open(name, &v, &OpenOptions::default())
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The first hit, trying each key in every table before the next key.
    /// Returns the index of the key that matched and the value.
    pub fn find_first(&self, keys: &[Key]) -> Result<Option<(usize, String)>, TableError> {
        for (i, k) in keys.iter().enumerate() {
            for t in &self.tables {
                if t.is_pattern() && !k.whole {
                    continue;
                }
                if let Some(v) = t.lookup(&k.text)? {
                    return Ok(Some((i, v)));
                }
            }
        }
        Ok(None)
    }

    /// True when a table file changed since it was opened.
    pub fn changed(&self) -> bool {
        self.tables.iter().any(|t| t.changed())
    }

    /// True when a lookup may block ([`Table::may_block`]).
    pub fn may_block(&self) -> bool {
        self.tables.iter().any(|t| t.may_block())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(keys: &[Key]) -> Vec<&str> {
        keys.iter().map(|k| k.text.as_str()).collect()
    }

    #[test]
    fn extension_split() {
        assert_eq!(split_extension("user+ext", "+"), ("user", Some("+ext")));
        assert_eq!(split_extension("user-a+b", "+-"), ("user", Some("-a+b")));
        assert_eq!(split_extension("+user", "+"), ("+user", None));
        assert_eq!(split_extension("user", "+"), ("user", None));
        assert_eq!(split_extension("user+ext", ""), ("user+ext", None));
        // Names Postfix never splits.
        assert_eq!(
            split_extension("double-bounce", "-"),
            ("double-bounce", None)
        );
        assert_eq!(
            split_extension("MAILER-DAEMON", "-"),
            ("MAILER-DAEMON", None)
        );
        assert_eq!(split_extension("owner-list", "-"), ("owner-list", None));
        assert_eq!(split_extension("list-request", "-"), ("list-request", None));
        assert_eq!(split_extension("user-ext", "-"), ("user", Some("-ext")));
        // owner-/-request only matter when `-` is a delimiter.
        assert_eq!(
            split_extension("owner-list+x", "+"),
            ("owner-list", Some("+x"))
        );
        // ... and while owner_request_special is on; the reserved names
        // stay whole either way.
        assert_eq!(
            split_extension_with("owner-list", "-", false),
            ("owner", Some("-list"))
        );
        assert_eq!(
            split_extension_with("list-request", "-", false),
            ("list", Some("-request"))
        );
        assert_eq!(
            split_extension_with("MAILER-DAEMON", "-", false),
            ("MAILER-DAEMON", None)
        );
    }

    #[test]
    fn virtual_order() {
        assert_eq!(
            texts(&address_keys("user+ext@example.com", "+", true)),
            vec![
                "user+ext@example.com",
                "user@example.com",
                "user+ext",
                "user",
                "@example.com"
            ]
        );
        assert_eq!(
            texts(&address_keys("user@example.com", "+", false)),
            vec!["user@example.com", "@example.com"]
        );
    }

    #[test]
    fn access_orders() {
        assert_eq!(
            texts(&access_address_keys("u+x@a.example.com", "+", true)),
            vec![
                "u+x@a.example.com",
                "u@a.example.com",
                "a.example.com",
                "example.com",
                "com",
                "u+x@",
                "u@"
            ]
        );
        assert_eq!(
            texts(&access_address_keys("u@a.example.com", "+", false)),
            vec![
                "u@a.example.com",
                "a.example.com",
                ".example.com",
                ".com",
                "u@"
            ]
        );
        assert_eq!(
            texts(&access_host_keys(
                Some("mx.example.com"),
                Some("192.0.2.1"),
                true
            )),
            vec![
                "mx.example.com",
                "example.com",
                "com",
                "192.0.2.1",
                "192.0.2",
                "192.0",
                "192"
            ]
        );
        assert_eq!(
            texts(&access_host_keys(
                Some("unknown"),
                Some("2001:db8::1"),
                true
            )),
            vec!["2001:db8::1", "2001:db8:", "2001:db8", "2001"]
        );
    }

    #[test]
    fn transport_and_alias_orders() {
        assert_eq!(
            texts(&transport_keys("u+x@a.example.com", "+", false)),
            vec![
                "u+x@a.example.com",
                "u@a.example.com",
                "a.example.com",
                ".example.com",
                ".com",
                "*"
            ]
        );
        assert_eq!(texts(&alias_keys("u+x", "+")), vec!["u+x", "u"]);
    }

    #[test]
    fn first_key_across_all_tables_wins() {
        let maps = Maps::open(
            "virtual_alias_maps",
            "inline:{ @example.com=catchall }, inline:{ user@example.com=exact }",
            &OpenOptions::default(),
        )
        .unwrap();
        let keys = address_keys("user+x@example.com", "+", false);
        assert_eq!(
            maps.find_first(&keys).unwrap(),
            Some((1, "exact".to_string()))
        );
        let keys = address_keys("other@example.com", "+", false);
        assert_eq!(
            maps.find_first(&keys).unwrap(),
            Some((1, "catchall".to_string()))
        );
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = Maps::open("transport_maps", "bogus:/x", &OpenOptions::default())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("transport_maps: unsupported dictionary type: bogus"),
            "{e}"
        );
    }
}
