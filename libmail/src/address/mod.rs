//! Mail addresses: splitting `local@domain`, quoting local parts, and the
//! two halves of Postfix's trivial-rewrite: [`rewrite`] (make an address
//! canonical: `user` → `user@$myorigin`) and [`resolve`] (which transport
//! and next hop deliver it; address classes).
//!
//! Addresses are kept in the *external* form everywhere Facteur stores or
//! logs them (`"john doe"@example.com`, as on the wire); lookups use the
//! *internal* form (quotes removed) as Postfix's tables expect.

pub mod domains;
pub mod networks;
pub mod resolve;
pub mod rewrite;

/// Longest address Facteur accepts anywhere (RFC 5321 allows 256 octets
/// for a path; Postfix accepts longer; we bound it).
pub const MAX_ADDRESS_LEN: usize = 2048;

/// Splits at the last `@` outside quotes: `("user", Some("example.com"))`.
/// An address without `@` has no domain.
pub fn split(addr: &str) -> (&str, Option<&str>) {
    let mut in_quote = false;
    let mut escaped = false;
    let mut at = None;
    for (i, c) in addr.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => in_quote = !in_quote,
            '@' if !in_quote => at = Some(i),
            _ => {}
        }
    }
    match at {
        Some(i) => (&addr[..i], Some(&addr[i + 1..])),
        None => (addr, None),
    }
}

/// The domain of an address, lower-cased; empty when there is none.
pub fn domain_of(addr: &str) -> String {
    split(addr).1.unwrap_or("").to_ascii_lowercase()
}

/// The local part in internal form: surrounding quotes and backslash
/// escapes removed (`"john doe"` → `john doe`).
pub fn unquote_local(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    let mut escaped = false;
    for c in local.chars() {
        if escaped {
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => {}
            _ => out.push(c),
        }
    }
    out
}

/// An address in internal form: `"john doe"@x` → `john doe@x`.
pub fn internal(addr: &str) -> String {
    match split(addr) {
        (l, Some(d)) => format!("{}@{}", unquote_local(l), d),
        (l, None) => unquote_local(l),
    }
}

fn needs_quotes(local: &str) -> bool {
    if local.is_empty() {
        return false;
    }
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let mut prev_dot = true;
    for c in local.chars() {
        if c == '.' {
            if prev_dot {
                return true;
            }
            prev_dot = true;
        } else if atext(c) {
            prev_dot = false;
        } else {
            return true;
        }
    }
    prev_dot
}

/// An address in external form: quotes the local part when RFC 5321
/// requires it (`john doe@x` → `"john doe"@x`).
pub fn external(addr: &str) -> String {
    let (l, d) = match addr.rfind('@') {
        Some(i) => (&addr[..i], Some(&addr[i + 1..])),
        None => (addr, None),
    };
    let local = if needs_quotes(l) {
        let mut q = String::from("\"");
        for c in l.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    } else {
        l.to_string()
    };
    match d {
        Some(d) => format!("{local}@{d}"),
        None => local,
    }
}

/// Splits `user+ext` at the first of the `recipient_delimiter`
/// characters: `("user", Some("ext"))`, without the delimiter (the rule
/// itself lives in [`crate::table::search::split_extension`]).
pub fn split_extension<'a>(local: &'a str, delimiters: &str) -> (&'a str, Option<&'a str>) {
    let (user, ext) = crate::table::search::split_extension(local, delimiters);
    (
        user,
        ext.map(|e| &e[e.chars().next().map_or(0, char::len_utf8)..]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_quotes() {
        assert_eq!(split("a@b"), ("a", Some("b")));
        assert_eq!(split("\"a@x\"@b"), ("\"a@x\"", Some("b")));
        assert_eq!(split("user"), ("user", None));
        assert_eq!(split("a@b@c"), ("a@b", Some("c")));
        assert_eq!(domain_of("X@Example.COM"), "example.com");
    }

    #[test]
    fn internal_and_external_forms() {
        assert_eq!(internal("\"john doe\"@x"), "john doe@x");
        assert_eq!(external("john doe@x"), "\"john doe\"@x");
        assert_eq!(external("john.doe@x"), "john.doe@x");
        assert_eq!(external(".a@x"), "\".a\"@x");
        assert_eq!(external("a\"b@x"), "\"a\\\"b\"@x");
        assert_eq!(external("@x"), "@x");
    }

    #[test]
    fn extensions() {
        assert_eq!(split_extension("bob+lists", "+"), ("bob", Some("lists")));
        assert_eq!(split_extension("bob-x+y", "+-"), ("bob", Some("x+y")));
        assert_eq!(split_extension("+x", "+"), ("+x", None));
        assert_eq!(split_extension("bob", ""), ("bob", None));
    }
}
