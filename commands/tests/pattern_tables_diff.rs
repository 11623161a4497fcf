//! Differential test: Facteur's `regexp:`, `pcre:` and `cidr:` tables
//! against Postfix's, on the same files (`tests/data/pattern-tables/`).
//!
//! Each key goes through Postfix's `postmap -q KEY TYPE:FILE` and through
//! `libmail::table::open(TYPE:FILE)?.lookup(KEY)`; the answers (the value,
//! or not found) must be identical. The keys exercise address forms with
//! `+ext`, case variants, negations, nested `if` blocks, substitutions,
//! flags, delimiters, POSIX and PCRE syntax corners, IPv4 and IPv6. The
//! warnings Postfix prints while reading each table are compared with the
//! table's own diagnostics, line for line.
//!
//! Postfix and postfix-pcre must be installed (`scripts/test.sh` installs
//! them); without them the test fails, it never skips.
//!
//! Intended differences are listed in [`INTENDED`], each with its reason.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use libmail::table::{self, OpenOptions};

const POSTMAP: &str = "/usr/sbin/postmap";
const POSTCONF: &str = "/usr/sbin/postconf";

/// postmap cannot ask for the key `-` (`-q -` reads keys from standard
/// input), so no table is asked for it here; the unit tests cover it.
///
/// Lookups whose answers differ on purpose: (table file or inline spec,
/// key, Facteur's answer, why).
const INTENDED: &[(&str, &str, Option<&str>, &str)] = &[(
    "posix.regexp",
    "xab",
    Some("longest-a"),
    "POSIX regexec picks the leftmost-longest match, so glibc's $1 for \
     /(a|ab)/ on \"ab\" is \"ab\"; the regex crate is leftmost-first and \
     captures \"a\". Whether a rule matches never differs, only the \
     captured text of such alternations.",
)];

/// The keys asked of each table.
fn cases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "access.regexp",
            vec![
                "user%host@relay.example",
                "a!b@c",
                "postmaster@example.com",
                "POSTMASTER@Example.COM",
                "postmaster",
                "list-outgoing@lists.example.com",
                "owner-list-outgoing@lists.example.com",
                "OWNER-list-outgoing@lists.example.com",
                "user+tag@example.com",
                "User+Tag@EXAMPLE.COM",
                "user+@example.com",
                "user+a+b@example.com",
                "user@example.com",
                "user@sub.example.org",
                "user@SUB.example.org",
                "user@example.org",
                "someone@example.net",
                "someone@EXAMPLE.NET",
                "localhost",
                "<>",
                "",
                "a.b",
            ],
        ),
        (
            "subst.regexp",
            vec![
                "a",
                "ab",
                "abc",
                "ac",
                "ABC",
                "xyzwvutsr",
                "john.doe@example.com",
                "Jane@Mail.Example.NET",
                "literal",
                "empty-group",
                "empty-groupxx",
                "multi-line",
                "trailing",
                "nl\nx",
                "abc123",
                "nomatch",
            ],
        ),
        (
            "flags.regexp",
            vec![
                "pipe|bar",
                "pipe",
                "eqSomething",
                "under",
                "comma,x",
                "percent",
                "quote",
                "brace{2}",
                "braceee",
                "CaseSens",
                "casesens",
                "CASEFOLD",
                "a\nb",
                "line1\nline2\nline3",
                "line2",
                "m\nn",
                "mxn",
                "bre+",
                "bree",
                "brre",
                "cc",
                "c{2}",
                "ddd",
                "d+",
                "II",
                "mm",
                "xx",
            ],
        ),
        (
            "nested.regexp",
            vec![
                "admin-web@example.com",
                "ADMIN-web@example.com",
                "root@example.com",
                "postmaster@example.com",
                "user1@example.com",
                "other@example.com",
                "local",
                "LOCAL",
                "remote",
                "deep",
                "deepx",
                "deeper",
                "dee",
                "someone@example.org",
            ],
        ),
        (
            "errors.regexp",
            vec![
                "abc", "a", "b", "c", "d", "e", "f", "h", "j", "k", "l", "o", "p", "zz", "n",
            ],
        ),
        (
            "posix.regexp",
            vec![
                "c", "ee", "ff", "\\g", ".g", "a!", "i j", "ij", "]", "k", "mmn", "n", "p^q", "uu",
                "u", "-x", "a-", "y", "d}", "f)", "h", "kkkk", "kkk", "au", "Au", "b", "B", "(a)",
                "z", "$", "d", "aa", "aA", "bbx", "cbx", "\u{e9}", "ab", "xab", "qA", "qa", "qb",
                "wa", "wB", "wc", "w_", "vq", "vQ", "tB", "tb", "td",
            ],
        ),
        (
            "headers.pcre",
            vec![
                "list-outgoing@example.com",
                "owner-list-outgoing@example.com",
                "friend@other.domain",
                "friend@my.domain",
                "noddy@my.domain",
                "NODDY@MY.DOMAIN",
                "Subject: buy Viagra now",
                "Subject: viagraX",
                "user+ext@example.com",
                "555-1234",
                "abc123",
                "aab",
                "xy",
                "me@example.org",
                "me@example.net",
                "mixed",
                "Exact",
                "exact",
            ],
        ),
        (
            "flags.pcre",
            vec![
                "dollar",
                "dollar\n",
                "endonly",
                "endonly\n",
                "line1\nline2",
                "line2\nline3",
                "dot\nall",
                "nodot\nall",
                "nodotxall",
                "spaced",
                "sp ace d",
                "anch",
                "xanch",
                "gggg",
                "uuu",
                "Case",
                "case",
                "obsolete",
                "a b",
                "ab",
            ],
        ),
        (
            "nested.pcre",
            vec![
                "root@example.com",
                "admin@example.com",
                "Admin@Example.com",
                "bob@example.com",
                "bob",
                "bob2",
                "bob@example.org",
                "192.0.2.10",
                "x1",
                "",
            ],
        ),
        (
            "escapes.pcre",
            vec![
                " x", "\tx", "ab", "a.b", "axb", "[", "&", "b", "~", ",", "]x", "ax", "ABCD",
                "a{,2}", "aa", "<", "c", "bba", "a1", "ab", "\u{e9}", "q", "ok", "a", "abd", "cd",
                "bd", "aae", "f", "-h", "dh", "eh",
            ],
        ),
        (
            "clients.cidr",
            vec![
                "192.168.1.1",
                "192.168.1.2",
                "192.168.255.255",
                "10.1.2.3",
                "172.16.0.1",
                "172.31.255.255",
                "172.32.0.0",
                "127.0.0.1",
                "200.1.1.1",
                "0.0.0.0",
                "255.255.255.255",
                "::1",
                "[192.168.1.1]",
                "192.168.1",
                "192.168.01.1",
                "foo",
                "",
            ],
        ),
        (
            "v6.cidr",
            vec![
                "2001:db8::1",
                "2001:DB8:0:0::1",
                "2001:0db8::2",
                "2001:db8:ffff::1",
                "fe80::1",
                "FE80::abcd",
                "febf::1",
                "fec0::1",
                "::ffff:1.2.3.4",
                "::ffff:0102:0304",
                "1.2.3.4",
                "::1",
                "::",
                "2001:db9::5",
                "2001:dba::5",
                "2002:1::1",
                "[2001:db8::1]",
                "2001:db8::1%eth0",
                "2001:db8::1::2",
            ],
        ),
        (
            "nested.cidr",
            vec![
                "10.2.3.4",
                "10.1.2.3",
                "10.1.3.3",
                "10.2.4.4",
                "10.3.3.3",
                "192.0.2.1",
                "192.0.2.2",
                "192.0.3.1",
                "2001:db8::1",
                "198.51.100.7",
                "198.51.100.8",
                "203.0.113.1",
            ],
        ),
        (
            "errors.cidr",
            vec![
                "1.2.3.4",
                "1.2.3.5",
                "2001:db8::1",
                "10.1.1.1",
                "9.9.9.9",
                "1.2.3.1",
                "foo",
            ],
        ),
    ]
}

/// Inline specs (Postfix 3.7), with their keys.
fn inline_cases() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "regexp:{ {/^a/ x}, {/^(b)(.*)/ y$2$1}, {if /c/}, {/d/ cd}, {endif} }",
            vec!["a", "bcd", "cd", "d", "z"],
        ),
        (
            "pcre:{{/^(?!x)(\\w+)$/ word $1},{ /./ other }}",
            vec!["abc", "xyz", "a b"],
        ),
        (
            "cidr:{ {10.0.0.0/8 ten}, {!::/0 not-v6} }",
            vec!["10.1.1.1", "11.1.1.1", "::1"],
        ),
    ]
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/pattern-tables")
        .canonicalize()
        .expect("tests/data/pattern-tables")
}

/// Postfix must be there with pcre support. `postconf -m` is asked with the
/// test's own config directory: a package installed with "No
/// configuration" has no /etc/postfix/main.cf, and postconf will not run
/// without one.
fn require_postfix(etc: &Etc) {
    assert!(
        Path::new(POSTMAP).exists(),
        "{POSTMAP} is missing: run scripts/test.sh, which installs Postfix (and postfix-pcre) for the differential tests"
    );
    let m = Command::new(POSTCONF)
        .arg("-c")
        .arg(&etc.0)
        .arg("-m")
        .output()
        .expect("postconf -m");
    let types = String::from_utf8_lossy(&m.stdout);
    assert!(
        types.lines().any(|l| l == "pcre"),
        "Postfix has no pcre table support (package postfix-pcre): run scripts/test.sh, which installs it"
    );
}

/// A private Postfix config directory, so the machine's main.cf does not
/// change the answers.
struct Etc(PathBuf);

impl Etc {
    fn new() -> Etc {
        let d = std::env::temp_dir().join(format!("facteur-pattern-diff-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("main.cf"), "compatibility_level = 3.6\n").unwrap();
        fs::write(d.join("master.cf"), "").unwrap();
        Etc(d)
    }
}

impl Drop for Etc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Postfix's answer for one key, and its warnings.
fn postfix(etc: &Etc, spec: &str, key: &str) -> (Option<String>, Vec<String>) {
    let out = Command::new(POSTMAP)
        .arg("-c")
        .arg(&etc.0)
        .args(["-q", key, spec])
        .output()
        .expect("run postmap");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let value = match out.status.code() {
        Some(0) => {
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            Some(s.strip_suffix('\n').unwrap_or(&s).to_string())
        }
        Some(1) => None,
        other => panic!("postmap -q {key:?} {spec}: exit {other:?}\n{stderr}"),
    };
    // Warnings from reading the table, not from this lookup.
    let warnings = stderr
        .lines()
        .filter(|l| {
            !l.contains("empty string result is not allowed")
                && !l.contains("should return NO RESULT")
        })
        .map(str::to_string)
        .collect();
    (value, warnings)
}

/// Our warnings for a table, worded as postmap prints them.
fn our_warnings(spec: &str) -> Vec<String> {
    let (kind, name) = spec.split_once(':').unwrap();
    let diags = match kind {
        "regexp" | "pcre" => {
            let flavor = if kind == "pcre" {
                table::regexp::Flavor::Pcre
            } else {
                table::regexp::Flavor::Regexp
            };
            table::regexp::RegexpTable::open(spec, name, flavor)
                .unwrap()
                .warnings()
                .to_vec()
        }
        "cidr" => table::cidr::CidrTable::open(spec, name)
            .unwrap()
            .warnings()
            .to_vec(),
        _ => unreachable!(),
    };
    diags
        .iter()
        .map(|d| {
            // Postfix names no place for these two mac_parse messages.
            if d.message.starts_with("empty macro name")
                || d.message.starts_with("truncated macro reference")
            {
                format!("postmap: {}: {}", d.level_word(), d.message)
            } else {
                format!("postmap: {}: {}", d.level_word(), d.postfix_located())
            }
        })
        .collect()
}

/// Compare warnings; PCRE compile errors are compared up to the error
/// text, which is PCRE2's own.
fn same_warning(ours: &str, theirs: &str) -> bool {
    match (ours.find("error in regex"), theirs.find("error in regex")) {
        (Some(a), Some(b)) => ours[..a] == theirs[..b],
        _ => ours == theirs,
    }
}

#[test]
fn pattern_tables_match_postfix() {
    let etc = Etc::new();
    require_postfix(&etc);
    let dir = data_dir();
    let mut specs: Vec<(String, &str, Vec<&str>)> = Vec::new();
    for (file, keys) in cases() {
        let kind = file.rsplit('.').next().unwrap();
        let path = dir.join(file);
        specs.push((format!("{kind}:{}", path.display()), file, keys));
    }
    for (spec, keys) in inline_cases() {
        specs.push((spec.to_string(), spec, keys));
    }

    let mut lookups = 0;
    let mut failures = Vec::new();
    let mut intended_seen = 0;
    for (spec, label, keys) in &specs {
        let ours_table = table::open(spec, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("open {spec}: {e}"));
        assert!(ours_table.is_pattern());
        let mut theirs_warnings = None;
        for key in keys {
            let (theirs, warnings) = postfix(&etc, spec, key);
            theirs_warnings.get_or_insert(warnings);
            let ours = ours_table
                .lookup(key)
                .unwrap_or_else(|e| panic!("{spec} {key:?}: {e}"));
            lookups += 1;
            if let Some((_, _, want, _)) =
                INTENDED.iter().find(|(t, k, _, _)| t == label && k == key)
            {
                assert_eq!(
                    ours.as_deref(),
                    *want,
                    "{label} {key:?}: intended answer changed"
                );
                assert_ne!(
                    ours, theirs,
                    "{label} {key:?}: listed as intended but now identical"
                );
                intended_seen += 1;
                continue;
            }
            if ours != theirs {
                failures.push(format!(
                    "{label} {key:?}: postfix {theirs:?}, facteur {ours:?}"
                ));
            }
        }
        let theirs_warnings = theirs_warnings.unwrap_or_default();
        let ours_warnings = our_warnings(spec);
        let same = ours_warnings.len() == theirs_warnings.len()
            && ours_warnings
                .iter()
                .zip(&theirs_warnings)
                .all(|(a, b)| same_warning(a, b));
        if !same {
            failures.push(format!(
                "{label}: warnings differ\n  postfix:\n    {}\n  facteur:\n    {}",
                theirs_warnings.join("\n    "),
                ours_warnings.join("\n    ")
            ));
        }
    }
    assert_eq!(
        intended_seen,
        INTENDED.len(),
        "every intended difference is exercised"
    );
    assert!(lookups >= 150, "only {lookups} lookups");
    assert!(
        failures.is_empty(),
        "{} differences in {lookups} lookups:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
