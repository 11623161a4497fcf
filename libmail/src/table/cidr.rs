//! `cidr:` tables: an ordered list of networks matched against an IP
//! address key; the first rule that applies gives the result.
//!
//! # Syntax (cidr_table(5), as Postfix 3.7 reads it)
//!
//! Logical lines as in every Postfix table file (comments, blank lines,
//! continuation lines; see [`crate::config::lines`]). Per logical line:
//!
//! * `pattern result` — the result when the key is in `pattern`;
//! * `!pattern result` — the result when the key is NOT in `pattern`
//!   (Postfix 3.2);
//! * `if pattern` / `if !pattern` … `endif` — the rules between apply only
//!   when the key is (is not) in the pattern; they nest (Postfix 3.2).
//!   Keywords are case-insensitive; after `if` the whole rest of the line
//!   is the pattern.
//!
//! A pattern is `address` (exact) or `network/prefix`; IPv6 is written
//! plainly (`2001:db8::/32`); `[address]`, `[address]/prefix` and
//! `[network/prefix]` are accepted too. The prefix is decimal (`/024` is
//! 24). Host bits must be zero.
//!
//! Matching: the key is an address as `inet_pton` reads it — IPv6 when it
//! contains a colon, IPv4 otherwise (four decimal octets, no leading
//! zeros). Anything else (`[1.2.3.4]`, `foo`, a zone `%eth0`) matches no
//! rule. A rule applies only to keys of its own family, negated or not:
//! `!0.0.0.0/0` does not match `::1`, and `if !10.0.0.0/8` does not enter
//! for an IPv6 key. IPv4-mapped IPv6 keys (`::ffff:1.2.3.4`) are IPv6.
//! The result is used as written (no `$` substitution).
//!
//! # Errors
//!
//! As in Postfix, no content problem is fatal: each is a warning and the
//! rule is skipped. Diagnostics name the table `cidr map FILE`, so
//! `Diagnostic::postfix_located` gives Postfix's text:
//!
//! * `bad address pattern: "foo": skipping this rule`
//! * `bad network value in "foo/24": skipping this rule`
//! * `bad mask value in "1.2.3.0/x": skipping this rule`
//! * `bad mask length in "1.2.3.0/33": skipping this rule`
//! * `non-null host address bits in "1.2.3.4/24", perhaps you should use
//!   "1.2.3.0/24" instead: skipping this rule`
//! * `missing ']' character after "[1.2.3.4": skipping this rule`,
//!   `garbage after "[1.2.3]": skipping this rule`
//! * `no address pattern: skipping this rule`, `no lookup result: skipping
//!   this rule`
//! * `ENDIF without IF: skipping this rule`, `garbage after ENDIF: skipping
//!   this rule` (and that `endif` does not close its `if`), `IF has no
//!   matching ENDIF`.
//!
//! Fatal: the file cannot be read, is too big, or has too many rules (the
//! limits of [`super::regexp`]); a malformed inline `cidr:{ {…}, {…} }`.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::regexp::{
    check_rule_count, is_space, keyword, pattern_lines, read_source, skip_space, split_inline,
};
use super::{FileStamp, Table, TableError};
use crate::config::{Diagnostic, Severity};

/// An open `cidr:` table.
pub struct CidrTable {
    name: String,
    rules: Vec<Rule>,
    warnings: Vec<Diagnostic>,
    stamp: Option<FileStamp>,
}

/// A network: family, address bits and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub v6: bool,
    /// The address, IPv4 in the low 32 bits.
    pub addr: u128,
    pub len: u8,
}

impl Net {
    fn bits(v6: bool) -> u8 {
        if v6 {
            128
        } else {
            32
        }
    }

    fn mask(v6: bool, len: u8) -> u128 {
        let bits = Net::bits(v6);
        if len == 0 {
            0
        } else {
            let all = if v6 { u128::MAX } else { u32::MAX as u128 };
            let host = (1u128 << (bits - len)) - 1;
            all & !host
        }
    }

    /// Whether `key` (family, bits) is in this network. Keys of the other
    /// family are in no network.
    pub fn contains(&self, v6: bool, addr: u128) -> bool {
        v6 == self.v6 && addr & Net::mask(v6, self.len) == self.addr
    }
}

#[derive(Debug, Clone)]
struct Rule {
    net: Net,
    negate: bool,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Result(String),
    /// When the `if` does not apply, continue at rule `end`.
    If {
        end: usize,
    },
}

/// Parse a lookup key as `inet_pton` does: IPv6 when it has a colon.
pub fn parse_key(key: &str) -> Option<(bool, u128)> {
    if key.contains(':') {
        key.parse::<Ipv6Addr>().ok().map(|a| (true, u128::from(a)))
    } else {
        key.parse::<Ipv4Addr>()
            .ok()
            .map(|a| (false, u32::from(a) as u128))
    }
}

impl CidrTable {
    /// Open `spec` (`cidr:/etc/postfix/clients.cidr` or the inline
    /// `cidr:{ {…}, {…} }`); `path` is the part after the type.
    pub fn open(spec: &str, path: &str) -> Result<CidrTable, TableError> {
        if path.starts_with('{') {
            let rules = split_inline("cidr", path)?;
            return CidrTable::parse(spec, path, rules.join("\n").as_bytes(), None);
        }
        let src = read_source(spec, path)?;
        CidrTable::parse(spec, path, &src.bytes, Some(src.stamp))
    }

    /// Parse table text; `shown` names the table in diagnostics.
    pub fn parse(
        spec: &str,
        shown: &str,
        text: &[u8],
        stamp: Option<FileStamp>,
    ) -> Result<CidrTable, TableError> {
        let map = format!("cidr map {shown}");
        let (lines, mut warnings) = pattern_lines(text, shown);
        check_rule_count(&map, &lines)?;
        let mut rules: Vec<Rule> = Vec::new();
        let mut open_ifs: Vec<(usize, usize)> = Vec::new();
        let mut warn = |n: usize, m: String| {
            warnings.push(Diagnostic::new(Severity::Warning, &map, Some(n), m));
        };
        for (l, n) in &lines {
            let (l, n) = (l.as_slice(), *n);
            if keyword(l, "if") {
                let (negate, i) = negation(l, 2);
                if i >= l.len() {
                    warn(n, "no address pattern: skipping this rule".into());
                    continue;
                }
                match parse_pattern(&l[i..]) {
                    Err(m) => warn(n, m),
                    Ok(net) => {
                        open_ifs.push((rules.len(), n));
                        rules.push(Rule {
                            net,
                            negate,
                            kind: Kind::If { end: usize::MAX },
                        });
                    }
                }
            } else if keyword(l, "endif") {
                if skip_space(l, 5) < l.len() {
                    warn(n, "garbage after ENDIF: skipping this rule".into());
                } else if let Some((idx, _)) = open_ifs.pop() {
                    let end = rules.len();
                    if let Kind::If { end: e } = &mut rules[idx].kind {
                        *e = end;
                    }
                } else {
                    warn(n, "ENDIF without IF: skipping this rule".into());
                }
            } else {
                let (negate, i) = negation(l, 0);
                let pat_end = l[i..]
                    .iter()
                    .position(|&c| is_space(c))
                    .map_or(l.len(), |p| i + p);
                if pat_end == i {
                    warn(n, "no address pattern: skipping this rule".into());
                    continue;
                }
                let net = match parse_pattern(&l[i..pat_end]) {
                    Ok(net) => net,
                    Err(m) => {
                        warn(n, m);
                        continue;
                    }
                };
                let r = skip_space(l, pat_end);
                if r >= l.len() {
                    warn(n, "no lookup result: skipping this rule".into());
                    continue;
                }
                rules.push(Rule {
                    net,
                    negate,
                    kind: Kind::Result(String::from_utf8_lossy(&l[r..]).into_owned()),
                });
            }
        }
        while let Some((_, n)) = open_ifs.pop() {
            warn(n, "IF has no matching ENDIF".into());
        }
        Ok(CidrTable {
            name: spec.to_string(),
            rules,
            warnings,
            stamp,
        })
    }

    /// What Postfix would have warned about while reading the table.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Number of rules kept (matches and `if`s).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// Leading `!`s, each toggling, with the whitespace around them.
fn negation(l: &[u8], i: usize) -> (bool, usize) {
    let mut i = skip_space(l, i);
    let mut neg = false;
    while l.get(i) == Some(&b'!') {
        neg = !neg;
        i = skip_space(l, i + 1);
    }
    (neg, i)
}

/// Parse an address pattern, with Postfix's warning when it is refused.
pub fn parse_pattern(pat: &[u8]) -> Result<Net, String> {
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let skip = |m: String| Err(format!("{m}: skipping this rule"));
    // `[addr]`, `[addr]/len`, `[addr/len]`: drop the brackets.
    let text: Vec<u8> = if pat.first() == Some(&b'[') {
        let Some(close) = pat.iter().position(|&c| c == b']') else {
            return skip(format!("missing ']' character after \"{}\"", show(pat)));
        };
        let after = &pat[close + 1..];
        if !after.is_empty() && after[0] != b'/' {
            return skip(format!("garbage after \"{}\"", show(&pat[..=close])));
        }
        [&pat[1..close], after].concat()
    } else {
        pat.to_vec()
    };
    let shown = show(&text);
    let Some(slash) = text.iter().position(|&c| c == b'/') else {
        return match parse_addr(&text) {
            Some((v6, addr)) => Ok(Net {
                v6,
                addr,
                len: Net::bits(v6),
            }),
            None => skip(format!("bad address pattern: \"{shown}\"")),
        };
    };
    let (a, m) = (&text[..slash], &text[slash + 1..]);
    if m.is_empty() || !m.iter().all(u8::is_ascii_digit) {
        return skip(format!("bad mask value in \"{shown}\""));
    }
    let v6 = a.contains(&b':');
    let len = m.iter().fold(0u64, |v, &d| {
        v.saturating_mul(10).saturating_add((d - b'0') as u64)
    });
    if len > Net::bits(v6) as u64 {
        return skip(format!("bad mask length in \"{shown}\""));
    }
    let len = len as u8;
    let Some((v6, addr)) = parse_addr(a) else {
        return skip(format!("bad network value in \"{shown}\""));
    };
    let net = addr & Net::mask(v6, len);
    if net != addr {
        return skip(format!(
            "non-null host address bits in \"{shown}\", perhaps you should use \"{}/{len}\" instead",
            ntop(v6, net)
        ));
    }
    Ok(Net { v6, addr, len })
}

fn parse_addr(a: &[u8]) -> Option<(bool, u128)> {
    parse_key(std::str::from_utf8(a).ok()?)
}

/// An address as glibc's `inet_ntop` prints it (for IPv6: the longest run
/// of two or more zero groups compressed, the first of equal runs;
/// `::a.b.c.d` and `::ffff:a.b.c.d` in dotted form).
pub fn ntop(v6: bool, addr: u128) -> String {
    if !v6 {
        return Ipv4Addr::from(addr as u32).to_string();
    }
    let w: Vec<u16> = (0..8).map(|i| (addr >> (112 - 16 * i)) as u16).collect();
    let (mut best, mut best_len) = (usize::MAX, 0);
    let mut i = 0;
    while i < 8 {
        if w[i] == 0 {
            let s = i;
            while i < 8 && w[i] == 0 {
                i += 1;
            }
            if i - s > best_len {
                best = s;
                best_len = i - s;
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best = usize::MAX;
    }
    let mut out = String::new();
    let mut i = 0;
    while i < 8 {
        if best != usize::MAX && i >= best && i < best + best_len {
            if i == best {
                out.push(':');
            }
            i += 1;
            continue;
        }
        if i != 0 {
            out.push(':');
        }
        if i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && w[5] == 0xffff)) {
            out.push_str(&Ipv4Addr::from(addr as u32).to_string());
            return out;
        }
        out.push_str(&format!("{:x}", w[i]));
        i += 1;
    }
    if best != usize::MAX && best + best_len == 8 {
        out.push(':');
    }
    out
}

impl Table for CidrTable {
    fn warnings(&self) -> &[Diagnostic] {
        CidrTable::warnings(self)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        let Some((v6, addr)) = parse_key(key) else {
            return Ok(None);
        };
        let mut i = 0;
        while i < self.rules.len() {
            let r = &self.rules[i];
            // A rule of the other family applies neither way.
            let applies = r.net.v6 == v6 && r.net.contains(v6, addr) != r.negate;
            match &r.kind {
                Kind::If { end } => i = if applies { i + 1 } else { *end },
                Kind::Result(v) => {
                    if applies {
                        return Ok(Some(v.clone()));
                    }
                    i += 1;
                }
            }
        }
        Ok(None)
    }

    fn is_pattern(&self) -> bool {
        true
    }

    fn changed(&self) -> bool {
        self.stamp.as_ref().is_some_and(FileStamp::changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tbl(text: &str) -> CidrTable {
        CidrTable::parse("cidr:t", "t", text.as_bytes(), None).unwrap()
    }
    fn q(t: &CidrTable, k: &str) -> Option<String> {
        t.lookup(k).unwrap()
    }
    fn warns(t: &CidrTable) -> Vec<String> {
        t.warnings().iter().map(|d| d.postfix_located()).collect()
    }
    /// The warning for a one-line table.
    fn werr(line: &str) -> String {
        let t = tbl(&format!("{line}\n"));
        assert_eq!(t.rule_count(), 0, "{line}");
        t.warnings()[0].message.clone()
    }

    #[test]
    fn ipv4_networks_first_match_wins() {
        let t = tbl("192.168.1.1 OK\n192.168.0.0/16 REJECT\n1.2.3.0/24 x  y  \n0.0.0.0/0 any\n");
        assert_eq!(q(&t, "192.168.1.1").as_deref(), Some("OK"));
        assert_eq!(q(&t, "192.168.1.2").as_deref(), Some("REJECT"));
        assert_eq!(q(&t, "192.168.255.255").as_deref(), Some("REJECT"));
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("x  y"));
        assert_eq!(q(&t, "1.2.4.1").as_deref(), Some("any"));
        assert_eq!(q(&t, "0.0.0.0").as_deref(), Some("any"));
        assert_eq!(q(&t, "255.255.255.255").as_deref(), Some("any"));
        assert!(t.is_pattern());
    }

    #[test]
    fn keys_that_are_not_addresses_match_nothing() {
        let t = tbl("0.0.0.0/0 v4\n::/0 v6\n!1.2.3.4 not\n");
        for k in [
            "[1.2.3.4]",
            " 1.2.3.4",
            "1.2.3.4 ",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "foo",
            "",
            "1.2.3.4.5",
            "256.1.1.1",
            "2001:db8::1%eth0",
            "[2001:db8::1]",
            "IPv6:2001:db8::1",
            "02001::1",
            "1::2::3",
            ":1::",
        ] {
            assert_eq!(q(&t, k), None, "{k}");
        }
        assert_eq!(q(&t, "::ffff:1.2.3.4").as_deref(), Some("v6"));
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("v4"));
    }

    #[test]
    fn ipv6() {
        let t = tbl("2001:db8::1 one\n2001:db8::/32 doc\nfe80::/10 ll\n::ffff:0:0/96 mapped\n::1.2.3.4 compat\n:: any0\n");
        assert_eq!(q(&t, "2001:db8::1").as_deref(), Some("one"));
        assert_eq!(q(&t, "2001:DB8:0:0::1").as_deref(), Some("one"));
        assert_eq!(q(&t, "2001:0db8::2").as_deref(), Some("doc"));
        assert_eq!(q(&t, "2001:db9::1"), None);
        assert_eq!(q(&t, "FE80::1").as_deref(), Some("ll"));
        assert_eq!(q(&t, "febf::1").as_deref(), Some("ll"));
        assert_eq!(q(&t, "fec0::1"), None);
        assert_eq!(q(&t, "::ffff:1.2.3.4").as_deref(), Some("mapped"));
        assert_eq!(q(&t, "::ffff:0102:0304").as_deref(), Some("mapped"));
        assert_eq!(q(&t, "::102:304").as_deref(), Some("compat"));
        assert_eq!(q(&t, "::").as_deref(), Some("any0"));
        // No mapping between the families.
        let t = tbl("::ffff:1.2.3.0/120 x\n");
        assert_eq!(q(&t, "1.2.3.4"), None);
        let t = tbl("1:2:3:4:5:6:7:8/128 full\n1:2:3:4:5:6:7::/112 x\n");
        assert_eq!(q(&t, "1:2:3:4:5:6:7:8").as_deref(), Some("full"));
        assert_eq!(q(&t, "1:2:3:4:5:6:7:0").as_deref(), Some("x"));
    }

    #[test]
    fn brackets_and_prefix_forms() {
        let t = tbl("[2001:db8::]/32 a\n[1.2.3.4] b\n[1.2.3.0]/24 c\n[2001:db9::/32] d\n1.2.4.0/024 e\n1.2.5.0/0024 f\n");
        assert!(warns(&t).is_empty(), "{:?}", warns(&t));
        assert_eq!(q(&t, "2001:db8::5").as_deref(), Some("a"));
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("b"));
        assert_eq!(q(&t, "1.2.3.5").as_deref(), Some("c"));
        assert_eq!(q(&t, "2001:db9::5").as_deref(), Some("d"));
        assert_eq!(q(&t, "1.2.4.9").as_deref(), Some("e"));
        assert_eq!(q(&t, "1.2.5.9").as_deref(), Some("f"));
    }

    #[test]
    fn negation_is_within_the_family() {
        let t = tbl("!1.2.3.4 x\n");
        assert_eq!(q(&t, "1.2.3.5").as_deref(), Some("x"));
        assert_eq!(q(&t, "1.2.3.4"), None);
        assert_eq!(q(&t, "::1"), None);
        let t = tbl("! 1.2.3.0/24 y\n!  [1.2.3.0]/24   z\n");
        assert_eq!(q(&t, "1.2.4.1").as_deref(), Some("y"));
        let t = tbl("!!1.2.3.4 x\n! ! 1.2.3.5 y\n");
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("x"));
        assert_eq!(q(&t, "1.2.3.5").as_deref(), Some("y"));
        assert_eq!(q(&t, "1.2.3.6"), None);
        let t = tbl("!::/0 notv6\n!0.0.0.0/0 notv4\n");
        assert_eq!(q(&t, "1.2.3.4"), None);
        assert_eq!(q(&t, "::1"), None);
    }

    #[test]
    fn if_endif() {
        let t = tbl("if 1.2.3.0/24\n1.2.3.4 a\n!1.2.3.5 b\nendif\n0.0.0.0/0 c\n");
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("a"));
        assert_eq!(q(&t, "1.2.3.5").as_deref(), Some("c"));
        assert_eq!(q(&t, "1.2.3.6").as_deref(), Some("b"));
        assert_eq!(q(&t, "1.2.4.1").as_deref(), Some("c"));
        assert_eq!(q(&t, "::1"), None);
        let t = tbl("IF 1.2.3.0/24\n0.0.0.0/0 in\nENDIF\nif!1.2.3.0/24\n1.2.4.4 a\nendif\nif\t[1.2.5.0]/24\n0.0.0.0/0 five\nendif\t\n");
        assert!(warns(&t).is_empty(), "{:?}", warns(&t));
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("in"));
        assert_eq!(q(&t, "1.2.4.4").as_deref(), Some("a"));
        assert_eq!(q(&t, "1.2.5.1").as_deref(), Some("five"));
        let t = tbl("if !1.2.3.0/24\n::/0 y\n0.0.0.0/0 z\nendif\n");
        assert_eq!(q(&t, "::1"), None);
        assert_eq!(q(&t, "1.2.4.4").as_deref(), Some("z"));
        assert_eq!(q(&t, "1.2.3.4"), None);
        let t = tbl("if 1.2.3.0/24\nif 1.2.3.0/25\nif 1.2.3.0/26\n0.0.0.0/0 deep\nendif\n0.0.0.0/0 mid\nendif\nendif\n0.0.0.0/0 out\n");
        assert_eq!(q(&t, "1.2.3.1").as_deref(), Some("deep"));
        assert_eq!(q(&t, "1.2.3.100").as_deref(), Some("mid"));
        assert_eq!(q(&t, "1.2.3.200").as_deref(), Some("out"));
        assert_eq!(q(&t, "9.9.9.9").as_deref(), Some("out"));
    }

    #[test]
    fn if_endif_errors() {
        let t = tbl("if 1.2.3.0/24\n1.2.3.4 a\nendif x\n0.0.0.0/0 b\n");
        assert_eq!(
            warns(&t),
            [
                "cidr map t, line 3: garbage after ENDIF: skipping this rule",
                "cidr map t, line 1: IF has no matching ENDIF",
            ]
        );
        assert_eq!(q(&t, "1.2.4.4"), None);
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("a"));
        let t = tbl("endif\nif\nif !\nif foo\nendif\nendif!\nifx 1.2.3.0/24 q\nendifx\nif1.2.3.0/24 q\nif 1.2.3.0/24 x\n");
        assert_eq!(
            warns(&t),
            [
                "cidr map t, line 1: ENDIF without IF: skipping this rule",
                "cidr map t, line 2: no address pattern: skipping this rule",
                "cidr map t, line 3: no address pattern: skipping this rule",
                "cidr map t, line 4: bad address pattern: \"foo\": skipping this rule",
                "cidr map t, line 5: ENDIF without IF: skipping this rule",
                "cidr map t, line 6: garbage after ENDIF: skipping this rule",
                "cidr map t, line 7: bad address pattern: \"ifx\": skipping this rule",
                "cidr map t, line 8: bad address pattern: \"endifx\": skipping this rule",
                "cidr map t, line 9: bad network value in \"if1.2.3.0/24\": skipping this rule",
                "cidr map t, line 10: bad mask value in \"1.2.3.0/24 x\": skipping this rule",
            ]
        );
        let t = tbl("if 1.0.0.0/8\nif 1.2.0.0/16\nif 1.2.3.0/24\nendif\n");
        assert_eq!(
            warns(&t),
            [
                "cidr map t, line 2: IF has no matching ENDIF",
                "cidr map t, line 1: IF has no matching ENDIF",
            ]
        );
    }

    #[test]
    fn pattern_errors_match_postfix() {
        assert_eq!(
            werr("1.2.3.5/24 x"),
            "non-null host address bits in \"1.2.3.5/24\", perhaps you should use \"1.2.3.0/24\" instead: skipping this rule"
        );
        assert_eq!(
            werr("[1.2.3.5]/24 x"),
            "non-null host address bits in \"1.2.3.5/24\", perhaps you should use \"1.2.3.0/24\" instead: skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.255/25 x"),
            "non-null host address bits in \"1.2.3.255/25\", perhaps you should use \"1.2.3.128/25\" instead: skipping this rule"
        );
        assert_eq!(
            werr("2001:db8:1:2:3:4:5:6/64 x"),
            "non-null host address bits in \"2001:db8:1:2:3:4:5:6/64\", perhaps you should use \"2001:db8:1:2::/64\" instead: skipping this rule"
        );
        assert_eq!(
            werr("::0.2.0.3/127 y"),
            "non-null host address bits in \"::0.2.0.3/127\", perhaps you should use \"::0.2.0.2/127\" instead: skipping this rule"
        );
        assert_eq!(
            werr("1:0:0:1:0:0:0:1/127 z"),
            "non-null host address bits in \"1:0:0:1:0:0:0:1/127\", perhaps you should use \"1:0:0:1::/127\" instead: skipping this rule"
        );
        assert_eq!(
            werr("::ffff:1.2.3.4/96 y"),
            "non-null host address bits in \"::ffff:1.2.3.4/96\", perhaps you should use \"::ffff:0.0.0.0/96\" instead: skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.0/33 x"),
            "bad mask length in \"1.2.3.0/33\": skipping this rule"
        );
        assert_eq!(
            werr("[1.2.3.0]/33 x"),
            "bad mask length in \"1.2.3.0/33\": skipping this rule"
        );
        assert_eq!(
            werr("2001:db8::1/129 x"),
            "bad mask length in \"2001:db8::1/129\": skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.0/99999999999999 x"),
            "bad mask length in \"1.2.3.0/99999999999999\": skipping this rule"
        );
        assert_eq!(
            werr("foo/99 y"),
            "bad mask length in \"foo/99\": skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.0/-1 x"),
            "bad mask value in \"1.2.3.0/-1\": skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.0/ x"),
            "bad mask value in \"1.2.3.0/\": skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.0/+24 x"),
            "bad mask value in \"1.2.3.0/+24\": skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.4/24/1 x"),
            "bad mask value in \"1.2.3.4/24/1\": skipping this rule"
        );
        assert_eq!(
            werr("foo/x y"),
            "bad mask value in \"foo/x\": skipping this rule"
        );
        assert_eq!(
            werr("[1.2.3.0]/24] x"),
            "bad mask value in \"1.2.3.0/24]\": skipping this rule"
        );
        assert_eq!(
            werr("2001:db8::/32x y"),
            "bad mask value in \"2001:db8::/32x\": skipping this rule"
        );
        assert_eq!(
            werr("[]/24 x"),
            "bad network value in \"/24\": skipping this rule"
        );
        assert_eq!(
            werr("foo x"),
            "bad address pattern: \"foo\": skipping this rule"
        );
        assert_eq!(
            werr("01.2.3.4 x"),
            "bad address pattern: \"01.2.3.4\": skipping this rule"
        );
        assert_eq!(
            werr("1.2.3.4] x"),
            "bad address pattern: \"1.2.3.4]\": skipping this rule"
        );
        assert_eq!(
            werr("[foo] x"),
            "bad address pattern: \"foo\": skipping this rule"
        );
        assert_eq!(
            werr("[] x"),
            "bad address pattern: \"\": skipping this rule"
        );
        assert_eq!(
            werr("! y"),
            "bad address pattern: \"y\": skipping this rule"
        );
        assert_eq!(
            werr("[1.2.3.4 x"),
            "missing ']' character after \"[1.2.3.4\": skipping this rule"
        );
        assert_eq!(
            werr("[[1.2.3.4]] x"),
            "garbage after \"[[1.2.3.4]\": skipping this rule"
        );
        assert_eq!(
            werr("[1.2.3].0/24 x"),
            "garbage after \"[1.2.3]\": skipping this rule"
        );
        assert_eq!(werr("1.2.3.4"), "no lookup result: skipping this rule");
        assert_eq!(werr("::/0"), "no lookup result: skipping this rule");
        assert_eq!(werr("!"), "no address pattern: skipping this rule");
    }

    #[test]
    fn ntop_matches_glibc() {
        let cases = [
            ("::2", "::2"),
            ("::1", "::1"),
            ("::", "::"),
            ("::ffff:0:0", "::ffff:0.0.0.0"),
            ("::0.0.1.0", "::100"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:0:0:2:0:0:3", "1::2:0:0:3"),
            ("0:0:1::", "0:0:1::"),
            ("::ffff:1:2", "::ffff:0.1.0.2"),
            ("::fffe:1.2.3.4", "::fffe:102:304"),
            ("::1:0:0:0", "::1:0:0:0"),
            ("1::2:0", "1::2:0"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"),
            ("1::", "1::"),
            ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
        ];
        for (a, want) in cases {
            let (v6, bits) = parse_key(a).unwrap();
            assert_eq!(ntop(v6, bits), want, "{a}");
        }
        assert_eq!(ntop(false, 0x01020304), "1.2.3.4");
    }

    #[test]
    fn masks() {
        assert_eq!(Net::mask(false, 0), 0);
        assert_eq!(Net::mask(false, 32), 0xffff_ffff);
        assert_eq!(Net::mask(false, 24), 0xffff_ff00);
        assert_eq!(Net::mask(true, 128), u128::MAX);
        assert_eq!(Net::mask(true, 1), 1u128 << 127);
        assert_eq!(Net::mask(true, 0), 0);
        let all = tbl("0.0.0.0/0 a\n");
        assert_eq!(q(&all, "8.8.8.8").as_deref(), Some("a"));
        let one = tbl("128.0.0.0/1 hi\n0.0.0.0/1 lo\n");
        assert_eq!(q(&one, "128.0.0.1").as_deref(), Some("hi"));
        assert_eq!(q(&one, "127.255.255.255").as_deref(), Some("lo"));
        let v6 = tbl("8000::/1 hi\n::/1 lo\n");
        assert_eq!(q(&v6, "ffff::").as_deref(), Some("hi"));
        assert_eq!(q(&v6, "7fff::").as_deref(), Some("lo"));
    }

    #[test]
    fn inline_and_files() {
        let n = "{ {1.2.3.0/24 x}, {1.2.3.5/24 y} }";
        let t = CidrTable::open(&format!("cidr:{n}"), n).unwrap();
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("x"));
        assert_eq!(
            warns(&t),
            ["cidr map { {1.2.3.0/24 x}, {1.2.3.5/24 y} }, line 2: non-null host address bits in \"1.2.3.5/24\", perhaps you should use \"1.2.3.0/24\" instead: skipping this rule"]
        );
        assert_eq!(
            CidrTable::open("cidr:{1.2.3.4 x}", "{1.2.3.4 x}")
                .err()
                .unwrap()
                .to_string(),
            "cidr map: no '{' at start of text in \"1.2.3.4\""
        );
        let dir = std::env::temp_dir().join(format!("facteur-cidr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.cidr");
        std::fs::write(&f, "# clients\n10.0.0.0/8 REJECT\n  local\n").unwrap();
        let path = f.to_str().unwrap();
        let t = super::super::open(&format!("cidr:{path}"), &Default::default()).unwrap();
        assert_eq!(
            t.lookup("10.1.2.3").unwrap().as_deref(),
            Some("REJECT  local")
        );
        assert!(!t.changed());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "10.0.0.0/8 OK\n").unwrap();
        assert!(t.changed());
        assert_eq!(
            CidrTable::open("cidr:/nonexistent/c", "/nonexistent/c")
                .err()
                .unwrap(),
            TableError::Config("open /nonexistent/c: No such file or directory".into())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rule_limit() {
        let many = "1.2.3.4 x\n".repeat(super::super::regexp::MAX_RULES + 1);
        let e = CidrTable::parse("cidr:t", "t", many.as_bytes(), None)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "cidr map t, line 100001: more than 100000 rules: split the table"
        );
    }

    #[test]
    fn crlf_and_continuations() {
        let t = tbl("1.2.3.4 x\r\n1.2.3.5\r\n y\r\n");
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("x"));
        assert_eq!(q(&t, "1.2.3.5").as_deref(), Some("y"));
        let t = tbl("1.2.3.0/24 ${1} $$\n");
        assert_eq!(q(&t, "1.2.3.4").as_deref(), Some("${1} $$"));
    }
}
