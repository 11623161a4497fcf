//! Address rewriting in cleanup, in Postfix's order (cleanup_addr.c,
//! cleanup_map11.c, cleanup_map1n.c, cleanup_masq.c):
//!
//! 1. canonical form through the [`Rewriter`] in the message's rewrite
//!    context (`user` → `user@$myorigin` for local submissions);
//! 2. `sender_canonical_maps` / `recipient_canonical_maps`, then
//!    `canonical_maps`, each only for the address classes its
//!    `*_classes` parameter names;
//! 3. `masquerade_domains` (with `masquerade_exceptions`) for the
//!    classes in `masquerade_classes`;
//! 4. for envelope recipients only, `virtual_alias_maps` expansion:
//!    recursive, bounded by `virtual_alias_recursion_limit` (nesting) and
//!    `virtual_alias_expansion_limit` (result size). An address that maps
//!    to itself is kept; a loop stops where it closes. Past a limit the
//!    message is deferred, as Postfix does.
//!
//! Table keys come from `libmail::table::search::address_keys` (the
//! `user` forms only for this machine's domains); results follow
//! Postfix's `mail_addr_map`: `@domain` results keep the local part,
//! unmatched address extensions are propagated when
//! `propagate_unmatched_extensions` says so, unqualified results get
//! `@$myorigin`.

use libmail::address::domains::DomainList;
use libmail::address::rewrite::{Context, Rewriter};
use libmail::table::search::{address_keys, split_extension, Maps};
use libmail::table::TableError;

/// The address classes of `canonical_classes` and `masquerade_classes`.
pub const ENV_SENDER: u8 = 1;
pub const ENV_RECIPIENT: u8 = 2;
pub const HDR_SENDER: u8 = 4;
pub const HDR_RECIPIENT: u8 = 8;

/// Parses a class list (`envelope_sender, header_recipient`).
pub fn classes(list: &str) -> u8 {
    libmail::config::params::split_list(list)
        .iter()
        .map(|c| match c.to_ascii_lowercase().as_str() {
            "envelope_sender" => ENV_SENDER,
            "envelope_recipient" => ENV_RECIPIENT,
            "header_sender" => HDR_SENDER,
            "header_recipient" => HDR_RECIPIENT,
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// Most successive canonical lookups for one address (Postfix's
/// cleanup_map11 gives up after the same number).
const MAX_CANONICAL_RECURSION: usize = 10;

/// Why an address could not be processed: the message is deferred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defer(pub String);

impl From<TableError> for Defer {
    fn from(e: TableError) -> Self {
        Defer(format!("table lookup problem: {e}"))
    }
}

/// Everything address rewriting needs, read once at start.
pub struct AddressRules {
    pub rewriter: Rewriter,
    pub myorigin: String,
    pub local_domains: Option<DomainList>,
    pub delimiters: String,
    pub propagate_canonical: bool,
    pub propagate_virtual: bool,
    pub canonical: Option<Maps>,
    pub canonical_classes: u8,
    pub sender_canonical: Option<Maps>,
    pub sender_canonical_classes: u8,
    pub recipient_canonical: Option<Maps>,
    pub recipient_canonical_classes: u8,
    pub masq_domains: Vec<String>,
    pub masq_exceptions: Vec<String>,
    pub masq_classes: u8,
    pub virtual_alias: Option<Maps>,
    pub recursion_limit: usize,
    pub expansion_limit: usize,
}

impl AddressRules {
    fn is_local_domain(&self, domain: &str) -> bool {
        if domain.eq_ignore_ascii_case(&self.myorigin) {
            return true;
        }
        match &self.local_domains {
            Some(l) => l.matches(domain).unwrap_or(false),
            None => false,
        }
    }

    /// One mail_addr_map lookup: the first address of the result, or
    /// all of them (virtual).
    fn map(&self, maps: &Maps, addr: &str, propagate: bool) -> Result<Option<Vec<String>>, Defer> {
        let internal = libmail::address::internal(addr);
        let domain = libmail::address::split(&internal).1;
        let local_domain = domain.is_none_or(|d| self.is_local_domain(d));
        let Some(results) = map_results(
            maps,
            &internal,
            libmail::address::split(addr).0,
            &self.delimiters,
            local_domain,
            propagate,
        )?
        else {
            return Ok(None);
        };
        Ok(Some(
            results
                .into_iter()
                .map(|r| {
                    if !r.contains('@') && !self.myorigin.is_empty() {
                        format!("{r}@{}", self.myorigin)
                    } else {
                        r
                    }
                })
                .collect(),
        ))
    }

    /// cleanup_map11: the canonical mapping of one address, followed up
    /// to a fixed depth.
    fn map11(&self, maps: &Maps, addr: &str) -> Result<String, Defer> {
        let mut cur = addr.to_string();
        for _ in 0..MAX_CANONICAL_RECURSION {
            match self.map(maps, &cur, self.propagate_canonical)? {
                Some(v) => match v.into_iter().next() {
                    Some(n) if n != cur => cur = n,
                    _ => return Ok(cur),
                },
                None => return Ok(cur),
            }
        }
        libmail::warning!(
            "unreasonable {} map nesting for {addr} -- not rewritten further",
            maps.parameter
        );
        Ok(cur)
    }

    /// Canonical form in `ctx`, then the canonical maps and masquerading
    /// that apply to `class`.
    pub fn rewrite(&self, ctx: Context, addr: &str, class: u8) -> Result<String, Defer> {
        if addr.is_empty() {
            return Ok(String::new());
        }
        let mut a = self.rewriter.rewrite(ctx, addr);
        let (specific, specific_classes) = if class & (ENV_SENDER | HDR_SENDER) != 0 {
            (&self.sender_canonical, self.sender_canonical_classes)
        } else {
            (&self.recipient_canonical, self.recipient_canonical_classes)
        };
        if let Some(m) = specific.as_ref().filter(|_| specific_classes & class != 0) {
            a = self.map11(m, &a)?;
        }
        if let Some(m) = self
            .canonical
            .as_ref()
            .filter(|_| self.canonical_classes & class != 0)
        {
            a = self.map11(m, &a)?;
        }
        if self.masq_classes & class != 0 {
            a = self.masquerade(&a);
        }
        Ok(a)
    }

    /// [`rewrite`](Self::rewrite), or only the canonical form when
    /// `mapped` is false (`receive_override_options =
    /// no_address_mappings`).
    pub fn rewrite_if(
        &self,
        ctx: Context,
        addr: &str,
        class: u8,
        mapped: bool,
    ) -> Result<String, Defer> {
        if mapped || addr.is_empty() {
            self.rewrite(ctx, addr, class)
        } else {
            Ok(self.rewriter.rewrite(ctx, addr))
        }
    }

    /// `user@host.example.com` → `user@example.com` for
    /// `masquerade_domains = example.com`; `!domain` entries stop it; the
    /// users in `masquerade_exceptions` are never masqueraded.
    pub fn masquerade(&self, addr: &str) -> String {
        if self.masq_domains.is_empty() {
            return addr.to_string();
        }
        let (local, Some(domain)) = libmail::address::split(addr) else {
            return addr.to_string();
        };
        let user = libmail::address::unquote_local(local).to_ascii_lowercase();
        if self
            .masq_exceptions
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&user))
        {
            return addr.to_string();
        }
        let dl = domain.to_ascii_lowercase();
        for m in &self.masq_domains {
            let (neg, m) = match m.strip_prefix('!') {
                Some(x) => (true, x),
                None => (false, m.as_str()),
            };
            let m = m.to_ascii_lowercase();
            if dl == m {
                return addr.to_string();
            }
            if dl.ends_with(&format!(".{m}")) {
                return if neg {
                    addr.to_string()
                } else {
                    format!("{local}@{m}")
                };
            }
        }
        addr.to_string()
    }

    /// virtual_alias_maps expansion of one recipient (cleanup_map1n).
    pub fn expand_virtual(&self, addr: &str) -> Result<Vec<String>, Defer> {
        let Some(maps) = &self.virtual_alias else {
            return Ok(vec![addr.to_string()]);
        };
        let mut list: Vec<String> = vec![addr.to_string()];
        let mut been_here: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut arg = 0;
        while arg < list.len() {
            if list.len() > self.expansion_limit {
                return Err(Defer(format!(
                    "unreasonable virtual_alias_maps map expansion size for {addr}"
                )));
            }
            let mut count = 0;
            loop {
                if !been_here.insert(list[arg].to_ascii_lowercase()) {
                    break;
                }
                if count >= self.recursion_limit {
                    return Err(Defer(format!(
                        "unreasonable virtual_alias_maps map nesting for {addr}"
                    )));
                }
                count += 1;
                let lhs = list[arg].clone();
                match self.map(maps, &lhs, self.propagate_virtual)? {
                    Some(results) if !results.is_empty() => {
                        for (i, r) in results.into_iter().enumerate() {
                            // An address may expand into itself once.
                            if r.eq_ignore_ascii_case(&lhs) {
                                been_here.insert(lhs.to_ascii_lowercase());
                            }
                            if i == 0 {
                                list[arg] = r;
                            } else {
                                if list.len() > self.expansion_limit {
                                    return Err(Defer(format!(
                                        "unreasonable virtual_alias_maps map expansion size for {addr}"
                                    )));
                                }
                                list.push(r);
                            }
                        }
                    }
                    _ => break,
                }
            }
            arg += 1;
        }
        Ok(list)
    }
}

/// One lookup of an address in a canonical(5), virtual(5) or generic(5)
/// table, with Postfix's key order (`key_addr`, internal form; its domain
/// `local_domain` or not): the results, each `@domain` result given the
/// local part `at_local`, and with `propagate` an address extension the
/// matching key did not carry added to each result. `None`: no match.
pub(crate) fn map_results(
    maps: &Maps,
    key_addr: &str,
    at_local: &str,
    delimiters: &str,
    local_domain: bool,
    propagate: bool,
) -> Result<Option<Vec<String>>, TableError> {
    let local = libmail::address::split(key_addr).0;
    let keys = address_keys(key_addr, delimiters, local_domain);
    let Some((ki, value)) = maps.find_first(&keys)? else {
        return Ok(None);
    };
    let (_, ext) = split_extension(local, delimiters);
    // The key dropped the extension when it does not start with the
    // whole local part (`user@domain`, `user`, `@domain`).
    let ext_unmatched = ext.is_some()
        && ki > 0
        && !keys[ki].text.starts_with(&format!("{local}@"))
        && keys[ki].text != local;
    Ok(Some(
        split_results(&value)
            .into_iter()
            .map(|item| {
                if let Some(d) = item.strip_prefix('@') {
                    format!("{at_local}@{d}")
                } else if propagate && ext_unmatched {
                    let e = ext.unwrap_or("");
                    match libmail::address::split(&item) {
                        (l, Some(d)) => format!("{l}{e}@{d}"),
                        (l, None) => format!("{l}{e}"),
                    }
                } else {
                    item
                }
            })
            .collect(),
    ))
}

/// A table result as a list of addresses: commas outside quotes and
/// angle brackets separate them; `<a@b>` loses its brackets.
pub fn split_results(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut in_angle = false;
    for c in value.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                cur.push(c);
            }
            '<' if !in_quote => in_angle = true,
            '>' if !in_quote => in_angle = false,
            ',' | ' ' | '\t' if !in_quote && !in_angle => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
        if out.len() >= 100_000 {
            break;
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use libmail::config::maincf::MainCf;
    use libmail::config::params::Params;
    use libmail::table::OpenOptions;

    pub fn rules(main: &str, virtual_map: &str, canonical: &str) -> AddressRules {
        let (m, _) = MainCf::parse(main, "/x/main.cf");
        let p = Params::new("/x", m);
        let open = |v: &str, name: &str| {
            if v.is_empty() {
                None
            } else {
                Some(Maps::open(name, v, &OpenOptions::default()).unwrap())
            }
        };
        AddressRules {
            rewriter: Rewriter::new(&p),
            myorigin: "example.com".into(),
            local_domains: Some(
                DomainList::new("mydestination", "example.com, localhost", false).unwrap(),
            ),
            delimiters: "+".into(),
            propagate_canonical: true,
            propagate_virtual: true,
            canonical: open(canonical, "canonical_maps"),
            canonical_classes: classes(
                "envelope_sender, envelope_recipient, header_sender, header_recipient",
            ),
            sender_canonical: None,
            sender_canonical_classes: classes("envelope_sender, header_sender"),
            recipient_canonical: None,
            recipient_canonical_classes: classes("envelope_recipient, header_recipient"),
            masq_domains: vec![],
            masq_exceptions: vec![],
            masq_classes: classes("envelope_sender, header_sender, header_recipient"),
            virtual_alias: open(virtual_map, "virtual_alias_maps"),
            recursion_limit: 1000,
            expansion_limit: 1000,
        }
    }

    fn inline(pairs: &str) -> String {
        format!("inline:{{ {pairs} }}")
    }

    const MAIN: &str = "myhostname = mx.example.com\nmyorigin = example.com\n";

    #[test]
    fn virtual_alias_expansion_recurses_and_keeps_self() {
        let r = rules(
            MAIN,
            &inline("{ a@example.com = b@example.com, c@example.com }, { b@example.com = d@x.org }, { c@example.com = c@example.com, e@y.org }"),
            "",
        );
        assert_eq!(
            r.expand_virtual("a@example.com").unwrap(),
            ["d@x.org", "c@example.com", "e@y.org"]
        );
        assert_eq!(r.expand_virtual("z@q.org").unwrap(), ["z@q.org"]);
    }

    #[test]
    fn virtual_alias_loops_stop() {
        let r = rules(
            MAIN,
            &inline("{ a@example.com = b@example.com }, { b@example.com = a@example.com }"),
            "",
        );
        assert_eq!(
            r.expand_virtual("a@example.com").unwrap(),
            ["a@example.com"]
        );
    }

    #[test]
    fn virtual_alias_limits_defer() {
        let mut r = rules(
            MAIN,
            &inline("{ a@example.com = b1@example.com }, { b1@example.com = b2@example.com }, { b2@example.com = b3@example.com }, { big@example.com = x1@q, x2@q, x3@q, x4@q }"),
            "",
        );
        r.recursion_limit = 2;
        assert!(r.expand_virtual("a@example.com").is_err());
        r.recursion_limit = 1000;
        r.expansion_limit = 3;
        assert!(r.expand_virtual("big@example.com").is_err());
        r.expansion_limit = 4;
        assert_eq!(r.expand_virtual("big@example.com").unwrap().len(), 4);
    }

    #[test]
    fn virtual_alias_extensions_and_domain_results() {
        let r = rules(
            MAIN,
            &inline("{ bob@example.com = robert@x.org }, { @other.org = @example.net }"),
            "",
        );
        assert_eq!(
            r.expand_virtual("bob+lists@example.com").unwrap(),
            ["robert+lists@x.org"]
        );
        assert_eq!(
            r.expand_virtual("zed@other.org").unwrap(),
            ["zed@example.net"]
        );
    }

    #[test]
    fn canonical_and_classes() {
        let r = rules(
            MAIN,
            "",
            &inline("{ joe@example.com = joe.bloggs@example.com }, { root = admin@example.com }"),
        );
        assert_eq!(
            r.rewrite(Context::Local, "joe", ENV_SENDER).unwrap(),
            "joe.bloggs@example.com"
        );
        // `user` keys only for local domains.
        assert_eq!(
            r.rewrite(Context::Local, "root", ENV_RECIPIENT).unwrap(),
            "admin@example.com"
        );
        assert_eq!(
            r.rewrite(Context::Local, "root@elsewhere.org", ENV_RECIPIENT)
                .unwrap(),
            "root@elsewhere.org"
        );
        let mut r2 = rules(
            MAIN,
            "",
            &inline("{ joe@example.com = joe.bloggs@example.com }"),
        );
        r2.canonical_classes = classes("envelope_recipient");
        assert_eq!(
            r2.rewrite(Context::Local, "joe", ENV_SENDER).unwrap(),
            "joe@example.com"
        );
        assert_eq!(r.rewrite(Context::Local, "", ENV_SENDER).unwrap(), "");
    }

    #[test]
    fn masquerading() {
        let mut r = rules(MAIN, "", "");
        r.masq_domains = vec!["!keep.example.com".into(), "example.com".into()];
        r.masq_exceptions = vec!["root".into()];
        assert_eq!(r.masquerade("a@host.example.com"), "a@example.com");
        assert_eq!(r.masquerade("a@example.com"), "a@example.com");
        assert_eq!(r.masquerade("a@keep.example.com"), "a@keep.example.com");
        assert_eq!(
            r.masquerade("root@host.example.com"),
            "root@host.example.com"
        );
        assert_eq!(r.masquerade("a@other.org"), "a@other.org");
        // Classes: envelope recipients are not masqueraded by default.
        assert_eq!(
            r.rewrite(Context::Local, "a@h.example.com", ENV_RECIPIENT)
                .unwrap(),
            "a@h.example.com"
        );
        assert_eq!(
            r.rewrite(Context::Local, "a@h.example.com", ENV_SENDER)
                .unwrap(),
            "a@example.com"
        );
    }

    #[test]
    fn results_are_split() {
        assert_eq!(split_results("a@b, <c@d>  e@f"), ["a@b", "c@d", "e@f"]);
        assert_eq!(split_results("\"x, y\"@z"), ["\"x, y\"@z"]);
    }
}
