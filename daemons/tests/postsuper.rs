//! postsuper against a running instance: each operation with Postfix's
//! messages and log lines, the structure repair and purge, and the
//! operations under live traffic (nothing lost that was not asked to be
//! deleted, nothing delivered twice, no corrupt file, no daemon down).

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{user, wait_for, Instance};
use libmail::queue::{Access, Limits, QueueFile};

/// An instance where mail to later.example waits in deferred/ (no such
/// transport) and a `Subject: hold me` goes to hold/.
fn instance(tag: &str) -> Instance {
    let i = Instance::new(tag, "");
    let top = i.top.display().to_string();
    i.file("transport", "later.example  nosuch:\n");
    i.file("header_checks", "/^Subject: hold me/ HOLD\n");
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!(
        "transport_maps = texthash:{top}/transport\nheader_checks = regexp:{top}/header_checks\n"
    ));
    std::fs::write(&main, text).unwrap();
    i
}

fn message(subject: &str, mid: &str) -> String {
    format!("Subject: {subject}\nMessage-ID: <{mid}>\n\nbody of {subject}\n")
}

/// Runs postsuper with `args` and `stdin`.
fn postsuper(i: &Instance, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["-c", i.etc.as_str()];
    all.extend_from_slice(args);
    common::run_with_input(&common::program("postsuper"), &all, stdin)
}

/// postsuper's standard error, asserting success.
fn ok(i: &Instance, args: &[&str]) -> String {
    let out = postsuper(i, args, "");
    assert!(out.status.success(), "postsuper {args:?}: {out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// Queue IDs of the files in queue `q`.
fn ids(i: &Instance, q: &str) -> Vec<String> {
    let mut v: Vec<String> = i
        .queue_files(q)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The Message-ID header of a queue file.
fn message_id(path: &Path) -> Option<String> {
    let qf = QueueFile::open(path, Access::ReadOnly, &Limits::default()).ok()?;
    let mut r = qf.content();
    let mut line = Vec::new();
    while r.read_line(&mut line, 1 << 20).ok()? {
        let l = String::from_utf8_lossy(&line);
        if l.is_empty() {
            return None;
        }
        if let Some(v) = l.strip_prefix("Message-ID: ") {
            return Some(v.trim_matches(['<', '>']).to_string());
        }
    }
    None
}

#[test]
fn each_operation_with_postfix_messages_and_log_lines() {
    let mut i = instance("postsuper-ops");
    i.start();
    for n in 1..=3 {
        i.send(
            &["-f", "a@example.org", &format!("x{n}@later.example")],
            &message(&format!("s{n}"), &format!("s{n}@test")),
        );
    }
    i.send(
        &["-f", "a@example.org", "h@later.example"],
        &message("hold me", "h@test"),
    );
    i.kick();
    wait_for(30, "three deferred and one held message", || {
        ids(&i, "deferred").len() == 3 && ids(&i, "hold").len() == 1
    });
    wait_for(20, "their defer logs", || ids(&i, "defer").len() == 3);
    let d = ids(&i, "deferred");
    let (id1, id2, id3) = (d[0].clone(), d[1].clone(), d[2].clone());

    // Hold one; holding it again finds nothing to hold.
    let e = ok(&i, &["-h", &id1]);
    assert_eq!(
        e,
        format!("postsuper: {id1}: placed on hold\npostsuper: Placed on hold: 1 message\n")
    );
    assert!(ids(&i, "hold").contains(&id1));
    i.wait_log(&format!(
        r"postfix/postsuper\[\d+\]: {id1}: placed on hold$"
    ));
    assert_eq!(
        ok(&i, &["-h", &id1]),
        "postsuper: Placed on hold: 0 messages\n"
    );

    // Release everything on hold: both go to deferred, due now.
    let e = ok(&i, &["-H", "ALL"]);
    assert!(
        e.ends_with("postsuper: Released from hold: 2 messages\n"),
        "{e}"
    );
    assert!(ids(&i, "hold").is_empty());

    // Expire one: the mark is the group-execute bit; qmgr returns it at
    // its next attempt instead of delivering.
    let e = ok(&i, &["-e", &id2]);
    assert_eq!(
        e,
        format!("postsuper: {id2}: expired\npostsuper: Force-expired: 1 message\n")
    );
    let (_, p2) = find(&i, &id2).expect("still queued");
    assert_eq!(std::fs::metadata(&p2).unwrap().mode() & 0o777, 0o710);
    let out = Command::new(common::program("postqueue"))
        .args(["-c", &i.etc, "-f"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    i.wait_log(&format!(
        r"postfix/qmgr\[\d+\]: {id2}: from=<a@example.org>, status=force-expired, returned to sender$"
    ));
    wait_for(20, "the expired message removed", || {
        find(&i, &id2).is_none()
    });

    let (_, p3) = find(&i, &id3).unwrap();
    let mid3 = message_id(&p3).expect("a Message-ID");
    // Requeue one: it goes back through pickup and cleanup under a new
    // ID, logged with orig_id, headers kept as they were (no second
    // Received:), and is deferred again.
    let e = ok(&i, &["-r", &id3]);
    assert_eq!(
        e,
        format!("postsuper: {id3}: requeued\npostsuper: Requeued: 1 message\n")
    );
    let line = i.wait_log(&format!(
        r"postfix/pickup\[\d+\]: [0-9A-F]+: uid=\d+ from=<a@example.org> orig_id={id3}$"
    ));
    let new_id = line
        .split("]: ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(new_id, id3);
    wait_for(20, "the requeued message deferred again", || {
        ids(&i, "deferred").contains(&new_id)
    });
    let (_, p3) = find(&i, &new_id).unwrap();
    assert_eq!(message_id(&p3), Some(mid3));
    let text = String::from_utf8(
        Command::new(common::program("postcat"))
            .args(["-c", &i.etc, "-hq", &new_id])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("Received: ")).count(),
        1,
        "{text}"
    );

    // Delete: bad IDs never reach the file system; IDs from standard
    // input; the defer log goes with the message.
    let out = postsuper(&i, &["-d", "ab/../x", "-d", "ABCDEF12345"], "");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "postsuper: warning: invalid mail queue id: ab/../x\npostsuper: Deleted: 0 messages\n"
    );
    let out = postsuper(&i, &["-d", "-"], &format!("{id1}\n\n{new_id}\n"));
    assert!(out.status.success(), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.ends_with("postsuper: Deleted: 2 messages\n"), "{e}");
    assert!(find(&i, &id1).is_none() && find(&i, &new_id).is_none());
    assert!(
        !ids(&i, "defer").contains(&id1),
        "the defer log is removed with the message"
    );
    i.wait_log(&format!(r"postfix/postsuper\[\d+\]: {id1}: removed$"));
    let rest = ids(&i, "deferred");
    let e = ok(&i, &["-d", "ALL", "deferred"]);
    assert!(
        e.ends_with(&format!(
            "postsuper: Deleted: {} message{}\n",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        )),
        "{e}"
    );

    // Usage errors, as Postfix words them.
    let out = postsuper(&i, &["-d", "ALL", "foo"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "postsuper: fatal: invalid directory name: foo\n"
    );
    let out = postsuper(&i, &["-x"], "");
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.starts_with(
            "postsuper: invalid option -- 'x'\npostsuper: fatal: usage: postsuper [-c config_dir]"
        ),
        "{e}"
    );
}

/// Finds a message in any mail queue.
fn find(i: &Instance, id: &str) -> Option<(String, PathBuf)> {
    for q in ["maildrop", "incoming", "active", "deferred", "hold"] {
        if let Some(p) = i
            .queue_files(q)
            .into_iter()
            .find(|p| p.file_name().unwrap() == id)
        {
            return Some((q.to_string(), p));
        }
    }
    None
}

#[test]
fn structure_repair_renames_to_the_inode_and_purge_removes_leftovers() {
    // Not started: files stay where they are put.
    let i = instance("postsuper-fix");
    let out = Command::new(common::program("facteur"))
        .args(["-c", &i.etc, "set-permissions"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    i.send(
        &["-f", "a@example.org", "b@later.example"],
        "Subject: x\n\nx\n",
    );
    let dropped = i.queue_files("maildrop");
    assert_eq!(dropped.len(), 1);
    let real = dropped[0].clone();
    let real_id = real.file_name().unwrap().to_string_lossy().into_owned();
    // A "restored" copy: a valid name that belongs to another inode.
    let copy_name = format!("{}{:X}", &real_id[..5], 1u64);
    let copy = real.with_file_name(&copy_name);
    std::fs::copy(&real, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o744)).unwrap();
    let copy_ino = std::fs::metadata(&copy).unwrap().ino();
    // Leftovers: an old temporary file, an old and a young incomplete one,
    // and a foreign name.
    let q = i.queue.join("incoming");
    let old_tmp = q.join("tmp.1.1");
    let old_partial = q.join("ABCDE123");
    let young_partial = q.join("ABCDE124");
    for p in [&old_tmp, &old_partial, &young_partial] {
        std::fs::write(p, "partial").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    for p in [&old_tmp, &old_partial] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }
    std::fs::write(q.join("junk"), "?").unwrap();

    // A bare postsuper is -s -p.
    let e = ok(&i, &[]);
    let want_id = format!("{}{:X}", &real_id[..5], copy_ino);
    assert!(
        e.contains("postsuper: warning: bogus file name: incoming/junk\n"),
        "{e}"
    );
    assert!(
        e.contains("postsuper: Renamed to match inode number: 1 message\npostsuper: warning: QUEUE FILE NAMES WERE CHANGED TO MATCH INODE NUMBERS\n"),
        "{e}"
    );
    assert!(e.contains("Purged: 2 temporary files"), "{e}");
    let mut md = ids(&i, "maildrop");
    md.sort();
    let mut want = vec![real_id.clone(), want_id];
    want.sort();
    assert_eq!(md, want, "the copy is named after its own inode");
    assert!(!old_tmp.exists() && !old_partial.exists());
    assert!(
        young_partial.exists(),
        "a young incomplete file may still be written"
    );
    // Nothing more to rename the second time.
    let e = ok(&i, &["-s"]);
    assert!(!e.contains("Renamed"), "{e}");
}

/// Maps queue IDs to Message-IDs from cleanup's log lines, and returns
/// the IDs postsuper logged as removed.
fn log_maps(log: &str) -> (HashMap<String, String>, HashSet<String>) {
    let mut mid = HashMap::new();
    let mut removed = HashSet::new();
    for l in log.lines() {
        let Some((tag, rest)) = l.split_once("]: ") else {
            continue;
        };
        let Some((id, what)) = rest.split_once(": ") else {
            continue;
        };
        if tag.contains("postfix/cleanup[") {
            if let Some(m) = what.strip_prefix("message-id=<") {
                mid.insert(id.to_string(), m.trim_end_matches('>').to_string());
            }
        } else if tag.contains("postfix/postsuper[") && what == "removed" {
            removed.insert(id.to_string());
        }
    }
    (mid, removed)
}

#[test]
fn hold_release_requeue_delete_under_live_traffic_lose_nothing() {
    /// Messages submitted; every 7th (from the 4th) is stuck mail.
    const TOTAL: usize = 210;
    let stuck = |n: usize| n % 7 == 3;
    let mut i = instance("postsuper-live");
    i.start();
    let me = user();
    let etc = i.etc.clone();
    let sendmail = common::program("sendmail");
    // The stream: good mail for the test user (delivered to its Maildir)
    // and stuck mail (deferred), interleaved.
    let feeder = {
        let me = me.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            for n in 0..TOTAL {
                let (rcpt, mid) = if stuck(n) {
                    ("s@later.example".to_string(), format!("stuck-{n}@test"))
                } else {
                    (me.clone(), format!("good-{n}@test"))
                };
                let mut c = Command::new(&sendmail)
                    .args(["-C", &etc, "-f", "a@example.org", &rcpt])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(message(&format!("m{n}"), &mid).as_bytes())
                    .unwrap();
                assert!(c.wait().unwrap().success(), "submission {n}");
            }
        })
    };
    // The operator, while mail flows (bounded: the feeder ends).
    for round in 0..500 {
        if feeder.is_finished() {
            break;
        }
        ok(&i, &["-h", "ALL"]);
        ok(&i, &["-H", "ALL"]);
        ok(&i, &["-r", "ALL"]);
        if round % 4 == 3 {
            // Delete what is deferred the way the manual shows, IDs from
            // postqueue -j on standard input, so each removal is logged
            // with its ID (with ALL, as in Postfix, only the count is).
            let json = Command::new(common::program("postqueue"))
                .args(["-c", &i.etc, "-j"])
                .output()
                .unwrap();
            let deferred: String = String::from_utf8_lossy(&json.stdout)
                .lines()
                .filter(|l| l.starts_with("{\"queue_name\": \"deferred\""))
                .filter_map(|l| l.split("\"queue_id\": \"").nth(1)?.split('"').next())
                .map(|id| format!("{id}\n"))
                .collect();
            let out = postsuper(&i, &["-d", "-", "deferred"], &deferred);
            assert!(out.status.success(), "{out:?}");
        }
    }
    feeder.join().expect("every submission succeeded");
    // Let what remains go: release anything held, flush, and wait until
    // every good message is delivered or was deleted.
    ok(&i, &["-H", "ALL"]);
    let flush = || {
        Command::new(common::program("postqueue"))
            .args(["-c", &i.etc, "-f"])
            .output()
            .unwrap()
    };
    flush();
    let delivered = |i: &Instance| -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for text in i.maildir(&i.user_maildir()) {
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: <"))
                .map(|v| v.trim_end_matches('>').to_string())
                .expect("a Message-ID");
            *m.entry(id).or_insert(0) += 1;
        }
        m
    };
    let good_ids: Vec<String> = (0..TOTAL)
        .filter(|n| !stuck(*n))
        .map(|n| format!("good-{n}@test"))
        .collect();
    wait_for(90, "every good message delivered or deleted", || {
        flush();
        let got = delivered(&i);
        let (mid, removed) = log_maps(&i.log_text());
        let deleted: HashSet<&String> = removed.iter().filter_map(|id| mid.get(id)).collect();
        good_ids
            .iter()
            .all(|g| got.contains_key(g) || deleted.contains(g))
    });
    let got = delivered(&i);
    let (mid, removed) = log_maps(&i.log_text());
    let deleted: HashSet<String> = removed
        .iter()
        .filter_map(|id| mid.get(id).cloned())
        .collect();
    for g in &good_ids {
        let n = got.get(g).copied().unwrap_or(0);
        let del = deleted.contains(g);
        assert!(
            (n == 1 && !del) || (n == 0 && del),
            "{g}: delivered {n} times, deleted: {del}"
        );
    }
    assert!(
        got.keys().all(|k| k.starts_with("good-")),
        "stuck mail is never delivered"
    );
    // Every stuck message is still queued or was deleted on request.
    let mut queued: HashSet<String> = HashSet::new();
    for q in ["maildrop", "incoming", "active", "deferred", "hold"] {
        for p in i.queue_files(q) {
            if let Some(m) = message_id(&p) {
                queued.insert(m);
            }
        }
    }
    for n in (0..TOTAL).filter(|n| stuck(*n)) {
        let s = format!("stuck-{n}@test");
        assert!(
            queued.contains(&s) || deleted.contains(&s),
            "{s}: neither queued nor deleted"
        );
    }
    assert!(i.queue_files("corrupt").is_empty(), "no corrupt queue file");
    let log = i.log_text();
    for bad in ["panic", "fatal:", "terminated", "corrupt"] {
        assert!(
            !log.lines().any(|l| l.contains(bad)),
            "a log line says {bad}:\n{}",
            log.lines()
                .filter(|l| l.contains(bad))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        !log.contains("cannot mark recipients done"),
        "every delivery kept its done mark"
    );
    // The operations really met the traffic.
    // With ALL, postsuper logs only the counts, as Postfix does.
    let count = |what: &str| -> usize {
        log.lines()
            .filter_map(|l| {
                l.split(what)
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum()
    };
    let held = count("]: Placed on hold: ");
    let requeued = count("]: Requeued: ");
    let removed = deleted.len();
    eprintln!(
        "held {held}, requeued {requeued}, deleted {removed}, delivered {}",
        got.len()
    );
    assert!(
        held > 0 && requeued > 0 && removed > 0,
        "held {held}, requeued {requeued}, deleted {removed}"
    );
    let pid = i.master_pid().expect("master started");
    // SAFETY: signal 0 only checks that our child is alive.
    assert_eq!(unsafe { libc::kill(pid as i32, 0) }, 0, "master is running");
    i.stop();
}
