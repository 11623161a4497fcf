//! postqueue's flags beyond the listing: `-i` and `-s` (Postfix's flush
//! service done in place: the deferred files concerned made due, then
//! `D` to qmgr), the access lists, the forced-expiry mark, and Postfix
//! 3.7's fatal messages and exit status (69 for every fatal, usage and
//! refusals included), each worded as Postfix 3.7.11 printed it on a
//! private instance.
//!
//! qmgr is stood in for by a UNIX socket bound at `public/qmgr`: after
//! postqueue has exited, every connection it made is waiting there, so
//! the bytes it sent are read back without waiting for anything.

mod common;

use std::ffi::CStr;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Setup;
use libmail::config::params::Params;
use libmail::queue::{
    Access, IdStyle, Limits, NewRecipient, Queue, QueueFile, QueueLayout, Writer,
};

const FATAL_DOWN: &str = "postqueue: fatal: Cannot flush mail queue - mail system is down\n";
const USAGE: &str = "postqueue: fatal: usage: postqueue -f | postqueue -i queueid | postqueue -j | postqueue -p | postqueue -s site\n";

fn layout(s: &Setup) -> QueueLayout {
    QueueLayout::from_params(&Params::load(&s.etc).unwrap()).unwrap()
}

/// A deferred retry time well in the future, whole seconds.
fn later() -> SystemTime {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_secs(now.as_secs() + 3600)
}

/// Writes a complete message into `q` for `rcpts`; deferred mail gets a
/// retry time an hour away (its mtime), as qmgr leaves it.
fn message(s: &Setup, q: Queue, rcpts: &[&str]) -> (String, PathBuf) {
    let l = layout(s);
    let mut w = Writer::create(&l, q, IdStyle::Short).unwrap();
    w.arrival_time(SystemTime::now()).unwrap();
    w.sender("alice@example.org").unwrap();
    for r in rcpts {
        w.recipient(&NewRecipient::new(r)).unwrap();
    }
    w.start_content().unwrap();
    w.content_line(b"Subject: x").unwrap();
    let d = w.finish().unwrap().sync().unwrap();
    let (id, path) = (d.id().as_str().to_string(), d.path().to_path_buf());
    fs::File::open(&path)
        .unwrap()
        .set_modified(later())
        .unwrap();
    (id, path)
}

fn mtime(p: &Path) -> SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

/// Due now: the mtime postqueue set lies between `before` (whole
/// seconds) and now.
fn assert_due(p: &Path, before: SystemTime) {
    let t = mtime(p);
    let floor =
        UNIX_EPOCH + Duration::from_secs(before.duration_since(UNIX_EPOCH).unwrap().as_secs());
    assert!(
        t >= floor && t <= SystemTime::now(),
        "{}: mtime {t:?} not set to now",
        p.display()
    );
}

/// Not made due: the retry time [`message`] gave (an hour after the
/// message was written) is still most of an hour away.
fn assert_untouched(p: &Path) {
    let ahead = mtime(p)
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        ahead > Duration::from_secs(3000),
        "{}: mtime changed",
        p.display()
    );
}

/// The stand-in for qmgr's trigger socket.
fn qmgr(s: &Setup) -> UnixListener {
    UnixListener::bind(s.queue.join("public/qmgr")).unwrap()
}

/// Every connection postqueue made (it has exited): the bytes of each.
fn triggers(l: &UnixListener) -> Vec<Vec<u8>> {
    l.set_nonblocking(true).unwrap();
    let mut all = Vec::new();
    loop {
        match l.accept() {
            Ok((mut c, _)) => {
                c.set_nonblocking(false).unwrap();
                let mut b = Vec::new();
                c.read_to_end(&mut b).unwrap();
                all.push(b);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return all,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The trigger bytes sent, all connections together.
fn sent(l: &UnixListener) -> Vec<u8> {
    triggers(l).concat()
}

fn postqueue(s: &Setup, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postqueue"))
        .args(["-c", &s.etc])
        .args(args)
        .output()
        .unwrap()
}

fn assert_ok_silent(out: &Output) {
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{out:?}"
    );
}

fn assert_fatal(out: &Output, stderr: &str) {
    assert_eq!(String::from_utf8_lossy(&out.stderr), stderr);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn forced_expiry_shows_as_a_hash_in_mailq_and_true_in_json() {
    let s = common::setup("pq-expire", "", true);
    let (a, pa) = message(&s, Queue::Deferred, &["u@a.example"]);
    let (b, pb) = message(&s, Queue::Hold, &["u@b.example"]);
    let (c, _) = message(&s, Queue::Deferred, &["u@c.example"]);
    // What postsuper -e leaves: the group-execute bit.
    for p in [&pa, &pb] {
        let mode = fs::metadata(p).unwrap().permissions().mode();
        fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o010)).unwrap();
    }
    let out = postqueue(&s, &["-p"]);
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8(out.stdout).unwrap();
    let first_word = |id: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("{id} in {listing}"))
            .to_string()
    };
    // Postfix 3.7.11: `ID#` deferred, `ID!#` held, plain ID otherwise.
    assert_eq!(first_word(&a), format!("{a}#"));
    assert_eq!(first_word(&b), format!("{b}!#"));
    assert_eq!(first_word(&c), c);
    let mailq = Command::new(env!("CARGO_BIN_EXE_mailq"))
        .args(["-C", &s.etc])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&mailq.stdout), listing);

    let out = postqueue(&s, &["-j"]);
    assert!(out.status.success(), "{out:?}");
    let json = String::from_utf8(out.stdout).unwrap();
    for (id, want) in [(&a, true), (&b, true), (&c, false)] {
        let line = json
            .lines()
            .find(|l| l.contains(&format!("\"queue_id\": \"{id}\"")))
            .unwrap_or_else(|| panic!("{id} in {json}"));
        assert!(
            line.contains(&format!("\"forced_expire\": {want}, ")),
            "{line}"
        );
    }
}

#[test]
fn i_makes_one_deferred_message_due_and_sends_only_d() {
    let s = common::setup("pq-i", "", true);
    let (a, pa) = message(&s, Queue::Deferred, &["u@a.example"]);
    let (_, pb) = message(&s, Queue::Deferred, &["u@a.example"]);
    let l = qmgr(&s);
    let before = SystemTime::now();
    assert_ok_silent(&postqueue(&s, &["-i", &a]));
    assert_due(&pa, before);
    assert_untouched(&pb);
    // `D` alone: a deferred scan that keeps the other retry times (no
    // `A`, no `F`, no pickup wake-up).
    assert_eq!(sent(&l), b"D");
    assert!(!s.queue.join("public/pickup").exists());
}

#[test]
fn i_with_an_id_not_deferred_changes_nothing_and_says_nothing() {
    let s = common::setup("pq-i-none", "", true);
    let (held, ph) = message(&s, Queue::Hold, &["u@a.example"]);
    let l = qmgr(&s);
    // Postfix's flush daemon answers "OK" for an ID it does not find in
    // the deferred queue: no message, exit 0, qmgr not asked.
    for id in ["B03359A62F2", held.as_str()] {
        assert_ok_silent(&postqueue(&s, &["-i", id]));
    }
    assert_untouched(&ph);
    assert_eq!(sent(&l), b"");
}

#[test]
fn i_with_a_bad_id_never_reaches_the_file_system() {
    let s = common::setup("pq-i-bad", "", true);
    let l = qmgr(&s);
    let long = "A".repeat(120);
    for (bad, shown) in [
        ("../etc/x", "../etc/x".to_string()),
        ("", String::new()),
        ("a.b", "a.b".to_string()),
        (long.as_str(), format!("{}...", &long[..100])),
    ] {
        let out = postqueue(&s, &["-i", bad]);
        assert_fatal(
            &out,
            &format!("postqueue: fatal: Cannot flush queue ID - invalid name: \"{shown}\"\n"),
        );
    }
    assert!(triggers(&l).is_empty(), "qmgr was contacted");
}

#[test]
fn i_and_s_with_the_mail_system_down_change_nothing() {
    let s = common::setup("pq-down", "relay_domains = a.example\n", true);
    let (a, pa) = message(&s, Queue::Deferred, &["u@a.example"]);
    assert_fatal(&postqueue(&s, &["-i", &a]), FATAL_DOWN);
    assert_fatal(&postqueue(&s, &["-s", "a.example"]), FATAL_DOWN);
    assert_fatal(&postqueue(&s, &["-f"]), FATAL_DOWN);
    assert_untouched(&pa);
}

#[test]
fn s_makes_the_sites_deferred_mail_due() {
    let s = common::setup("pq-s", "relay_domains = relay.example, [192.0.2.1]\n", true);
    let (_, to_site) = message(&s, Queue::Deferred, &["u@relay.example"]);
    let (_, mixed) = message(&s, Queue::Deferred, &["x@other.example", "v@RELAY.Example"]);
    let (_, other) = message(&s, Queue::Deferred, &["x@other.example"]);
    let (_, sub) = message(&s, Queue::Deferred, &["u@sub.relay.example"]);
    let (_, held) = message(&s, Queue::Hold, &["u@relay.example"]);
    let (_, done) = message(&s, Queue::Deferred, &["u@relay.example", "x@other.example"]);
    let mut qf = QueueFile::open(&done, Access::ReadWrite, &Limits::default()).unwrap();
    qf.mark_done_durable(&[0]).unwrap();
    drop(qf);
    // The done mark is a write: the retry time again, as qmgr sets it.
    fs::File::open(&done)
        .unwrap()
        .set_modified(later())
        .unwrap();
    let (_, literal) = message(&s, Queue::Deferred, &["u@[192.0.2.1]"]);

    let l = qmgr(&s);
    let before = SystemTime::now();
    assert_ok_silent(&postqueue(&s, &["-s", "Relay.Example"]));
    // Pending recipients in that very domain, case ignored; not its
    // subdomains (Postfix keeps one flush log per domain), not held mail,
    // not a recipient already delivered.
    assert_due(&to_site, before);
    assert_due(&mixed, before);
    for p in [&other, &sub, &held, &done, &literal] {
        assert_untouched(p);
    }
    assert_eq!(sent(&l), b"D");

    let before = SystemTime::now();
    assert_ok_silent(&postqueue(&s, &["-s", "[192.0.2.1]"]));
    assert_due(&literal, before);
    assert_untouched(&other);
    assert_eq!(sent(&l), b"D");

    // An eligible site with nothing deferred: success, qmgr not asked.
    let s2 = common::setup("pq-s-none", "relay_domains = relay.example\n", true);
    let l2 = qmgr(&s2);
    assert_ok_silent(&postqueue(&s2, &["-s", "relay.example"]));
    assert_eq!(sent(&l2), b"");
}

#[test]
fn s_refuses_a_site_not_in_fast_flush_domains() {
    // fast_flush_domains defaults to $relay_domains; a subdomain counts
    // (parent_domain_matches_subdomains names fast_flush_domains).
    let s = common::setup("pq-s-deny", "relay_domains = relay.example\n", true);
    let (_, p) = message(&s, Queue::Deferred, &["u@other.example"]);
    let l = qmgr(&s);
    for site in ["other.example", "[192.0.2.1]", "xrelay.example"] {
        assert_fatal(
            &postqueue(&s, &["-s", site]),
            &format!(
                "postqueue: fatal: Flush service is not configured for destination \"{site}\"\n"
            ),
        );
    }
    assert_ok_silent(&postqueue(&s, &["-s", "sub.relay.example"]));
    assert_untouched(&p);
    assert_eq!(sent(&l), b"");

    // An explicit list replaces relay_domains; an empty one refuses all.
    let s = common::setup(
        "pq-s-ffd",
        "relay_domains = relay.example\nfast_flush_domains = other.example\n",
        true,
    );
    assert_fatal(
        &postqueue(&s, &["-s", "relay.example"]),
        "postqueue: fatal: Flush service is not configured for destination \"relay.example\"\n",
    );
    let s = common::setup(
        "pq-s-empty",
        "relay_domains = relay.example\nfast_flush_domains =\n",
        true,
    );
    assert_fatal(
        &postqueue(&s, &["-s", "relay.example"]),
        "postqueue: fatal: Flush service is not configured for destination \"relay.example\"\n",
    );
}

#[test]
fn s_rejects_what_is_not_a_site() {
    let s = common::setup("pq-s-bad", "relay_domains = relay.example\n", true);
    let l = qmgr(&s);
    // Postfix 3.7.11's words for each of these.
    for bad in ["bad..site", "1.2.3.4", "[1.2.3]", "", "../x", "a/b"] {
        assert_fatal(
            &postqueue(&s, &["-s", bad]),
            &format!(
                "postqueue: fatal: Cannot flush mail queue - invalid destination: \"{bad}\"\n"
            ),
        );
    }
    assert!(triggers(&l).is_empty());
}

#[test]
fn usage_errors_are_postfix_s() {
    let s = common::setup("pq-usage", "", true);
    for args in [
        &["-p", "-f"][..],
        &["-i", "B03359A62F2", "-s", "x.example"][..],
        &["-p", "extra"][..],
        &[][..],
    ] {
        assert_fatal(&postqueue(&s, args), USAGE);
    }
    assert_fatal(
        &postqueue(&s, &["-x"]),
        &format!("postqueue: invalid option -- 'x'\n{USAGE}"),
    );
    assert_fatal(
        &postqueue(&s, &["-s"]),
        &format!("postqueue: option requires an argument -- 's'\n{USAGE}"),
    );
}

/// The login name of `uid`.
fn user_name(uid: u32) -> String {
    // SAFETY: the result is read at once, before any other passwd call.
    unsafe {
        let pw = libc::getpwuid(uid);
        assert!(!pw.is_null(), "no passwd entry for {uid}");
        CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

fn is_root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// The user postqueue runs as in [`as_user`]: `nobody` (65534) when the
/// tests run as root, else the user running them.
fn runner() -> (u32, String) {
    // SAFETY: getuid cannot fail.
    let uid = if is_root() {
        65534
    } else {
        unsafe { libc::getuid() }
    };
    (uid, user_name(uid))
}

/// An instance whose `mail_owner` is `owner`, without a queue.
fn acl_setup(tag: &str, owner: &str, extra: &str) -> Setup {
    let s = common::setup(tag, "", false);
    fs::write(
        Path::new(&s.etc).join("main.cf"),
        format!(
            "queue_directory = {}\nmail_owner = {owner}\n{extra}",
            s.queue.display()
        ),
    )
    .unwrap();
    // The config directory must be readable by that user.
    for d in [&s.top, &PathBuf::from(&s.etc)] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    s
}

/// `program` (postqueue or mailq) run as [`runner`] with `args`.
fn as_runner(program: &str, args: &[&str]) -> Output {
    let mut c = Command::new(program);
    c.args(args);
    if is_root() {
        // std drops the supplementary groups when root sets a uid.
        let (uid, _) = runner();
        c.uid(uid).gid(uid);
    }
    c.output().unwrap()
}

fn as_user(s: &Setup, args: &[&str]) -> Output {
    as_runner(
        env!("CARGO_BIN_EXE_postqueue"),
        &[&["-c", &s.etc], args].concat(),
    )
}

#[test]
fn access_lists_refuse_with_postfix_s_words() {
    // A mail_owner that is not the user postqueue runs as.
    let (uid, name) = runner();
    let s = acl_setup(
        "pq-acl",
        "root",
        "authorized_mailq_users = root\nauthorized_flush_users = root, postmaster\n",
    );
    let view =
        format!("postqueue: fatal: User {name}({uid}) is not allowed to view the mail queue\n");
    let flush =
        format!("postqueue: fatal: User {name}({uid}) is not allowed to flush the mail queue\n");
    assert_fatal(&as_user(&s, &["-p"]), &view);
    assert_fatal(&as_user(&s, &["-j"]), &view);
    assert_fatal(&as_user(&s, &["-f"]), &flush);
    assert_fatal(&as_user(&s, &["-i", "B03359A62F2"]), &flush);
    assert_fatal(&as_user(&s, &["-s", "relay.example"]), &flush);
    // Input is checked before the list, as in Postfix.
    assert_fatal(
        &as_user(&s, &["-i", "../x"]),
        "postqueue: fatal: Cannot flush queue ID - invalid name: \"../x\"\n",
    );
    // mailq is postqueue -p: the same list, the same words.
    assert_fatal(
        &as_runner(env!("CARGO_BIN_EXE_mailq"), &["-C", &s.etc]),
        &view,
    );

    // Lists that admit this user (the queue is not there: an empty
    // listing; the flush fails only because nothing runs).
    let upper = name.to_uppercase();
    let table = s.top.join("users");
    fs::write(&table, format!("{name} ok\n")).unwrap();
    let file = s.top.join("users.list");
    fs::write(&file, format!("# the admins\n{name}\n")).unwrap();
    for (list, admitted) in [
        // Postfix's shortcut: any list starting with static: admits all.
        ("static:anyone".to_string(), true),
        ("static:nobody-at-all".to_string(), true),
        (upper.clone(), true),
        (format!("root, {name}"), true),
        (format!("texthash:{}", table.display()), true),
        (file.display().to_string(), true),
        (format!("!{upper}, static:anyone"), false),
        (format!("!{}, static:anyone", file.display()), false),
        (String::new(), false),
        ("$no_such_parameter".to_string(), false),
    ] {
        let s = acl_setup(
            "pq-acl-list",
            "root",
            &format!("authorized_mailq_users = {list}\nauthorized_flush_users = {list}\n"),
        );
        let out = as_user(&s, &["-p"]);
        if admitted {
            assert!(out.status.success(), "{list:?}: {out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "Mail queue is empty\n"
            );
            assert_fatal(&as_user(&s, &["-f"]), FATAL_DOWN);
        } else {
            assert_fatal(&out, &view);
            assert_fatal(&as_user(&s, &["-f"]), &flush);
        }
    }

    // A list file that is missing: Postfix's fatal.
    let missing = s.top.join("missing");
    let s2 = acl_setup(
        "pq-acl-missing",
        "root",
        &format!("authorized_mailq_users = {}\n", missing.display()),
    );
    assert_fatal(
        &as_user(&s2, &["-p"]),
        &format!(
            "postqueue: fatal: open file {}: No such file or directory\n",
            missing.display()
        ),
    );
}

#[test]
fn root_and_mail_owner_are_always_allowed() {
    // The user postqueue runs as is mail_owner: the list does not count.
    let (_, name) = runner();
    let s = acl_setup(
        "pq-acl-owner",
        &name,
        "authorized_mailq_users = nosuchuser\nauthorized_flush_users = nosuchuser\n",
    );
    assert_fatal(&as_user(&s, &["-f"]), FATAL_DOWN);
    let out = as_user(&s, &["-p"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Mail queue is empty\n"
    );

    // Root, whoever mail_owner is (only when the tests run as root).
    if is_root() {
        let s = acl_setup(
            "pq-acl-root",
            "nobody",
            "authorized_mailq_users = nosuchuser\n",
        );
        let out = postqueue(&s, &["-p"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Mail queue is empty\n"
        );
    }
}
