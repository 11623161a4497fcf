//! Differential test of the master.cf side of `postconf` (`-M`, `-F`, `-P`
//! and their edits) against Postfix's own `/usr/sbin/postconf`.
//!
//! Inputs: the stock master.cf files (`tests/data/master.cf.proto`,
//! upstream; `tests/data/master.cf.debian`), every master.cf of
//! `tests/data/postconf-corpus/` (with its main.cf), and the crafted files
//! in [`crafted`] (continuations, `{ }` groups, `-o` forms, duplicates,
//! odd whitespace, long lines, errors).
//!
//! * [`show_commands_match`]: for every input and every command of
//!   [`SHOW`], standard output and exit status must be identical, and so
//!   must the `postconf: fatal:` line when there is one.
//! * [`edits_match`]: each edit of [`EDITS`] runs on two copies of an
//!   input, one per program; the resulting master.cf must be byte
//!   identical, with the same exit status and fatal message.
//!
//! Intended differences (Postfix bugs, see docs/postconf-differences.md)
//! are kept out of the inputs and checked on their own in
//! [`intended_differences`].
//!
//! Postfix must be installed: run `scripts/test.sh`, which installs it.
//! Without it these tests fail; they never skip silently.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const POSTFIX_POSTCONF: &str = "/usr/sbin/postconf";
const OUR_POSTCONF: &str = env!("CARGO_BIN_EXE_postconf");

fn require_postfix() {
    assert!(
        Path::new(POSTFIX_POSTCONF).exists(),
        "{POSTFIX_POSTCONF} is missing: these differential tests compare with Postfix 3.7's \
         postconf. Run scripts/test.sh, which installs postfix."
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A temporary config directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "facteur-mastercf-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
    fn write(&self, name: &str, text: &[u8]) {
        fs::write(self.0.join(name), text).unwrap();
    }
    fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Output {
    stdout: String,
    stderr: String,
    code: i32,
}

impl Output {
    /// The `postconf: fatal:` line, if any.
    fn fatal(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find(|l| l.starts_with("postconf: fatal: "))
    }
}

fn run(bin: &str, dir: &str, args: &[&str]) -> Output {
    let out = Command::new(bin)
        .arg0("postconf")
        .arg("-c")
        .arg(dir)
        .args(args)
        .env_remove("MAIL_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

/// An input: a name, a main.cf and a master.cf.
struct Input {
    name: String,
    main: Vec<u8>,
    master: Vec<u8>,
}

fn input(name: &str, master: &str) -> Input {
    Input {
        name: name.to_string(),
        main: b"compatibility_level = 3.6\n".to_vec(),
        master: master.as_bytes().to_vec(),
    }
}

/// Crafted master.cf files, each exercising one part of the syntax.
fn crafted() -> Vec<Input> {
    vec![
        input(
            "continuations",
            "# head\nsmtp\tinet\tn\t-\ty\t-\t-\tsmtpd\n\t-o smtpd_tls_security_level=may\n# comment inside\n\n   \n   # indented comment\n  -o\n   smtpd_sasl_auth_enable=yes\npickup unix n - y 60 1 pickup\nsubmission inet n - y - - smtpd\n  -o syslog_name=postfix/submission\n  -o smtpd_client_restrictions=$mua_client_restrictions\n  -o milter_macro_daemon_name=ORIGINATING\n",
        ),
        input(
            "braces",
            "submission inet n - n - - smtpd -o syslog_name=postfix/submission -o { smtpd_client_restrictions = permit_sasl_authenticated, reject } -o smtpd_tls_security_level=encrypt -v -D -o\n  milter_macro_daemon_name=ORIGINATING\nfoo unix - - - - - pipe flags=R user=x argv=/bin/echo { a b  c } {x}  {}   $sender ${recipient}\n127.0.0.1:10025 inet n - n - 10 smtpd -o content_filter= -o { x = } -o {y=} -o mynetworks=127.0.0.0/8,[::1]/128\nb unix - - - - - cmd x { a {b c} d } {{x}} a{b c}d\nc unix - - - - - {cmd x} { } z\nd unix - - - - - cmd {a b} {c d} -o {e = f}\ne unix - - - - - cmd -o { x = {1 2} } -o {z = b  c}\n",
        ),
        input(
            "option-forms",
            "a unix - - - - - cmd - x -o a=b\nb unix - - - - - cmd -vo a=b -xoq=r -D\nc unix - - - - - cmd -o\nd unix - - - - - cmd -- -o a=b\ne unix - - - - - smtpd -n foo -o a=b\nf unix - - - - - smtpd -o q -o =x -o a=b=c -o  b = c -o d=e\ng unix - - - - - smtpd -x -i foo -c -d -D -l -m -s -S -t y -u -V -z -o q=r\n",
        ),
        input(
            "duplicates",
            "a unix - - - - - smtpd -o y=1 -o z=0\nb unix - - - - - smtpd x\na unix - - - - - smtpd -o x=2 -o z=3\nc unix - - - - - cmd\nc unix - - - - - cmd -o x=1\nd unix - - - - - cmd -o y=2\nd unix - - - - - cmd\nsmtp inet n - n - - smtpd\nsmtp inet n - n - - smtpd -v\n",
        ),
        input(
            "odd-whitespace",
            "smtp   \t  inet n\t-   n  -  -   smtpd   \n\t  -o   a=1  \t\npickup\tunix\tn\t-\tn\t60\t1\tpickup\t\t\nx unix - - - - - cmd\n\n\n\ny unix - - - - - cmd   a    b\n",
        ),
        input(
            "crlf",
            "smtp inet n - n - - smtpd\r\n  -o a=1\r\n# c\r\npickup unix n - n 60 1 pickup\r\n",
        ),
        input(
            "columns",
            "abcdefghijk unix - - - - - pipe x\nabcdefghij unix - - - - - pipe x\nabcdefghi unix - - - - - pipe x\ns1 unix-dgram - - - - - pipe x\ns2 unix - - - 1234567? - pipe x\ns3 unix - - - 12345678? - pipe x\ns5 unix - - - 1234567 123456789 pipe x\ns8 fifo - - - 0 0 pipe -oa=b\ns9 pass - - - 0 00 pipe -oa=b\n[::1]:10025 inet n - n - - smtpd\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa unix - - - - - pipe x\n",
        ),
        input("long-lines", &long_lines()),
        input(
            "expansion",
            "x unix - - - - - /usr/lib/cmd -o a=$myhostname -o {c = $a d} -o e=$service_name/$process_name -o f=${a?{yes}:{no}} -v\ny unix - - - - - cmd -o a=1 -o b=$a\n",
        ),
        input("empty", ""),
        input("comments-only", "# nothing\n\n   # here\n"),
        input(
            "no-final-newline",
            "smtp inet n - n - - smtpd\n  -o a=b",
        ),
        input("fatal-field", "a unix - - - - - smtpd {abc\nb unix x - - - - smtpd\n"),
        input("fatal-wakeup", "# c\n\na unix\n  - -\n\n# x\n  - x - - - cmd\n"),
        input("fatal-count", "a unix - - - - -\n"),
        input("fatal-type", "a {unix} - - - - - smtpd\n"),
        input("leading-whitespace", " a unix - - - - - pipe\nb unix - - - - - cmd\n"),
    ]
}

fn long_lines() -> String {
    let mut s = String::new();
    for n in [14, 15, 16, 17, 18, 60, 61, 62] {
        s.push_str(&format!("s{n} unix - - - - - pipe {} b\n", "a".repeat(n)));
    }
    for n in [60, 61, 62] {
        s.push_str(&format!("f{n} unix - - - - - {} x\n", "a".repeat(n)));
    }
    for n in [64, 65, 66, 67] {
        s.push_str(&format!(
            "p{n} unix - - - - - cmd -o {{p = a  {}}}\n",
            "w".repeat(n)
        ));
    }
    let words: String = (1..40).map(|i| format!("word{i}, ")).collect();
    s.push_str(&format!(
        "r unix - - - - - cmd -o {{smtpd_recipient_restrictions = {words}}}\n"
    ));
    s
}

fn stock_and_corpus() -> Vec<Input> {
    let root = repo();
    let mut v = vec![
        Input {
            name: "stock-proto".into(),
            main: b"compatibility_level = 3.6\n".to_vec(),
            master: fs::read(root.join("tests/data/master.cf.proto")).unwrap(),
        },
        Input {
            name: "stock-debian".into(),
            main: b"compatibility_level = 3.6\n".to_vec(),
            master: fs::read(root.join("tests/data/master.cf.debian")).unwrap(),
        },
    ];
    let corpus = root.join("tests/data/postconf-corpus");
    let mut dirs: Vec<_> = fs::read_dir(&corpus)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    for d in dirs {
        let (Ok(main), Ok(master)) = (fs::read(d.join("main.cf")), fs::read(d.join("master.cf")))
        else {
            continue;
        };
        v.push(Input {
            name: format!("corpus/{}", d.file_name().unwrap().to_string_lossy()),
            main,
            master,
        });
    }
    v
}

/// The show commands compared on every input.
const SHOW: &[&[&str]] = &[
    &["-M"],
    &["-Mf"],
    &["-F"],
    &["-Ff"],
    &["-P"],
    &["-Pf"],
    &["-PH"],
    &["-Ph"],
    &["-FH"],
    &["-Mx"],
    &["-Px"],
    &["-Fx"],
    &["-Mfx"],
    &["-M", "smtp"],
    &["-M", "smtp/inet", "pickup/unix", "a", "a"],
    &["-M", "*/unix"],
    &["-M", "nosuch", "x/"],
    &["-F", "*/*/command"],
    &["-F", "smtp/inet/chroot", "a/unix/*", "x//command"],
    &["-Ff", "*/*/command"],
    &["-P", "*/*/syslog_name"],
    &["-P", "relay/unix", "a/unix/x"],
    &["-P", "x/unix/a", "y"],
];

/// Commands that fail whatever the input (Postfix sleeps a second after a
/// fatal error, so these run on one input only).
const SHOW_ERRORS: &[&[&str]] = &[
    &["-M", "/unix"],
    &["-M", "a*"],
    &["-M", "a/unix/x"],
    &["-F", "a/unix/foo"],
    &["-F", "a/b/c/d"],
    &["-P", "a/unix/y/z"],
    &["-FMP"],
    &["-Mn"],
    &["-Mh"],
    &["-Fd"],
];

fn compare(inp: &Input, dir: &TempDir, args: &[&str], failures: &mut Vec<String>) -> Output {
    let theirs = run(POSTFIX_POSTCONF, dir.path(), args);
    let ours = run(OUR_POSTCONF, dir.path(), args);
    let what = format!("{}: postconf {}", inp.name, args.join(" "));
    if theirs.stdout != ours.stdout {
        failures.push(format!(
            "{what}: stdout differs\n--- postfix\n{}--- facteur\n{}",
            theirs.stdout, ours.stdout
        ));
    }
    if theirs.code != ours.code {
        failures.push(format!(
            "{what}: exit {} (postfix) vs {} (facteur)\n{}{}",
            theirs.code, ours.code, theirs.stderr, ours.stderr
        ));
    } else if theirs.fatal() != ours.fatal() {
        failures.push(format!(
            "{what}: fatal message differs\n  postfix: {:?}\n  facteur: {:?}",
            theirs.fatal(),
            ours.fatal()
        ));
    }
    theirs
}

fn check_show(inp: &Input, failures: &mut Vec<String>) {
    let dir = TempDir::new(&inp.name);
    dir.write("main.cf", &inp.main);
    dir.write("master.cf", &inp.master);
    // An input Postfix refuses: one more command is enough.
    if compare(inp, &dir, SHOW[0], failures).code != 0 {
        compare(inp, &dir, &["-F"], failures);
        return;
    }
    for args in &SHOW[1..] {
        compare(inp, &dir, args, failures);
    }
}

#[test]
fn show_commands_match() {
    require_postfix();
    let mut inputs = stock_and_corpus();
    inputs.extend(crafted());
    assert!(inputs.len() >= 19, "inputs went missing: {}", inputs.len());
    // Workers: most of the time goes to process start-up, and to the
    // second Postfix sleeps after each fatal error.
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for chunk in inputs.chunks(inputs.len().div_ceil(6)) {
            let failures = &failures;
            s.spawn(move || {
                let mut mine = Vec::new();
                for inp in chunk {
                    check_show(inp, &mut mine);
                }
                failures.lock().unwrap().extend(mine);
            });
        }
        for args in SHOW_ERRORS {
            let (failures, stock) = (&failures, &inputs[1]);
            s.spawn(move || {
                let dir = TempDir::new("errors");
                dir.write("main.cf", &stock.main);
                dir.write("master.cf", &stock.master);
                let mut mine = Vec::new();
                compare(stock, &dir, args, &mut mine);
                failures.lock().unwrap().extend(mine);
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} difference(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A master.cf to edit: comments inside and after entries, continuation
/// lines, duplicates.
const EDIT_BASE: &str = "# head comment\nsmtp      inet  n       -       y       -       -       smtpd\n  -o a=1\n#  -o commented=1\n  -o   b=2\npickup    unix  n       -       y       60      1       pickup\n\n# blank above\nrelay     unix  -       -       y       -       -       smtp\n        -o syslog_name=postfix/$service_name\n# trailing\nx unix - - - - - pipe -v flags=R argv=/bin/cat {a b}\ndup unix - - - - - cmd -o q=1\ndup unix - - - - - cmd\n";

/// Edits: (base: "base" = [`EDIT_BASE`], "debian" = the stock Debian file,
/// or literal master.cf text), then the arguments.
const EDITS: &[(&str, &[&str])] = &[
    ("base", &["-M", "smtp/inet=smtp inet n - n - - smtpd -o x=1"]),
    ("base", &["-M", "new/unix=new unix - - n - - pipe flags=R user=x argv=/bin/cat -o y=2"]),
    ("base", &["-M", "foo/unix=pickup unix - - - - - pickup"]),
    ("base", &["-M", "pickup/unix=smtp inet n - - - - smtpd"]),
    ("base", &["-M", "dup/unix=dup unix - - - - - cmd2"]),
    ("base", &["-M", "a/unix=a unix - - - - - cmd", "b/unix=b unix - - - - - cmd"]),
    ("base", &["-M", "x/unix=x unix - - - - - cmd {a b} -o {x = y z}  -o {q=1} {c d}"]),
    ("base", &["-e", "-M", "  pickup/unix =  pickup  unix - - - - - pickup  "]),
    ("base", &["-MX", "smtp/inet"]),
    ("base", &["-MX", "pickup/*", "nope/unix"]),
    ("base", &["-MX", "dup/unix"]),
    ("base", &["-MX", "  pickup/unix"]),
    ("base", &["-MX", "pickup/unix  "]),
    ("base", &["-M#", "smtp/inet"]),
    ("base", &["-M#", "*/unix"]),
    ("base", &["-F", "smtp/inet/chroot=n"]),
    ("base", &["-F", "smtp/inet/command=smtpd -o q=1"]),
    ("base", &["-F", "smtp/inet/service=foo"]),
    ("base", &["-F", "smtp/inet/type=unix"]),
    ("base", &["-F", "pickup/unix/wakeup=30?"]),
    ("base", &["-F", "pickup/unix/process_limit="]),
    ("base", &["-F", "pickup/unix/command={a b} { c } -o { x = y z }"]),
    ("base", &["-F", "*/unix/chroot=n"]),
    ("base", &["-F", "nope/unix/chroot=n"]),
    ("base", &["-F", "relay/unix/chroot=n", "relay/unix/wakeup=5"]),
    ("base", &["-P", "smtp/inet/a=9"]),
    ("base", &["-P", "smtp/inet/c=3"]),
    ("base", &["-P", "x/unix/c=3"]),
    ("base", &["-P", "dup/unix/q=2"]),
    ("base", &["-P", "*/*/zz=1"]),
    ("base", &["-P", "smtp/inet/a=", "pickup/unix/b=2"]),
    ("base", &["-P", "pickup/unix/a =c"]),
    ("base", &["-PX", "smtp/inet/a"]),
    ("base", &["-PX", "smtp/inet/zz"]),
    ("base", &["-PX", "*/*/a"]),
    ("debian", &["-M", "submission/inet=submission inet n - y - - smtpd -o syslog_name=postfix/submission -o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes"]),
    ("debian", &["-P", "relay/unix/smtp_helo_timeout=5"]),
    ("debian", &["-F", "maildrop/unix/command=pipe flags=DRXhu user=vmail argv=/usr/bin/maildrop -d ${recipient}"]),
    ("debian", &["-MX", "uucp/unix", "ifmail/unix"]),
    ("debian", &["-M#", "tlsmgr/unix"]),
    // Errors: nothing may be written.
    ("base", &["-F", "pickup/unix/wakeup=x"]),
    ("base", &["-F", "pickup/unix/type=foo"]),
    ("base", &["-F", "pickup/unix/service=a b"]),
    ("base", &["-F", "pickup/unix/bogus=n"]),
    ("base", &["-F", "pickup/unix=n"]),
    ("base", &["-F", "pickup/unix/*=n"]),
    ("base", &["-M", "pickup/unix=pickup unix x"]),
    ("base", &["-M", "pickup/unix=pickup unix x - - - - pickup"]),
    ("base", &["-M", "pickup=pickup unix - - n - - pickup"]),
    ("base", &["-M", "pickup/unix=x", "pickup/unix"]),
    ("base", &["-P", "smtp/inet/a=x y"]),
    ("base", &["-P", "smtp/inet/a=1", "pickup/unix/b"]),
    ("base", &["-P", "a/unix/*=1"]),
    ("base", &["-MX", "pickup/unix=x"]),
    ("base", &["-M#", "pickup/unix=x"]),
    ("base", &["-FX", "pickup/unix/chroot"]),
    ("base", &["-P#", "pickup/unix/x"]),
    ("base", &["-Me"]),
    ("base", &["-MX"]),
    ("base", &["-Mx", "pickup/unix=c"]),
    ("y unix x - - - - smtpd\n", &["-F", "y/unix/private=n"]),
    ("y\n unix - - - - - smtpd\n", &["-MX", "y/unix"]),
    ("# c\nname=x unix - - - - - smtpd\n", &["-MX", "y/unix"]),
    ("x unix - - - - - smtpd\ny unix x - - - - smtpd\n", &["-MX", "x/unix"]),
    ("x unix n - y 60 1 pickup\n  -o a=b", &["-M#", "x/unix"]),
    ("x unix n - y 60 1 pickup\n  -o a=b", &["-F", "x/unix/chroot=n"]),
    ("", &["-M", "a/unix=a unix - - - - - cmd"]),
    ("base", &["-M", "*/unix=foo unix - - - - - cmd"]),
    ("base", &["-MX", "*/*"]),
    (
        "a inet n - n - - smtpd\r\n  -o x=1\r\n\r\n# c\r\nb unix - - - - - cmd\r\n",
        &["-P", "a/inet/y=2"],
    ),
    (
        "a inet n - n - - smtpd\r\n  -o x=1\r\n\r\n# c\r\nb unix - - - - - cmd\r\n",
        &["-M#", "a/inet"],
    ),
    (
        "a unix - - - - - cmd\n\n   # indented\n  -o x=1\n\t\n  -o y=2\nb unix - - - - - cmd\n",
        &["-F", "a/unix/chroot=y"],
    ),
    (
        "a unix - - - - - cmd -oa=b -vo c=d\nb unix - - - - - cmd\n",
        &["-P", "a/unix/e=f"],
    ),
];

#[test]
fn edits_match() {
    require_postfix();
    let debian = fs::read_to_string(repo().join("tests/data/master.cf.debian")).unwrap();
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for chunk in EDITS.chunks(EDITS.len().div_ceil(8)) {
            let (failures, debian) = (&failures, &debian);
            s.spawn(move || {
                let mut mine = Vec::new();
                for (base, args) in chunk {
                    edit_one(base, args, debian, &mut mine);
                }
                failures.lock().unwrap().extend(mine);
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} difference(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn edit_one(base: &str, args: &[&str], debian: &str, failures: &mut Vec<String>) {
    {
        let text = match base {
            "base" => EDIT_BASE,
            "debian" => debian,
            literal => literal,
        };
        let what = format!("postconf {}", args.join(" "));
        let theirs_dir = TempDir::new("edit-postfix");
        let ours_dir = TempDir::new("edit-facteur");
        for d in [&theirs_dir, &ours_dir] {
            d.write("main.cf", b"compatibility_level = 3.6\n");
            d.write("master.cf", text.as_bytes());
        }
        let theirs = run(POSTFIX_POSTCONF, theirs_dir.path(), args);
        let ours = run(OUR_POSTCONF, ours_dir.path(), args);
        if theirs.code != ours.code {
            failures.push(format!(
                "{what}: exit {} (postfix) vs {} (facteur)\n{}{}",
                theirs.code, ours.code, theirs.stderr, ours.stderr
            ));
        }
        let fatal_of = |o: &Output, dir: &TempDir| o.fatal().map(|f| f.replace(dir.path(), "DIR"));
        if fatal_of(&theirs, &theirs_dir) != fatal_of(&ours, &ours_dir) {
            failures.push(format!(
                "{what}: fatal message differs\n  postfix: {:?}\n  facteur: {:?}",
                theirs.fatal(),
                ours.fatal()
            ));
        }
        let (t, o) = (theirs_dir.read("master.cf"), ours_dir.read("master.cf"));
        if t != o {
            failures.push(format!(
                "{what}: master.cf differs\n--- postfix\n{}--- facteur\n{}",
                String::from_utf8_lossy(&t),
                String::from_utf8_lossy(&o)
            ));
        }
        if ours_dir.0.join("master.cf.tmp").exists() {
            failures.push(format!("{what}: master.cf.tmp left behind"));
        }
    }
}

/// Where Facteur deliberately differs (Postfix bugs), the Facteur side.
#[test]
fn intended_differences() {
    require_postfix();
    let dir = TempDir::new("intended");
    dir.write("main.cf", b"compatibility_level = 3.6\n");

    // -oNAME=VALUE with an `o` in it: Postfix's postconf splits at every
    // `o`; Facteur reads it as getopt (and Postfix's daemons) do.
    dir.write("master.cf", b"a unix - - - - - cmd -osyslog_name=foo\n");
    let theirs = run(POSTFIX_POSTCONF, dir.path(), &["-M"]);
    assert!(
        theirs.stdout.contains("-o sysl -o g_name=f -o -o"),
        "{}",
        theirs.stdout
    );
    let ours = run(OUR_POSTCONF, dir.path(), &["-M"]);
    assert!(
        ours.stdout.ends_with("cmd -o syslog_name=foo\n"),
        "{}",
        ours.stdout
    );
    let ours = run(OUR_POSTCONF, dir.path(), &["-P"]);
    assert_eq!(ours.stdout, "a/unix/syslog_name = foo\n");

    // -Fh with a command of four characters or less: Postfix glues the
    // arguments to it.
    dir.write("master.cf", b"a unix - - - - - pipe flags=R user=x\n");
    let theirs = run(POSTFIX_POSTCONF, dir.path(), &["-Fh", "a/unix/command"]);
    assert_eq!(theirs.stdout, "pipeflags=R user=x\n");
    let ours = run(OUR_POSTCONF, dir.path(), &["-Fh", "a/unix/command"]);
    assert_eq!(ours.stdout, "pipe flags=R user=x\n");

    // A generated entry after a last line without newline: Postfix glues
    // them together.
    dir.write("master.cf", b"x unix - - - - - cmd\n# trailing");
    let ours = run(
        OUR_POSTCONF,
        dir.path(),
        &["-M", "new/unix=new unix - - - - - cmd"],
    );
    assert_eq!(ours.code, 0, "{}", ours.stderr);
    assert_eq!(
        String::from_utf8(dir.read("master.cf")).unwrap(),
        "x unix - - - - - cmd\n# trailing\nnew        unix  -       -       -       -       -       cmd\n"
    );

    // An empty command: Postfix crashes.
    dir.write("master.cf", b"x unix - - - - - cmd\n");
    let ours = run(OUR_POSTCONF, dir.path(), &["-F", "x/unix/command="]);
    assert_eq!(ours.code, 1);
    assert_eq!(
        ours.fatal(),
        Some("postconf: fatal: -Fe does not accept an empty command field")
    );
    assert_eq!(dir.read("master.cf"), b"x unix - - - - - cmd\n");
}

#[test]
fn missing_master_cf() {
    require_postfix();
    let dir = TempDir::new("missing");
    dir.write("main.cf", b"compatibility_level = 3.6\n");
    for args in [
        &["-M"][..],
        &["-MX", "a/unix"],
        &["-M", "a/unix=a unix - - - - - cmd"],
    ] {
        let theirs = run(POSTFIX_POSTCONF, dir.path(), args);
        let ours = run(OUR_POSTCONF, dir.path(), args);
        assert_eq!(theirs.code, ours.code, "{args:?}");
        assert_eq!(theirs.fatal(), ours.fatal(), "{args:?}");
        assert!(!dir.0.join("master.cf").exists());
    }
}
