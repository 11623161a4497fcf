//! mailq and postqueue -j against the real thing: the same three
//! submissions (two deferred, one held) go into a real Postfix instance
//! and into a Facteur instance, and the two listings must be the same
//! once queue IDs and arrival times (which differ by nature) are masked.
//! Message sizes are compared too: they prove that cleanup adds the same
//! headers, byte for byte in length, as Postfix's cleanup. qshape's
//! report (Postfix's Perl script on Postfix's queue, ours on ours) must
//! be identical.
//!
//! postsuper's messages are compared the same way: the same operations
//! on the same queue, standard error identical once queue IDs are masked.
//!
//! Postfix's master needs root: as another user the test says so and
//! checks nothing (it is part of the root CI run).

mod common;

use std::process::Command;

use common::{wait_for, Instance};

const SUBMISSIONS: [(&str, &[&str], &str); 3] = [
    (
        "alice@example.org",
        &["c@later.example", "d@later.example"],
        "Subject: one\n\nbody\n",
    ),
    ("", &["e@later.example"], "Subject: two\n\nbody\n"),
    (
        "bob@example.org",
        &["f@later.example"],
        "Subject: hold me\n\nbody\n",
    ),
];

/// A private Postfix instance (root only), stopped on drop.
struct Postfix {
    top: std::path::PathBuf,
    etc: String,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .args(["-c", &self.etc, "stop"])
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.top);
        }
    }
}

fn postfix(tag: &str, extra: &str) -> Postfix {
    let top = std::env::temp_dir().join(format!("postfix-diff-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&top);
    for d in ["etc", "data", "queue"] {
        std::fs::create_dir_all(top.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = top.join("etc");
    let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap();
    // No SMTP listener on port 25 for a test.
    let master: String = master
        .lines()
        .map(|l| {
            if l.starts_with("smtp ") && l.contains(" inet ") {
                format!("#{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(etc.join("master.cf"), master).unwrap();
    let t = top.display();
    std::fs::write(
        etc.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {t}/queue\ndata_directory = {t}/data\n\
             myhostname = mx.example.test\nmydomain = example.test\nmyorigin = $myhostname\n\
             mydestination = $myhostname, localhost\ninet_interfaces = loopback-only\n\
             inet_protocols = ipv4\nalias_maps =\nalias_database =\nmaillog_file = {t}/maillog\n\
             maillog_file_prefixes = /tmp\n{extra}"
        ),
    )
    .unwrap();
    let out = Command::new("chown")
        .args(["postfix", &format!("{t}/data")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let etc = etc.display().to_string();
    let out = Command::new("/usr/sbin/postfix")
        .args(["-c", &etc, "start"])
        .output()
        .unwrap();
    assert!(out.status.success(), "postfix start: {out:?}");
    Postfix { top, etc }
}

/// Masks what differs by nature (queue IDs, arrival times) and sorts the
/// message blocks (Postfix lists in directory order).
fn normalize(listing: &str) -> Vec<String> {
    // IDs vary in length (10 to 12 characters), which moves the size
    // column by a space: mask the ID and its padding together. The
    // column layout itself is checked by the unit tests and e2e_pipeline.
    let id = regex::Regex::new(r"^[0-9A-F]{8,12}([*!]?) +(\d+) ").unwrap();
    let time = regex::Regex::new(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d").unwrap();
    let (header, rest) = listing.split_once('\n').unwrap_or((listing, ""));
    let mut blocks: Vec<String> = rest
        .split("\n\n")
        .map(|b| {
            b.lines()
                .map(|l| {
                    time.replace(&id.replace(l, "QUEUEID$1 $2 "), "TIME")
                        .into_owned()
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    blocks.sort();
    blocks.insert(0, header.to_string());
    blocks
}

fn normalize_json(json: &str) -> Vec<String> {
    let id = regex::Regex::new(r#""queue_id": "[0-9A-F]+""#).unwrap();
    let time = regex::Regex::new(r#""arrival_time": \d+"#).unwrap();
    let mut v: Vec<String> = json
        .lines()
        .map(|l| {
            time.replace(&id.replace(l, "\"queue_id\": \"X\""), "\"arrival_time\": T")
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// A real Postfix and a Facteur instance holding the same mail: two
/// deferred messages and one held. `None` when not root or no Postfix.
fn same_queue(tag: &str) -> Option<(Postfix, Instance, std::path::PathBuf)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 || !std::path::Path::new("/usr/sbin/postfix").exists() {
        eprintln!("SKIPPED: needs root and an installed Postfix (scripts/test.sh installs it)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("qdiff-tables-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("transport"), "later.example  nosuch:\n").unwrap();
    std::fs::write(dir.join("header_checks"), "/^Subject: hold me/ HOLD\n").unwrap();
    let extra = format!(
        "transport_maps = texthash:{d}/transport\nheader_checks = regexp:{d}/header_checks\n",
        d = dir.display()
    );
    let pf = postfix(tag, &extra);
    let mut fa = Instance::new(tag, &extra);
    fa.start();
    for (sender, rcpts, body) in SUBMISSIONS {
        for (prog, etc) in [
            ("/usr/sbin/sendmail".to_string(), &pf.etc),
            (common::program("sendmail").display().to_string(), &fa.etc),
        ] {
            let mut c = Command::new(&prog)
                .args(["-C", etc, "-f", sender])
                .args(rcpts)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success(), "{prog}");
        }
    }
    fa.kick();
    for q in [pf.top.join("queue"), fa.queue.clone()] {
        wait_for(60, "two deferred and one held message", || {
            count(&q.join("deferred")) == 2 && count(&q.join("hold")) == 1
        });
    }
    Some((pf, fa, dir))
}

/// Files under a directory, recursively.
fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Queue IDs of the files under a directory.
fn ids_in(dir: &std::path::Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                v.extend(ids_in(&e.path()));
            } else {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn mailq_and_postqueue_j_match_postfix_for_the_same_queue() {
    let Some((pf, fa, dir)) = same_queue("qdiff") else {
        return;
    };
    let run = |prog: &str, args: &[&str]| -> String {
        let out = Command::new(prog).args(args).output().unwrap();
        assert!(out.status.success(), "{prog} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let theirs = run("/usr/bin/mailq", &["-C", &pf.etc]);
    let ours = run(
        &common::program("mailq").display().to_string(),
        &["-C", &fa.etc],
    );
    assert_eq!(
        normalize(&ours),
        normalize(&theirs),
        "\nours:\n{ours}\ntheirs:\n{theirs}"
    );
    let theirs = run("/usr/sbin/postqueue", &["-c", &pf.etc, "-j"]);
    let ours = run(
        &common::program("postqueue").display().to_string(),
        &["-c", &fa.etc, "-j"],
    );
    assert_eq!(
        normalize_json(&ours),
        normalize_json(&theirs),
        "\nours:\n{ours}\ntheirs:\n{theirs}"
    );
    // qshape: nothing to mask (all the mail is in the first bucket).
    for args in [&["deferred", "hold"][..], &["-s", "deferred", "hold"]] {
        let theirs = run("/usr/sbin/qshape", &[&["-c", &pf.etc][..], args].concat());
        let ours = run(
            &common::program("qshape").display().to_string(),
            &[&["-c", &fa.etc][..], args].concat(),
        );
        assert_eq!(ours, theirs, "qshape {args:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same postsuper operations on both queues: standard error must be
/// the same once queue IDs are masked (and the lines sorted: the order of
/// per-message lines follows each system's directory order).
#[test]
fn postsuper_messages_match_postfix_for_the_same_operations() {
    let Some((pf, fa, dir)) = same_queue("psdiff") else {
        return;
    };
    let pq = pf.top.join("queue");
    let fq = fa.queue.clone();
    let mask = |text: &str| -> Vec<String> {
        let id = regex::Regex::new(r"\b[0-9A-F]{8,12}\b").unwrap();
        let mut v: Vec<String> = text
            .lines()
            .map(|l| id.replace_all(l, "QUEUEID").into_owned())
            .collect();
        v.sort();
        v
    };
    // Each step: arguments, with {D} the first deferred message and {H}
    // the held one, looked up in each queue as it is then.
    let steps: [&[&str]; 9] = [
        &["-h", "{D}"],
        &["-h", "{H}-not-here"],
        &["-H", "ALL"],
        &["-e", "{D}"],
        &["-d", "ab/../x"],
        &["-d", "ALL", "foo"],
        &["-x"],
        &["-h", "ALL", "deferred"],
        &["-d", "ALL"],
    ];
    for step in steps {
        let mut outs = Vec::new();
        for (prog, etc, q) in [
            ("/usr/sbin/postsuper".to_string(), &pf.etc, &pq),
            (
                common::program("postsuper").display().to_string(),
                &fa.etc,
                &fq,
            ),
        ] {
            let d = ids_in(&q.join("deferred"))
                .first()
                .cloned()
                .unwrap_or_default();
            let h = ids_in(&q.join("hold")).first().cloned().unwrap_or_default();
            let args: Vec<String> = step
                .iter()
                .map(|a| a.replace("{D}", &d).replace("{H}", &h))
                .collect();
            let out = Command::new(&prog)
                .args(["-c", etc])
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            outs.push((
                out.status.code(),
                mask(&String::from_utf8_lossy(&out.stderr)),
            ));
        }
        assert_eq!(outs[1], outs[0], "postsuper {step:?}: ours, then Postfix's");
    }
    // The same queues are left: nothing.
    for q in [&pq, &fq] {
        for name in ["deferred", "hold", "incoming", "active"] {
            assert_eq!(count(&q.join(name)), 0, "{} {name}", q.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
