//! `smtp_generic_maps` / `lmtp_generic_maps` (generic(5)): the address
//! mapping that applies when mail goes out, the opposite of canonical(5).
//! It rewrites the envelope sender and recipients sent in MAIL FROM and
//! RCPT TO and the addresses of the primary header block's address
//! headers; only the copy that goes out changes, the queue file stays as
//! it is.
//!
//! Lookups follow Postfix's one-to-one mapping (`smtp_map11`): the keys
//! of [`libmail::table::search::address_keys`] (`user+ext@domain`,
//! `user@domain`, then `user+ext` and `user` for this machine's domains
//! (`$myorigin`, `$mydestination`), then `@domain`), each key in every
//! table before the next; pattern tables see the whole address only. A
//! result `@otherdomain` keeps the local part; an unmatched address
//! extension is carried over when `propagate_unmatched_extensions` names
//! `generic`; the result is put in canonical form in the local rewrite
//! context (`append_at_myorigin`, `append_dot_mydomain`). A result with
//! several addresses uses the first, with Postfix's warning. A lookup
//! error is an error for the caller (Postfix's smtp gives up on the
//! delivery; Facteur defers it).

use libmail::address::domains::DomainList;
use libmail::address::rewrite::{Context, Rewriter};
use libmail::config::params::{split_list, Params};
use libmail::table::search::Maps;
use libmail::table::TableError;

use crate::cleanup::addresses::map_results;

/// The mapping and what its keys and results depend on.
pub struct Generic {
    maps: Maps,
    rewriter: Rewriter,
    myorigin: String,
    local_domains: Option<DomainList>,
    delimiters: String,
    propagate: bool,
}

impl Generic {
    /// `X_generic_maps` of the agent (`smtp` or `lmtp`); `None` when empty.
    pub fn load(p: &Params, x: &str) -> Result<Option<Generic>, String> {
        let name = format!("{x}_generic_maps");
        let Some(maps) = Maps::from_param(p, &name)? else {
            return Ok(None);
        };
        let rewriter = Rewriter::new(p);
        let propagate = split_list(
            &p.value("propagate_unmatched_extensions")
                .unwrap_or_default(),
        )
        .iter()
        .any(|w| w.eq_ignore_ascii_case("generic"));
        Ok(Some(Generic {
            maps,
            myorigin: rewriter.myorigin().to_string(),
            rewriter,
            local_domains: Some(
                DomainList::from_param(p, "mydestination").map_err(|e| e.to_string())?,
            ),
            delimiters: p.value("recipient_delimiter").unwrap_or_default(),
            propagate,
        }))
    }

    /// The parameter the tables come from (for messages).
    pub fn parameter(&self) -> &str {
        &self.maps.parameter
    }

    fn is_local_domain(&self, domain: &str) -> bool {
        domain.eq_ignore_ascii_case(&self.myorigin)
            || self
                .local_domains
                .as_ref()
                .is_some_and(|l| l.matches(domain).unwrap_or(false))
    }

    /// The address to send instead of `addr` (both in internal form:
    /// local parts unquoted), or `None` when no table has it. The null
    /// address is never looked up.
    pub fn map(&self, addr: &str) -> Result<Option<String>, TableError> {
        if addr.is_empty() || addr.len() > libmail::address::MAX_ADDRESS_LEN {
            return Ok(None);
        }
        let (local, domain) = libmail::address::split(addr);
        let local_domain = domain.is_none_or(|d| self.is_local_domain(d));
        let Some(results) = map_results(
            &self.maps,
            addr,
            local,
            &self.delimiters,
            local_domain,
            self.propagate,
        )?
        else {
            return Ok(None);
        };
        if results.len() > 1 {
            libmail::warning!(
                "multi-valued {} result for {}",
                self.maps.parameter,
                libmail::address::external(addr)
            );
        }
        let Some(result) = results.into_iter().next() else {
            return Ok(None);
        };
        let result = libmail::address::internal(&result);
        Ok(Some(self.rewriter.rewrite(Context::Local, &result)))
    }
}

/// Header names whose addresses generic(5) rewrites: Postfix's sender
/// and recipient headers (`header_opts.c`: HDR_OPT_SENDER, HDR_OPT_RECIP).
const ADDRESS_HEADERS: [&str; 18] = [
    "apparently-to",
    "bcc",
    "cc",
    "disposition-notification-to",
    "errors-to",
    "from",
    "mail-followup-to",
    "reply-to",
    "resent-bcc",
    "resent-cc",
    "resent-from",
    "resent-reply-to",
    "resent-sender",
    "resent-to",
    "return-path",
    "return-receipt-to",
    "sender",
    "to",
];

/// Whether a header (by name) carries addresses generic(5) rewrites.
pub fn is_address_header(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    ADDRESS_HEADERS.contains(&n.as_str())
}

/// Longest line a rewritten header is folded to (Postfix refolds a
/// rewritten address list at about this width).
const FOLD_WIDTH: usize = 78;

/// A rewritten header `Name: value` as physical lines: folded after the
/// commas between list items (outside quotes, comments and angle
/// brackets), continuation lines starting with a TAB. A list item longer
/// than the width stays whole.
pub fn fold(name: &str, value: &str) -> Vec<String> {
    let mut items: Vec<&str> = Vec::new();
    let b = value.as_bytes();
    let (mut start, mut quote, mut depth, mut angle, mut i) = (0, false, 0usize, false, 0);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' => quote = !quote,
            b'(' if !quote => depth += 1,
            b')' if !quote => depth = depth.saturating_sub(1),
            b'<' if !quote && depth == 0 => angle = true,
            b'>' if !quote && depth == 0 => angle = false,
            b',' if !quote && depth == 0 && !angle => {
                items.push(&value[start..=i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < value.len() {
        items.push(&value[start..]);
    }
    let mut lines = vec![format!("{name}:")];
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let cur = lines.last_mut().expect("one line at least");
        if cur.ends_with(':') || cur.len() + 1 + item.len() <= FOLD_WIDTH {
            cur.push(' ');
            cur.push_str(item);
        } else {
            lines.push(format!("\t{item}"));
        }
    }
    lines
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use libmail::config::maincf::MainCf;
    use libmail::config::params::Params;

    pub fn params(text: &str) -> Params {
        let (m, _) = MainCf::parse(text, "/x/main.cf");
        Params::new("/x", m)
    }

    fn generic(extra: &str) -> Generic {
        let text = format!(
            "myhostname = mx.example.test\nmydomain = example.test\nmyorigin = example.test\n\
             mydestination = $myhostname, localhost\nrecipient_delimiter = +\n{extra}\n"
        );
        let p = params(&text);
        Generic::load(&p, "smtp").unwrap().expect("maps configured")
    }

    #[test]
    fn postfix_key_order_and_results() {
        let g = generic(
            "smtp_generic_maps = inline:{ {his@localdomain.local=hisaccount@isp.example}, \
             {@localdomain.local=hisaccount+local@isp.example}, {root=admin@isp.example}, \
             {@old.example=@new.example}, {multi@x.example=a@y.example,b@y.example} }",
        );
        assert_eq!(
            g.map("his@localdomain.local").unwrap().as_deref(),
            Some("hisaccount@isp.example")
        );
        assert_eq!(
            g.map("her@localdomain.local").unwrap().as_deref(),
            Some("hisaccount+local@isp.example")
        );
        // Bare user keys only for this machine's domains.
        assert_eq!(
            g.map("root@mx.example.test").unwrap().as_deref(),
            Some("admin@isp.example")
        );
        assert_eq!(g.map("root@elsewhere.example").unwrap(), None);
        // @domain results keep the local part, extension included.
        assert_eq!(
            g.map("joe+x@old.example").unwrap().as_deref(),
            Some("joe+x@new.example")
        );
        assert_eq!(
            g.map("multi@x.example").unwrap().as_deref(),
            Some("a@y.example")
        );
        assert_eq!(g.map("").unwrap(), None);
        assert_eq!(g.map("nobody@nowhere.example").unwrap(), None);
    }

    #[test]
    fn extensions_propagate_only_when_asked() {
        let maps = "smtp_generic_maps = inline:{ {joe@example.test=joseph@isp.example}, {bare=@isp.example} }";
        let g = generic(maps);
        assert_eq!(
            g.map("joe+list@example.test").unwrap().as_deref(),
            Some("joseph@isp.example")
        );
        let g = generic(&format!(
            "{maps}\npropagate_unmatched_extensions = canonical, generic"
        ));
        assert_eq!(
            g.map("joe+list@example.test").unwrap().as_deref(),
            Some("joseph+list@isp.example")
        );
        // An unqualified result is completed with $myorigin.
        let g = generic("smtp_generic_maps = inline:{ {a@b.example=someone} }");
        assert_eq!(
            g.map("a@b.example").unwrap().as_deref(),
            Some("someone@example.test")
        );
    }

    #[test]
    fn address_headers_are_postfix_s() {
        for h in [
            "From",
            "to",
            "Resent-Reply-To",
            "Disposition-Notification-To",
            " CC ",
        ] {
            assert!(is_address_header(h), "{h}");
        }
        for h in ["Subject", "Received", "Message-Id", "X-From"] {
            assert!(!is_address_header(h), "{h}");
        }
    }

    #[test]
    fn rewritten_headers_are_folded_between_items() {
        assert_eq!(fold("To", "a@b"), ["To: a@b"]);
        let v = "\"Doe, John\" <john@isp.example>, (a, comment) jane@isp.example, group: x@isp.example, y@isp.example;, zz@isp.example";
        let lines = fold("Cc", v);
        assert!(lines.iter().all(|l| l.len() <= FOLD_WIDTH), "{lines:?}");
        // Filled greedily; a comma inside quotes or comments is no break.
        assert_eq!(
            lines[0],
            "Cc: \"Doe, John\" <john@isp.example>, (a, comment) jane@isp.example,"
        );
        assert!(lines.len() > 1, "{lines:?}");
        assert!(lines[1..].iter().all(|l| l.starts_with('\t')));
        let joined: String = lines
            .iter()
            .map(|l| l.trim_start_matches('\t'))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(joined, format!("Cc: {v}"));
        // One item longer than the width stays on its line.
        let long = format!("{}@x.example", "a".repeat(100));
        assert_eq!(fold("To", &long), [format!("To: {long}")]);
    }
}
