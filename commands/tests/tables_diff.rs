//! Differential test: Facteur's `postmap` / `postalias` against Postfix's,
//! on the same source files (`tests/data/tables/`), for hash, texthash,
//! inline and aliases tables.
//!
//! Both sides build their own copy of each table, then answer the same
//! keys through `-q -` (keys on standard input, `key<TAB>value` per hit):
//! the outputs and exit statuses must be identical. The keys are the
//! source keys and variations of them — case, address extensions, parent
//! and sub domains, shortened addresses, near misses — so the raw-lookup
//! semantics (case folding, no partial matching, first duplicate wins,
//! continuation lines) are compared, not just the happy path. `-s` dumps
//! are compared as sets, and the build warnings as sets of lines.
//!
//! Postfix must be installed (`scripts/test.sh` installs it); without it
//! the test fails, it never skips.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const OURS_POSTMAP: &str = env!("CARGO_BIN_EXE_postmap");
const OURS_POSTALIAS: &str = env!("CARGO_BIN_EXE_postalias");
const THEIRS_POSTMAP: &str = "/usr/sbin/postmap";
const THEIRS_POSTALIAS: &str = "/usr/sbin/postalias";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/tables")
}

fn require_postfix() {
    for p in [THEIRS_POSTMAP, THEIRS_POSTALIAS] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: run scripts/test.sh, which installs Postfix for the differential tests"
        );
    }
}

/// A scratch directory with a copy of the sources and an empty config.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("facteur-tables-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("etc/main.cf"), "compatibility_level = 3.6\n").unwrap();
        fs::write(d.join("etc/master.cf"), "").unwrap();
        for e in fs::read_dir(data_dir()).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        Scratch(d)
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
    fn etc(&self) -> String {
        self.file("etc")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

fn run(prog: &str, args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    // A program that refuses its arguments exits without reading its
    // input: a broken pipe is then its answer, not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{prog}: {e}");
    }
    let o = child.wait_with_output().unwrap();
    Out {
        status: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Warnings as a set, with each side's scratch path made neutral.
fn warning_set(stderr: &str, scratch: &Scratch) -> BTreeSet<String> {
    stderr
        .lines()
        .map(|l| l.replace(scratch.0.to_str().unwrap(), "DIR"))
        .collect()
}

/// The keys of a source file (first word of each entry line).
fn source_keys(name: &str) -> Vec<String> {
    let text = fs::read_to_string(data_dir().join(name)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_whitespace().next())
        .map(|k| k.trim_end_matches(':').trim_matches('"').to_string())
        .collect()
}

/// Variations of each key that a raw lookup must treat exactly as Postfix.
fn variations(keys: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: String| {
        if !s.is_empty() && !s.contains('\n') && !out.contains(&s) {
            out.push(s);
        }
    };
    for k in keys {
        add(k.clone());
        add(k.to_uppercase());
        add(k.to_lowercase());
        add(format!("{k}x"));
        add(format!("x{k}"));
        if let Some((local, domain)) = k.split_once('@') {
            add(format!("{local}+ext@{domain}"));
            add(format!("@{domain}"));
            add(local.to_string());
            add(domain.to_string());
            add(format!("{local}@sub.{domain}"));
        } else if k.contains('.') {
            add(format!("sub.{k}"));
            if let Some((_, parent)) = k.split_once('.') {
                add(parent.to_string());
                add(format!(".{parent}"));
            }
            if let Some((head, _)) = k.rsplit_once('.') {
                add(head.to_string());
            }
        }
    }
    for extra in [
        "",
        "nothing-here",
        "*",
        "@",
        "<>",
        "postmaster",
        "192.0.2.99",
        "2001:db8::2",
    ] {
        add(extra.to_string());
    }
    out
}

/// Compare `-q -` on both sides; returns the number of keys looked up.
fn compare_queries(
    label: &str,
    ours: (&str, &Scratch),
    theirs: (&str, &Scratch),
    table: &str,
    keys: &[String],
    failures: &mut Vec<String>,
) -> usize {
    // Empty keys cannot go through -q -; they are skipped there.
    let keys: Vec<&String> = keys.iter().filter(|k| !k.is_empty()).collect();
    let input: String = keys.iter().map(|k| format!("{k}\n")).collect();
    let o = run(
        ours.0,
        &[
            "-c",
            &ours.1.etc(),
            "-q",
            "-",
            &table.replace("@DIR@", ours.1 .0.to_str().unwrap()),
        ],
        &input,
    );
    let t = run(
        theirs.0,
        &[
            "-c",
            &theirs.1.etc(),
            "-q",
            "-",
            &table.replace("@DIR@", theirs.1 .0.to_str().unwrap()),
        ],
        &input,
    );
    if o.stdout != t.stdout || o.status != t.status {
        failures.push(format!(
            "=== {label}: postmap -q - {table}\n--- Postfix (status {})\n{}--- Facteur (status {})\n{}{}",
            t.status, t.stdout, o.status, o.stdout, o.stderr
        ));
    }
    keys.len()
}

#[test]
fn lookups_match_postfix() {
    require_postfix();
    let ours = Scratch::new("ours");
    let theirs = Scratch::new("theirs");
    let mut failures = Vec::new();
    let mut lookups = 0;

    for name in ["access", "virtual", "transport"] {
        // Build: same exit status, same warnings.
        let o = run(
            OURS_POSTMAP,
            &["-c", &ours.etc(), &format!("hash:{}", ours.file(name))],
            "",
        );
        let t = run(
            THEIRS_POSTMAP,
            &["-c", &theirs.etc(), &format!("hash:{}", theirs.file(name))],
            "",
        );
        if o.status != t.status || warning_set(&o.stderr, &ours) != warning_set(&t.stderr, &theirs)
        {
            failures.push(format!(
                "=== build hash:{name}\n--- Postfix (status {})\n{}--- Facteur (status {})\n{}",
                t.status, t.stderr, o.status, o.stderr
            ));
        }
        let keys = variations(&source_keys(name));
        for kind in ["hash", "texthash"] {
            lookups += compare_queries(
                name,
                (OURS_POSTMAP, &ours),
                (THEIRS_POSTMAP, &theirs),
                &format!("{kind}:@DIR@/{name}"),
                &keys,
                &mut failures,
            );
        }
        // -s dumps, as sets (database order is unspecified).
        let o = run(
            OURS_POSTMAP,
            &[
                "-c",
                &ours.etc(),
                "-s",
                &format!("hash:{}", ours.file(name)),
            ],
            "",
        );
        let t = run(
            THEIRS_POSTMAP,
            &[
                "-c",
                &theirs.etc(),
                "-s",
                &format!("hash:{}", theirs.file(name)),
            ],
            "",
        );
        let os: BTreeSet<&str> = o.stdout.lines().collect();
        let ts: BTreeSet<&str> = t.stdout.lines().collect();
        if os != ts {
            failures.push(format!(
                "=== postmap -s hash:{name}\n--- Postfix\n{ts:#?}\n--- Facteur\n{os:#?}"
            ));
        }
    }

    // Aliases through postalias.
    let o = run(
        OURS_POSTALIAS,
        &["-c", &ours.etc(), &format!("hash:{}", ours.file("aliases"))],
        "",
    );
    let t = run(
        THEIRS_POSTALIAS,
        &[
            "-c",
            &theirs.etc(),
            &format!("hash:{}", theirs.file("aliases")),
        ],
        "",
    );
    if o.status != t.status || warning_set(&o.stderr, &ours) != warning_set(&t.stderr, &theirs) {
        failures.push(format!(
            "=== build aliases\n--- Postfix (status {})\n{}--- Facteur (status {})\n{}",
            t.status, t.stderr, o.status, o.stderr
        ));
    }
    let mut alias_keys = variations(&source_keys("aliases"));
    alias_keys.push("quoted name".into());
    lookups += compare_queries(
        "aliases",
        (OURS_POSTALIAS, &ours),
        (THEIRS_POSTALIAS, &theirs),
        "hash:@DIR@/aliases",
        &alias_keys,
        &mut failures,
    );

    // Inline tables, spelled in the forms main.cf allows.
    let inline_specs = [
        "inline:{ foo=bar, { x = y z }, Key=Value }",
        "inline:{ a=1, a=2, b=3 }",
        "inline:{ {user@example.com = smtp:[relay]:587}, {@example.com=error:nope} }",
    ];
    let inline_keys: Vec<String> = [
        "foo",
        "FOO",
        "x",
        "X",
        "key",
        "Key",
        "a",
        "b",
        "c",
        "user@example.com",
        "@example.com",
        "USER@EXAMPLE.COM",
        "y",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for spec in inline_specs {
        lookups += compare_queries(
            "inline",
            (OURS_POSTMAP, &ours),
            (THEIRS_POSTMAP, &theirs),
            spec,
            &inline_keys,
            &mut failures,
        );
    }

    assert!(lookups >= 150, "only {lookups} lookups: the corpus shrank");
    eprintln!("{lookups} lookups compared with Postfix");
    assert!(
        failures.is_empty(),
        "{} difference(s) in {lookups} lookups:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `postmap -F`: values are lists of files, stored base64-encoded and
/// decoded by `-q` and `-s`; missing files and malformed values are
/// reported like Postfix.
#[test]
fn file_valued_tables_match_postfix() {
    require_postfix();
    let ours = Scratch::new("F-ours");
    let theirs = Scratch::new("F-theirs");
    let mut failures = Vec::new();
    for sc in [&ours, &theirs] {
        fs::write(sc.0.join("f1"), "line1\nline2\n").unwrap();
        fs::write(sc.0.join("f2"), "abc").unwrap();
        let d = sc.0.to_str().unwrap();
        fs::write(
            sc.0.join("sni"),
            format!(
                "k1 {d}/f1\nk2 {d}/f1, {d}/f2\nk3 {d}/f2 {d}/f1\nk4 {d}/missing\nk5 relative\n"
            ),
        )
        .unwrap();
        fs::write(sc.0.join("bad"), "x !!!notbase64\ny YWJj\n").unwrap();
    }
    let norm = |s: &str, sc: &Scratch| s.replace(sc.0.to_str().unwrap(), "DIR");
    let cmds: &[(&[&str], &str)] = &[
        (&["-F"], "hash:sni"),
        (&["-F", "-s"], "hash:sni"),
        (&["-F", "-q", "k2"], "hash:sni"),
        (&["-F", "-q", "k9"], "hash:sni"),
        (&["-F", "-q", "-"], "hash:sni"),
        (&[], "hash:bad"),
        (&["-F", "-q", "x"], "hash:bad"),
        (&["-F", "-q", "y"], "hash:bad"),
        (&["-F", "-s"], "hash:bad"),
    ];
    for (flags, table) in cmds {
        let mut results = Vec::new();
        for (prog, sc) in [(OURS_POSTMAP, &ours), (THEIRS_POSTMAP, &theirs)] {
            let etc = sc.etc();
            let tbl = table.replace("hash:", &format!("hash:{}/", sc.0.to_str().unwrap()));
            let mut args: Vec<&str> = vec!["-c", &etc];
            args.extend_from_slice(flags);
            args.push(&tbl);
            let o = run(prog, &args, "k1\nk2\nk3\nk4\nk9\n");
            let mut out: Vec<String> = norm(&o.stdout, sc).lines().map(str::to_string).collect();
            if flags.contains(&"-s") {
                out.sort();
            }
            results.push((o.status, out, warning_set(&o.stderr, sc)));
        }
        if results[0] != results[1] {
            failures.push(format!(
                "=== postmap {} {table}\n--- Postfix\n{:#?}\n--- Facteur\n{:#?}",
                flags.join(" "),
                results[1],
                results[0]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
