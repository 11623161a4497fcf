//! postmap / postalias / newaliases: building, querying, dumping and
//! editing tables, compared with Postfix's own postmap and postalias on the
//! same sources (exit statuses, output, the exact warnings); corrupt and
//! truncated files; cdb interoperability with tinycdb; and rebuilding a
//! table while another thread reads it.
//!
//! Postfix and tinycdb must be installed (`scripts/test.sh` installs them);
//! without them these tests fail, they never skip.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libmail::table::cdb::{self, CdbTable};
use libmail::table::indexed::{self, IndexedTable, OnDuplicate};
use libmail::table::{OpenOptions, Table};

const POSTMAP: &str = env!("CARGO_BIN_EXE_postmap");
const POSTALIAS: &str = env!("CARGO_BIN_EXE_postalias");
const NEWALIASES: &str = env!("CARGO_BIN_EXE_newaliases");
const PF_POSTMAP: &str = "/usr/sbin/postmap";
const PF_POSTALIAS: &str = "/usr/sbin/postalias";
const TINYCDB: &str = "/usr/bin/cdb";

fn require(path: &str, what: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing ({what}): run scripts/test.sh, which installs it"
    );
}

/// A scratch directory with `etc/main.cf`; commands run inside it with
/// relative names, so Postfix's messages and ours name the same files.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("facteur-postmap-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(
            d.join("etc/main.cf"),
            "compatibility_level = 3.6\nmyhostname = mx.example.test\n",
        )
        .unwrap();
        Scratch(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, text: &[u8]) {
        fs::write(self.path(name), text).unwrap();
    }
    fn etc(&self) -> String {
        self.path("etc").to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Out {
    status: i32,
    stdout: String,
    stderr: String,
}

fn run_in(dir: &Path, prog: &str, args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .env_remove("MAIL_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = Out {
        status: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        !out.stderr.contains("panicked") && out.status != 101,
        "{prog} {args:?} panicked:\n{}",
        out.stderr
    );
    out
}

/// Sorted lines (for `-s`, whose order is unspecified), without the
/// build-time stamp postalias stores.
fn sorted(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .filter(|l| !l.starts_with("YP_LAST_MODIFIED"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The same sources, and the same steps on each side: Postfix's programs
/// in one scratch dir, ours in another.
struct Pair {
    pf: Scratch,
    us: Scratch,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        require(PF_POSTMAP, "Postfix's postmap, the reference");
        Pair {
            pf: Scratch::new(&format!("{tag}-pf")),
            us: Scratch::new(&format!("{tag}-us")),
        }
    }
    fn write(&self, name: &str, text: &[u8]) {
        self.pf.write(name, text);
        self.us.write(name, text);
    }
    /// Run `prog` (postmap or postalias) with `args` on both sides.
    fn run(&self, prog: &str, args: &[&str], stdin: &str) -> (Out, Out) {
        let (theirs, ours) = match prog {
            "postmap" => (PF_POSTMAP, POSTMAP),
            _ => (PF_POSTALIAS, POSTALIAS),
        };
        let pf_etc = self.pf.etc();
        let us_etc = self.us.etc();
        let mut a = vec!["-c", pf_etc.as_str()];
        a.extend_from_slice(args);
        let t = run_in(&self.pf.0, theirs, &a, stdin);
        let mut a = vec!["-c", us_etc.as_str()];
        a.extend_from_slice(args);
        let o = run_in(&self.us.0, ours, &a, stdin);
        (t, o)
    }
    /// Both sides must agree exactly (status, stdout, stderr).
    fn same(&self, prog: &str, args: &[&str], stdin: &str) -> Out {
        let (t, o) = self.run(prog, args, stdin);
        assert_eq!(
            o, t,
            "{prog} {args:?}: ours (left) differs from Postfix's (right)"
        );
        o
    }
    /// Both sides agree on status and stderr, and on stdout as a set.
    fn same_dump(&self, prog: &str, args: &[&str]) {
        let (t, o) = self.run(prog, args, "");
        assert_eq!(
            (o.status, &o.stderr),
            (t.status, &t.stderr),
            "{prog} {args:?}"
        );
        assert_eq!(sorted(&o.stdout), sorted(&t.stdout), "{prog} {args:?}");
    }
}

const SOURCE: &str = "# a comment\n\
Key1 v1\n\
key2 v2\n\
novalue\n\
KEY1 duplicate\n\
key3 a b  c\n  continued\n\
\"q k\" quoted key\n\
a\"b c\" d\n\
\"unbalanced x y\n\
\n\
user@example.com smtp:[relay.example.net]:587\n\
.example.com  OK\n\
k4   trailing   \n";

#[test]
fn build_warnings_and_dump_match_postfix() {
    let p = Pair::new("build");
    p.write("src", SOURCE.as_bytes());
    let out = p.same("postmap", &["src"], "");
    assert_eq!(
        out.stderr,
        "postmap: warning: src, line 4: expected format: key whitespace value\n\
         postmap: warning: src.db: duplicate entry: \"key1\"\n\
         postmap: warning: src, line 10: unbalanced '\"' in '\"unbalanced x y' -- ignoring this line\n"
    );
    p.same_dump("postmap", &["-s", "src"]);
    p.same_dump("postmap", &["-s", "hash:src"]);
    // The same source as btree, and the flags that change the build.
    p.same("postmap", &["btree:src"], "");
    p.same_dump("postmap", &["-s", "btree:src"]);
    for flags in [["-r"], ["-w"], ["-f"]] {
        p.same("postmap", &[flags[0], "src"], "");
        p.same_dump("postmap", &["-s", "src"]);
        for key in ["key1", "KEY1", "Key1", "\"q k\"", "a\"b c\"", "k4", "nope"] {
            p.same("postmap", &["-q", key, "src"], "");
            p.same("postmap", &["-fq", key, "src"], "");
        }
    }
}

#[test]
fn line_shape_and_utf8_warnings_match_postfix() {
    let p = Pair::new("shape");
    p.write("lead", b"  leading x\nk v\n");
    p.same("postmap", &["lead"], "");
    p.write("latin1", b"caf\xe9 v1\nk \xe9t\xe9\nCAF\xc3\x89 v3\n");
    p.same("postmap", &["latin1"], "");
    p.same_dump("postmap", &["-s", "latin1"]);
    p.write(
        "colon",
        b"a: b\nc:d e\n\"x:\" y\nh: \ni:\tj\nk\\: l\nm:: n\n:o p\n",
    );
    let o = p.same("postmap", &["colon"], "");
    assert!(o
        .stderr
        .contains("colon, line 1: record is in \"key: value\" format; is this an alias file?"));
    p.same_dump("postmap", &["-s", "colon"]);
    p.write("crlf", b"k v\r\nk2 v2 \r\n");
    p.same("postmap", &["crlf"], "");
    p.same_dump("postmap", &["-s", "crlf"]);
}

#[test]
fn queries_and_exit_statuses_match_postfix() {
    let p = Pair::new("query");
    p.write("src", SOURCE.as_bytes());
    p.write("other", b"key1 other\nonly-here yes\n");
    p.same("postmap", &["src", "other"], "");
    assert_eq!(p.same("postmap", &["-q", "KEY1", "src"], "").status, 0);
    assert_eq!(p.same("postmap", &["-q", "nope", "src"], "").status, 1);
    assert_eq!(
        p.same("postmap", &["-q", "only-here", "src", "other"], "")
            .stdout,
        "yes\n"
    );
    assert_eq!(
        p.same("postmap", &["-q", "key1", "other", "src"], "")
            .stdout,
        "other\n"
    );
    let keys = "key1\nKEY2\nnope\nuser@example.com\n.EXAMPLE.COM\nonly-here\n\"q k\"\nk4 \n";
    let o = p.same("postmap", &["-q", "-", "src", "other"], keys);
    assert_eq!(o.status, 0);
    assert_eq!(
        p.same("postmap", &["-q", "-", "src"], "nope\nnone\n")
            .status,
        1
    );
    // Usage and option errors.
    p.same("postmap", &[], "");
    p.same("postmap", &["-Z", "src"], "");
    p.same("postmap", &["-q", "a", "-d", "b", "src"], "");
    p.same("postmap", &["-q", "a", "-q", "b", "src"], "");
    p.same("postmap", &["-s", "-q", "a", "src"], "");
    // A missing source, a missing main.cf.
    p.same("postmap", &["nosuch"], "");
    p.same("postmap", &["-c", "/nonexistent", "src"], "");
    p.same("postmap", &["regexp:src"], "");
    // A missing table: Postfix's message, and ours adds how to build it.
    let (t, o) = p.run("postmap", &["-q", "x", "nosuch"], "");
    assert_eq!((o.status, t.status), (1, 1));
    assert_eq!(
        t.stderr,
        "postmap: fatal: open database nosuch.db: No such file or directory\n"
    );
    assert_eq!(
        o.stderr,
        "postmap: fatal: open database nosuch.db: No such file or directory; \
         run \"postmap hash:nosuch\" to build it\n"
    );
}

#[test]
fn delete_and_incremental_match_postfix() {
    let p = Pair::new("edit");
    p.write("src", SOURCE.as_bytes());
    p.write("t2", b"x 1\nkey2 also\n");
    p.same("postmap", &["src", "t2"], "");
    assert_eq!(p.same("postmap", &["-d", "KEY2", "src"], "").status, 0);
    assert_eq!(p.same("postmap", &["-d", "key2", "src"], "").status, 1);
    p.same_dump("postmap", &["-s", "src"]);
    assert_eq!(
        p.same(
            "postmap",
            &["-d", "-", "src", "t2"],
            "key1\nx\nnope\nkey2\n"
        )
        .status,
        0
    );
    p.same_dump("postmap", &["-s", "src"]);
    p.same_dump("postmap", &["-s", "t2"]);
    let (t, o) = p.run("postmap", &["-d", "x", "nosuch"], "");
    assert_eq!((o.status, t.status), (1, 1));
    assert!(o.stderr.starts_with(t.stderr.trim_end()), "{}", o.stderr);
    // -i: stdin entries are added; an existing key is a duplicate.
    let o = p.same(
        "postmap",
        &["-i", "src"],
        "new v\nKEY3 dup\nbad\n\"q k\" again\n",
    );
    assert!(
        o.stderr.contains("stdin, line 3: expected format"),
        "{}",
        o.stderr
    );
    p.same_dump("postmap", &["-s", "src"]);
    p.same("postmap", &["-ri", "src"], "key3 replaced\n");
    p.same_dump("postmap", &["-s", "src"]);
    // -i creates a missing table.
    p.same("postmap", &["-i", "fresh"], "a b\n");
    p.same_dump("postmap", &["-s", "fresh"]);
}

#[test]
fn postalias_matches_postfix() {
    let p = Pair::new("alias");
    require(PF_POSTALIAS, "Postfix's postalias, the reference");
    let aliases = "# aliases\n\
Postmaster: root\n\
root: admin, \n  other@example.com\n\
\"Quoted Name\": x\n\
bad line\n\
list: :include:/etc/list, |\"/usr/bin/foo bar\", /var/file\n\
list: dup\n\
empty:\n owner-list: root\n\
@x: y\n\
k8@: v\n\
c: d # tail\n\
n: Name <user @ example . com>,other(comment) , x\\ y\n\
e1:\n";
    p.write("aliases", aliases.as_bytes());
    let o = p.same("postalias", &["aliases"], "");
    assert!(o
        .stderr
        .contains("postalias: warning: aliases, line 6: need name:value pair"));
    assert!(o
        .stderr
        .contains("postalias: warning: aliases.db: duplicate entry: \"list\""));
    assert!(o
        .stderr
        .contains("postalias: warning: aliases, line 11: name must be local"));
    p.same_dump("postalias", &["-s", "aliases"]);
    for key in [
        "postmaster",
        "ROOT",
        "quoted name",
        "list",
        "empty",
        "@",
        "YP_MASTER_NAME",
        "yp_master_name",
        "n",
        "nope",
    ] {
        p.same("postalias", &["-q", key, "aliases"], "");
    }
    p.same(
        "postalias",
        &["-q", "-", "aliases"],
        "root\nlist\nnope\n@\n",
    );
    p.same("postalias", &["-d", "list", "aliases"], "");
    p.same_dump("postalias", &["-s", "aliases"]);
    p.same(
        "postalias",
        &["-i", "aliases"],
        "new: a, b\nbad\nroot: dup\n",
    );
    p.same_dump("postalias", &["-s", "aliases"]);
    p.same("postalias", &[], "");
    p.same("postalias", &["nosuch"], "");
}

#[test]
fn modes_follow_the_source() {
    use std::os::unix::fs::PermissionsExt;
    let p = Pair::new("mode");
    let mode =
        |s: &Scratch, f: &str| fs::metadata(s.path(f)).unwrap().permissions().mode() & 0o7777;
    for (src_mode, flags) in [
        (0o640, ""),
        (0o600, ""),
        (0o666, ""),
        (0o755, ""),
        (0o600, "-p"),
    ] {
        p.write("m", b"a b\n");
        for s in [&p.pf, &p.us] {
            fs::set_permissions(s.path("m"), fs::Permissions::from_mode(src_mode)).unwrap();
            let _ = fs::remove_file(s.path("m.db"));
        }
        let args: Vec<&str> = if flags.is_empty() {
            vec!["m"]
        } else {
            vec![flags, "m"]
        };
        p.same("postmap", &args, "");
        assert_eq!(
            mode(&p.us, "m.db"),
            mode(&p.pf, "m.db"),
            "source {src_mode:o} {flags}"
        );
    }
}

#[test]
fn newaliases_builds_every_alias_database() {
    let s = Scratch::new("newaliases");
    let dir = s.0.to_str().unwrap().to_string();
    s.write(
        "etc/main.cf",
        format!("alias_database = hash:{dir}/al1, cdb:{dir}/al2\n").as_bytes(),
    );
    s.write("al1", b"a: b\n");
    s.write("al2", b"c: d, e\n");
    let o = run_in(&s.0, NEWALIASES, &["-C", &s.etc()], "");
    assert_eq!(o.status, 0, "{}", o.stderr);
    let t = IndexedTable::open("hash:x", &format!("{dir}/al1"), &OpenOptions::default()).unwrap();
    assert_eq!(t.lookup("A").unwrap().as_deref(), Some("b"));
    assert_eq!(t.lookup("@").unwrap().as_deref(), Some("@"));
    let t = CdbTable::open("cdb:x", &format!("{dir}/al2"), &OpenOptions::default()).unwrap();
    assert_eq!(t.lookup("c").unwrap().as_deref(), Some("d, e"));
    // A missing alias file: postalias's fatal, exit 1.
    s.write(
        "etc/main.cf",
        format!("alias_database = hash:{dir}/missing\n").as_bytes(),
    );
    let o = run_in(&s.0, NEWALIASES, &["-C", &s.etc()], "");
    assert_eq!(o.status, 1);
    assert_eq!(
        o.stderr,
        format!("postalias: fatal: open {dir}/missing: No such file or directory\n")
    );
    assert_eq!(run_in(&s.0, NEWALIASES, &["--help"], "").status, 0);
}

#[test]
fn cdb_interoperates_with_tinycdb() {
    require(TINYCDB, "tinycdb's cdb tool");
    let s = Scratch::new("cdb");
    let etc = s.etc();
    s.write(
        "src",
        b"Key1 v1\nkey2 value two\nuser@example.com smtp:[x]:25\n",
    );
    let o = run_in(&s.0, POSTMAP, &["-c", &etc, "cdb:src"], "");
    assert_eq!(o.status, 0, "{}", o.stderr);
    // Ours -> tinycdb.
    let q = run_in(&s.0, TINYCDB, &["-q", "src.cdb", "key2"], "");
    assert_eq!((q.status, q.stdout.as_str()), (0, "value two"));
    let q = run_in(&s.0, TINYCDB, &["-q", "src.cdb", "Key1"], "");
    assert_eq!(q.status, 100, "keys are stored folded");
    let d = run_in(&s.0, TINYCDB, &["-d", "src.cdb"], "");
    assert_eq!(
        d.stdout,
        "+4,2:key1->v1\n+4,9:key2->value two\n+16,11:user@example.com->smtp:[x]:25\n\n"
    );
    // tinycdb -> ours (lookups, dump, delete).
    let input = "+3,5:one->first\n+3,6:two->second\n+5,0:empty->\n\n";
    let c = run_in(&s.0, TINYCDB, &["-c", "made.cdb"], input);
    assert_eq!(c.status, 0, "{}", c.stderr);
    let q = run_in(&s.0, POSTMAP, &["-c", &etc, "-q", "TWO", "cdb:made"], "");
    assert_eq!((q.status, q.stdout.as_str()), (0, "second\n"));
    let d = run_in(&s.0, POSTMAP, &["-c", &etc, "-s", "cdb:made"], "");
    assert_eq!(d.stdout, "one\tfirst\ntwo\tsecond\nempty\t\n");
    let o = run_in(&s.0, POSTMAP, &["-c", &etc, "-d", "one", "cdb:made"], "");
    assert_eq!(o.status, 0, "{}", o.stderr);
    let d = run_in(&s.0, TINYCDB, &["-d", "made.cdb"], "");
    assert_eq!(d.stdout, "+3,6:two->second\n+5,0:empty->\n\n");
    // 10,000 keys both ways, so every hash table and probe path is used.
    let mut big = String::new();
    for i in 0..10_000 {
        big.push_str(&format!(
            "+{},{}:k{i}->v{i}\n",
            format!("k{i}").len(),
            format!("v{i}").len()
        ));
    }
    big.push('\n');
    run_in(&s.0, TINYCDB, &["-c", "big.cdb"], &big);
    let t = CdbTable::open_path(
        "cdb:big",
        s.path("big").to_str().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(t.verify().unwrap(), 10_000);
    for i in (0..10_000).step_by(7) {
        assert_eq!(t.lookup(&format!("k{i}")).unwrap(), Some(format!("v{i}")));
    }
    let ours = s.path("ours.cdb");
    cdb::write_table(
        &ours,
        (0..10_000).map(|i| (format!("k{i}"), format!("v{i}"))),
        OnDuplicate::KeepFirst,
    )
    .unwrap();
    for i in (0..10_000).step_by(997) {
        let q = run_in(&s.0, TINYCDB, &["-q", "ours.cdb", &format!("k{i}")], "");
        assert_eq!(q.stdout, format!("v{i}"));
    }
    let st = run_in(&s.0, TINYCDB, &["-s", "ours.cdb"], "");
    assert!(
        st.stdout.contains("number of records: 10000"),
        "{}",
        st.stdout
    );
}

/// A small table of each format, truncated at every length and with random
/// bytes flipped: opening, looking up, dumping and verifying give clean
/// errors (or, for flips the format cannot detect at lookup, some answer),
/// never a panic; the `.db` checksum catches every flip.
#[test]
fn corrupt_and_truncated_tables_fail_cleanly() {
    let s = Scratch::new("corrupt");
    let etc = s.etc();
    s.write("t", b"alpha 1\nbeta 2\ngamma three\ndelta 4\n");
    for kind in ["hash", "cdb"] {
        let o = run_in(&s.0, POSTMAP, &["-c", &etc, &format!("{kind}:t")], "");
        assert_eq!(o.status, 0);
        let file = s.path(if kind == "hash" { "t.db" } else { "t.cdb" });
        let good = fs::read(&file).unwrap();
        let base = s.path("t");
        let base = base.to_str().unwrap();
        let spec = format!("{kind}:{base}");
        let open = |spec: &str| -> Result<Box<dyn Table>, libmail::table::TableError> {
            libmail::table::open(spec, &OpenOptions::default())
        };
        for n in 0..good.len() {
            fs::write(&file, &good[..n]).unwrap();
            match open(&spec) {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(base), "{kind} truncated to {n}: {msg}");
                }
                Ok(t) => {
                    // Only cdb can open a truncated file (the tables that
                    // survive); lookups must then fail or answer cleanly.
                    assert_eq!(kind, "cdb", "a .db truncated to {n} bytes opened");
                    for k in ["alpha", "beta", "gamma", "delta", "nope"] {
                        let _ = t.lookup(k);
                    }
                }
            }
            // Through the command too, for a few lengths.
            if n % 37 == 0 {
                let q = run_in(
                    &s.0,
                    POSTMAP,
                    &["-c", &etc, "-q", "alpha", &format!("{kind}:t")],
                    "",
                );
                assert!(
                    q.status == 0 || q.status == 1,
                    "{kind} truncated to {n}: {q:?}"
                );
                let d = run_in(&s.0, POSTMAP, &["-c", &etc, "-s", &format!("{kind}:t")], "");
                assert!(
                    d.status == 0 || d.status == 1,
                    "{kind} truncated to {n}: {d:?}"
                );
            }
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bad = good.clone();
            let i = (x % bad.len() as u64) as usize;
            bad[i] ^= 1 << ((x >> 40) % 8);
            if round % 4 == 0 {
                let j = ((x >> 20) % bad.len() as u64) as usize;
                bad[j] = (x >> 50) as u8;
            }
            fs::write(&file, &bad).unwrap();
            if kind == "hash" {
                match IndexedTable::open_path(&spec, base, &OpenOptions::default()) {
                    Err(e) => assert!(e.to_string().contains(base), "{e}"),
                    Ok(t) => {
                        for k in ["alpha", "beta", "gamma", "delta", "nope"] {
                            let _ = t.lookup(k);
                        }
                        let _ = t.iter().count();
                        if bad != good {
                            let e = t.verify().expect_err("verify() must catch every flip");
                            assert!(e.to_string().contains(base), "{e}");
                        }
                    }
                }
            } else if let Ok(t) = CdbTable::open_path(&spec, base, &OpenOptions::default()) {
                for k in ["alpha", "beta", "gamma", "delta", "nope"] {
                    let _ = t.lookup(k);
                }
                let _ = t.iter().count();
                let _ = t.verify();
            }
        }
        // Garbage and empty files.
        for junk in [&b""[..], b"garbage", &[0u8; 5000], &[0xffu8; 3000]] {
            fs::write(&file, junk).unwrap();
            if let Ok(t) = open(&spec) {
                assert_eq!(kind, "cdb");
                let _ = t.lookup("alpha");
            }
            let q = run_in(&s.0, POSTMAP, &["-c", &etc, "-s", &format!("{kind}:t")], "");
            assert!(q.status <= 1, "{q:?}");
        }
    }
}

/// One thread looks keys up in a loop, reopening when `changed()` says so,
/// while another rebuilds the table 20 times, alternating between a
/// version where every key maps to "v1" and one where every key maps to
/// "v2". Every lookup must succeed, and one open table must answer with
/// one version only.
#[test]
fn rebuild_while_reading() {
    for kind in ["hash", "cdb"] {
        let s = Scratch::new(&format!("rebuild-{kind}"));
        let base = s.path("t").to_str().unwrap().to_string();
        let file: PathBuf = s.path(if kind == "hash" { "t.db" } else { "t.cdb" });
        let keys: Vec<String> = (0..2000).map(|i| format!("user{i}@example.com")).collect();
        let write = |version: &str| {
            let entries = keys.iter().map(|k| (k.as_str(), version));
            if kind == "hash" {
                indexed::write_table(&file, entries, OnDuplicate::KeepFirst).unwrap();
            } else {
                cdb::write_table(&file, entries, OnDuplicate::KeepFirst).unwrap();
            }
        };
        write("v1");
        let spec = format!("{kind}:{base}");
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let done = done.clone();
            let keys = keys.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut t = libmail::table::open(&spec, &OpenOptions::default()).unwrap();
                let (mut lookups, mut reopens) = (0u64, 0u64);
                let mut versions = std::collections::BTreeSet::new();
                'outer: while start.elapsed() < Duration::from_secs(10) {
                    let mut seen: Option<String> = None;
                    for k in &keys {
                        let v = t
                            .lookup(k)
                            .unwrap_or_else(|e| panic!("lookup {k}: {e}"))
                            .unwrap_or_else(|| panic!("{k} not found"));
                        lookups += 1;
                        match &seen {
                            None => seen = Some(v),
                            Some(first) => assert_eq!(&v, first, "two versions in one open table"),
                        }
                    }
                    versions.insert(seen.unwrap());
                    if t.changed() {
                        t = libmail::table::open(&spec, &OpenOptions::default()).unwrap();
                        reopens += 1;
                    } else if done.load(Ordering::SeqCst) {
                        break 'outer;
                    }
                }
                (lookups, reopens, versions)
            })
        };
        for i in 0..20 {
            write(if i % 2 == 0 { "v2" } else { "v1" });
            std::thread::sleep(Duration::from_millis(15));
        }
        done.store(true, Ordering::SeqCst);
        let (lookups, reopens, versions) = reader.join().expect("the reader failed");
        assert!(
            lookups >= 2000 && reopens >= 1,
            "{kind}: {lookups} lookups, {reopens} reopens"
        );
        assert_eq!(
            versions.into_iter().collect::<Vec<_>>(),
            vec!["v1".to_string(), "v2".to_string()]
        );
        // Nothing but the table and the source dir is left (no temp files).
        let names: Vec<String> = fs::read_dir(&s.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
