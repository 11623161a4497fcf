//! Syntax checks the restrictions make, with Postfix's rules
//! (valid_hostname, valid_hostaddr, valid_mailhost_addr, dsn_valid,
//! dsn_split, is_header), so `reject_invalid_helo_hostname` and friends
//! reject exactly what Postfix rejects.

/// Longest host name (Postfix's VALID_HOSTNAME_LEN).
const MAX_HOSTNAME: usize = 255;
/// Longest label (VALID_LABEL_LEN).
const MAX_LABEL: usize = 63;

/// A host name: letters, digits, `_` and `-` in dot-separated labels, no
/// label starting or ending with `-`, no empty label, not all-numeric.
pub fn valid_hostname(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_HOSTNAME {
        return false;
    }
    let b = name.as_bytes();
    let mut label = 0usize;
    let mut non_numeric = false;
    for (i, &c) in b.iter().enumerate() {
        let next = b.get(i + 1).copied();
        if c.is_ascii_alphanumeric() || c == b'_' {
            label += 1;
            if label > MAX_LABEL {
                return false;
            }
            if !c.is_ascii_digit() {
                non_numeric = true;
            }
        } else if c == b'.' {
            if label == 0 || next.is_none() {
                return false;
            }
            label = 0;
        } else if c == b'-' {
            non_numeric = true;
            label += 1;
            if label == 1 || next.is_none() || next == Some(b'.') {
                return false;
            }
        } else {
            return false;
        }
    }
    non_numeric
}

/// A host name that may be non-ASCII only when the client asked for
/// SMTPUTF8 (Postfix's valid_utf8_hostname without IDNA conversion: a
/// non-ASCII name is checked label by label for the same structure).
pub fn valid_utf8_hostname(smtputf8: bool, name: &str) -> bool {
    if name.is_ascii() {
        return valid_hostname(name);
    }
    if !smtputf8 {
        return false;
    }
    // Non-ASCII characters count as letters.
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii() { c } else { 'x' })
        .collect();
    valid_hostname(&ascii)
}

/// Four decimal octets, each at most 255 (`0.0.0.0` allowed, `0.1.2.3`
/// not), as valid_ipv4_hostaddr.
pub fn valid_ipv4_hostaddr(addr: &str) -> bool {
    if addr.is_empty() {
        return false;
    }
    let b = addr.as_bytes();
    let mut in_byte = false;
    let mut count = 0;
    let mut val: u32 = 0;
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            if !in_byte {
                in_byte = true;
                val = 0;
                count += 1;
            }
            val = val * 10 + u32::from(c - b'0');
            if val > 255 {
                return false;
            }
        } else if c == b'.' {
            if !in_byte || i + 1 == b.len() {
                return false;
            }
            if count == 1 && val == 0 && addr.bytes().any(|x| x != b'0' && x != b'.') {
                return false;
            }
            in_byte = false;
        } else {
            return false;
        }
    }
    count == 4
}

/// An IPv6 address in text form (no brackets, no `IPv6:` prefix).
pub fn valid_ipv6_hostaddr(addr: &str) -> bool {
    addr.contains(':') && addr.parse::<std::net::Ipv6Addr>().is_ok()
}

/// An address in text form: IPv6 when it has a `:`, else IPv4.
pub fn valid_hostaddr(addr: &str) -> bool {
    if addr.contains(':') {
        valid_ipv6_hostaddr(addr)
    } else {
        valid_ipv4_hostaddr(addr)
    }
}

/// The inside of an address literal: `IPv6:...` or an IPv4 address.
pub fn valid_mailhost_addr(addr: &str) -> bool {
    match addr.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPv6:") => valid_ipv6_hostaddr(&addr[5..]),
        _ => valid_ipv4_hostaddr(addr),
    }
}

/// A name without one trailing dot (but `x..` keeps its dots).
pub fn strip_one_dot(name: &str) -> &str {
    let b = name.as_bytes();
    if b.len() > 1 && b[b.len() - 1] == b'.' && b[b.len() - 2] != b'.' {
        &name[..name.len() - 1]
    } else {
        name
    }
}

/// The length of an RFC 3463 status code at the start of `text`, followed
/// by a space or the end (Postfix's dsn_valid); 0 when there is none.
pub fn dsn_len(text: &str) -> usize {
    let b = text.as_bytes();
    if !matches!(b.first(), Some(b'2' | b'4' | b'5')) || b.get(1) != Some(&b'.') {
        return 0;
    }
    let mut i = 2;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == start || i - start > 3 || b.get(i) != Some(&b'.') {
        return 0;
    }
    i += 1;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i == start || i - start > 3 || !(i == b.len() || b[i] == b' ') {
        return 0;
    }
    i
}

/// Splits an optional status code off `text` (Postfix's dsn_split): the
/// code (or `default`), and the rest without leading whitespace.
pub fn dsn_split<'a>(default: &'a str, text: &'a str) -> (&'a str, &'a str) {
    let t = text.trim_start();
    let n = dsn_len(t);
    if n > 0 {
        (&t[..n], t[n..].trim_start())
    } else {
        (default, t)
    }
}

/// Postfix's smtpd_dsn_fix: an address status (`X.1.Y`) is made to fit
/// what is rejected (a recipient code while rejecting a sender becomes the
/// sender code, and so on; a non-address gets `X.0.0`). The class digit
/// is left to the caller. The sender column is Postfix 3.7's, as observed
/// (`550 5.1.1 text` in a sender access table is sent as 5.1.7).
pub fn dsn_fix(status: &str, is_sender: bool, is_recipient: bool) -> String {
    let b = status.as_bytes();
    if b.len() < 5 || !b[0].is_ascii_digit() || &status[1..4] != ".1." {
        return status.to_string();
    }
    const MAP: &[(&str, &str, &str)] = &[
        ("1", "4.1.7", "4.1.1"),
        ("2", "4.1.8", "4.1.2"),
        ("3", "4.1.7", "4.1.3"),
        ("4", "4.1.7", "4.1.4"),
        ("5", "4.1.0", "4.1.5"),
        ("6", "4.1.7", "4.1.6"),
        ("7", "4.1.7", "4.1.3"),
        ("8", "4.1.8", "4.1.2"),
    ];
    let micro = &status[4..];
    let entry = MAP.iter().find(|(m, _, _)| *m == micro);
    let fixed = if is_sender {
        entry.map_or("4.1.0", |e| e.1)
    } else if is_recipient {
        entry.map_or("4.1.0", |e| e.2)
    } else {
        "4.0.0"
    };
    format!("{}{}", &status[..1], &fixed[1..])
}

/// Whether `text` starts with a header label and a colon (`Name: value`;
/// whitespace before the colon allowed, as Postfix's is_header).
pub fn is_header(text: &str) -> bool {
    let mut len = 0;
    let mut after_space = false;
    for c in text.bytes() {
        match c {
            b':' => return len > 0,
            b' ' | b'\t' => {
                if len == 0 {
                    return false;
                }
                after_space = true;
            }
            c if c.is_ascii() && !c.is_ascii_control() => {
                if after_space {
                    return false;
                }
                len += 1;
            }
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["mx.example.com", "a", "a-b.c", "x_y.example", "1a.2b"] {
            assert!(valid_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            "1.2.3.4",
            "123",
            "-a.example",
            "a-.example",
            "a..b",
            ".a",
            "a.",
            "a b",
            "a@b",
        ] {
            assert!(!valid_hostname(bad), "{bad}");
        }
        assert!(!valid_hostname(&"a".repeat(64)));
        assert!(valid_hostname(&"a".repeat(63)));
        assert!(!valid_utf8_hostname(false, "bücher.example"));
        assert!(valid_utf8_hostname(true, "bücher.example"));
    }

    #[test]
    fn addresses() {
        assert!(valid_ipv4_hostaddr("192.0.2.1"));
        assert!(valid_ipv4_hostaddr("0.0.0.0"));
        assert!(!valid_ipv4_hostaddr("0.1.2.3"));
        assert!(!valid_ipv4_hostaddr("1.2.3"));
        assert!(!valid_ipv4_hostaddr("1.2.3.256"));
        assert!(!valid_ipv4_hostaddr("1.2.3.4."));
        assert!(valid_mailhost_addr("IPv6:2001:db8::1"));
        assert!(!valid_mailhost_addr("2001:db8::1"));
        assert!(valid_hostaddr("::1"));
    }

    #[test]
    fn status_codes() {
        assert_eq!(dsn_len("5.7.1 go away"), 5);
        assert_eq!(dsn_len("5.7.1"), 5);
        assert_eq!(dsn_len("5.7.1x"), 0);
        assert_eq!(dsn_len("3.7.1 x"), 0);
        assert_eq!(
            dsn_split("5.7.1", "4.2.0  try later"),
            ("4.2.0", "try later")
        );
        assert_eq!(dsn_split("5.7.1", "no code"), ("5.7.1", "no code"));
        assert_eq!(dsn_fix("5.1.1", true, false), "5.1.7");
        assert_eq!(dsn_fix("5.1.0", true, false), "5.1.0");
        assert_eq!(dsn_fix("5.1.9", false, true), "5.1.0");
        assert_eq!(dsn_fix("5.1.8", false, true), "5.1.2");
        assert_eq!(dsn_fix("4.1.1", false, false), "4.0.0");
        assert_eq!(dsn_fix("5.7.1", true, false), "5.7.1");
    }

    #[test]
    fn headers() {
        assert!(is_header("X-Spam: yes"));
        assert!(is_header("X-Spam : yes"));
        assert!(!is_header("no colon here"));
        assert!(!is_header(": empty name"));
        assert!(!is_header("two words: x"));
    }
}
