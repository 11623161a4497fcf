//! Crash safety, tested with kill -9 rather than argued: under a stream
//! of sendmail submissions, pickup, cleanup, qmgr, local and master are
//! killed at random moments; after a restart every message whose
//! submission succeeded is delivered, duplicates are counted and bounded
//! by the duplicate windows documented in libmail::queue, and nothing is
//! corrupt. Plus: a message left in
//! active/ is delivered after a start; a damaged queue file goes to
//! corrupt/ with a log line while the rest flows; queue_minfree.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{user, wait_for, Instance};

/// Children of `parent` whose command name is `name`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[l + 1..r];
        let ppid: u32 = stat[r + 2..]
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if ppid == parent && comm == name {
            out.push(pid);
        }
    }
    out
}

/// A small deterministic generator (no dependency needed for chaos).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Subjects of the messages in a Maildir, with their counts.
fn delivered(i: &Instance) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for text in i.maildir(&i.user_maildir()) {
        if let Some(s) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *m.entry(s.to_string()).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn kill_9_under_load_loses_nothing() {
    // A daemon killed before it said "ready" counts as a bad start and is
    // throttled for service_throttle_time, as in Postfix: keep that short.
    let mut i = Instance::new("crash", "service_throttle_time = 1s");
    i.start();
    let me = user();
    let total = 120usize;
    let ok: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let submitter = {
        let ok = ok.clone();
        let done = done.clone();
        let etc = i.etc.clone();
        let me = me.clone();
        std::thread::spawn(move || {
            for k in 0..total {
                let subject = format!("crash-{k}");
                let out = std::process::Command::new(common::program("sendmail"))
                    .args(["-C", &etc, "-f", "stress@example.org", &me])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write;
                        c.stdin
                            .take()
                            .unwrap()
                            .write_all(format!("Subject: {subject}\n\nbody {k}\n").as_bytes())?;
                        c.wait()
                    });
                if matches!(out, Ok(s) if s.success()) {
                    ok.lock().unwrap().push(subject);
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut rng = Rng(0x9e3779b97f4a7c15);
    // FACTEUR_CRASH_TARGETS=qmgr,local narrows the chaos when hunting a
    // duplicate or a loss.
    let chosen = std::env::var("FACTEUR_CRASH_TARGETS").unwrap_or_default();
    let all = ["pickup", "cleanup", "qmgr", "local", "master"];
    let targets: Vec<&str> = all
        .iter()
        .copied()
        .filter(|t| chosen.is_empty() || chosen.split(',').any(|c| c == *t))
        .collect();
    let mut kills = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    while !done.load(Ordering::SeqCst) && Instant::now() < deadline && round < 40 {
        round += 1;
        // A random pause: the point is to land the kill at an arbitrary
        // moment of the pipeline's work, not to wait for anything.
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 60));
        let target = targets[(rng.next() % targets.len() as u64) as usize];
        let Some(mpid) = i.master_pid() else { break };
        if target == "master" {
            i.kill_master();
            kills += 1;
            i.start();
            continue;
        }
        for pid in children_named(mpid, target) {
            // SAFETY: signalling a process of this test's instance.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            kills += 1;
        }
    }
    submitter.join().unwrap();
    let ok = ok.lock().unwrap().clone();
    assert!(
        ok.len() >= total / 2,
        "too few submissions succeeded: {}",
        ok.len()
    );
    // Retry whatever was deferred while an agent was down, until every
    // accepted message is in the mailbox.
    let mut last_flush = Instant::now() - Duration::from_secs(10);
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let got = delivered(&i);
        let missing: Vec<&String> = ok.iter().filter(|s| !got.contains_key(*s)).collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > end {
            // Say where the missing mail is, for whoever reads CI's log.
            let mut where_ = String::new();
            for q in [
                "maildrop", "incoming", "active", "deferred", "hold", "corrupt",
            ] {
                where_.push_str(&format!("{q}: {:?}\n", i.queue_files(q)));
            }
            panic!(
                "{} accepted messages not delivered after 120 s: {missing:?}\n{where_}",
                missing.len()
            );
        }
        if last_flush.elapsed() > Duration::from_secs(2) {
            let _ = libmail::ipc::flush(&i.queue);
            last_flush = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = delivered(&i);
    let dups: usize = got.values().map(|n| n - 1).sum();
    eprintln!(
        "{} submissions accepted, {} kills, {} delivered, {} duplicate(s)",
        ok.len(),
        kills,
        got.len(),
        dups
    );
    // The duplicate windows (libmail::queue): an agent killed after its
    // delivery and before its reply (local has up to
    // local_destination_concurrency_limit = 2 deliveries in flight), qmgr
    // killed between a reply and the done mark, pickup killed between
    // cleanup's "durable" and the unlink of the maildrop file. So at most
    // two per kill.
    assert!(
        dups <= 2 * kills,
        "more duplicates ({dups}) than the crash windows explain ({kills} kills)"
    );
    for s in got.keys() {
        assert!(s.starts_with("crash-"), "unexpected message {s}");
    }
    assert!(
        i.queue_files("corrupt").is_empty(),
        "corrupt files after the crashes"
    );
    // Delivered messages' files were recycled (libmail::queue::recycle),
    // through the kills too: once qmgr's reaper is done, the pool holds
    // emptied files only, no delivered bytes.
    // (The reaper gives an emptied file mode 0600 last; one still of
    // mode 0700 is not claimable yet.)
    use std::os::unix::fs::PermissionsExt;
    let pool = i.queue.join("recycle");
    let mode = |p: &std::path::Path| {
        std::fs::symlink_metadata(p).map_or(0, |m| m.permissions().mode() & 0o7777)
    };
    let settled = || {
        std::fs::read_dir(&pool)
            .is_ok_and(|rd| rd.filter_map(|e| e.ok()).all(|e| mode(&e.path()) == 0o600))
    };
    wait_for(10, "the reaper to empty the last files", settled);
    let files: Vec<_> = std::fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "nothing was recycled");
    for f in &files {
        assert!(
            std::fs::read(f).unwrap().iter().all(|&b| b == 0),
            "{} not emptied",
            f.display()
        );
    }
}

#[test]
fn a_message_left_in_active_is_delivered_at_start() {
    let mut i = Instance::new("active", "");
    // Create the queue, then put a finished, durable file in active/ as a
    // crashed qmgr would leave it.
    let out = std::process::Command::new(common::program("facteur"))
        .args(["-c", &i.etc, "set-permissions"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let params = libmail::config::params::Params::load(&i.etc).unwrap();
    let layout = libmail::queue::QueueLayout::from_params(&params).unwrap();
    let rcpt = format!("{}@mx.example.test", user());
    let mut w = libmail::queue::Writer::create(
        &layout,
        libmail::queue::Queue::Active,
        libmail::queue::IdStyle::Short,
    )
    .unwrap();
    w.arrival_time(std::time::SystemTime::now()).unwrap();
    w.sender("left@example.org").unwrap();
    w.recipient(&libmail::queue::NewRecipient::new(&rcpt))
        .unwrap();
    w.start_content().unwrap();
    w.content_line(b"Subject: left in active").unwrap();
    w.content_line(b"").unwrap();
    w.content_line(b"recovered").unwrap();
    w.finish().unwrap().sync().unwrap();
    i.start();
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: left in active"), "{}", got[0]);
}

#[test]
fn a_damaged_queue_file_goes_to_corrupt_and_the_rest_flows() {
    let mut i = Instance::new("corrupt", "");
    i.start();
    // A file named like a queue file, marked complete, full of garbage.
    let bad = i.queue.join("incoming/ABCDE12345");
    std::fs::write(&bad, b"this is not a queue file at all\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o700)).unwrap();
    i.send(
        &["-f", "x@example.org", &user()],
        "Subject: after the bad one\n\nok\n",
    );
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: after the bad one"));
    i.wait_log(r"postfix/qmgr\[\d+\]: warning: ABCDE12345: .*moved to the corrupt queue");
    wait_for(20, "the file in corrupt/", || {
        i.queue_files("corrupt")
            .iter()
            .any(|p| p.ends_with("ABCDE12345"))
    });
}

#[test]
fn queue_minfree_refuses_new_mail_and_keeps_what_is_queued() {
    let mut i = Instance::new("minfree", "");
    i.start();
    i.send(&["-f", "x@example.org", &user()], "Subject: before\n\nok\n");
    i.wait_maildir(&i.user_maildir(), 1);
    // Now demand more free space than any disk has.
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str("queue_minfree = 9000000000000000000\n");
    std::fs::write(&main, text).unwrap();
    let out = i.sendmail(
        &["-f", "x@example.org", &user()],
        "Subject: refused\n\nno\n",
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Insufficient system storage"), "{err}");
    // What was delivered stays; nothing half-written is left behind.
    assert_eq!(i.maildir(&i.user_maildir()).len(), 1);
    assert!(i.queue_files("maildrop").is_empty());
}
