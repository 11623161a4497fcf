//! The cleanup binary, started as master would start it (listener on fd
//! 3, status pipe on fd 4) in a private instance, fed with
//! `CleanupClient`; the queue files and the log are checked.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use libmail::ipc::cleanup::{CleanupClient, CleanupError, STAT_CONT, STAT_SIZE};
use libmail::ipc::Attrs;
use libmail::queue::{Access, Queue, QueueFile, QueueId};

mod cleanup_support;
use cleanup_support::Instance;

fn content_of(path: &Path) -> Vec<String> {
    let qf = QueueFile::open(path, Access::ReadOnly, &Default::default()).unwrap();
    let mut out = Vec::new();
    let mut r = qf.content();
    let mut l = Vec::new();
    while r.read_line(&mut l, 1 << 20).unwrap() {
        out.push(String::from_utf8_lossy(&l).into_owned());
    }
    out
}

fn envelope(sender: &str, rcpt: &str) -> Attrs {
    Attrs::new()
        .with("origin", "pickup")
        .with("arrival", "1704717296.000001")
        .with("sender", sender)
        .with("rcpt", rcpt)
        .with("attr.rewrite_context", "local")
        .with("attr.log_uid", "1000")
}

fn submit(inst: &Instance, env: &Attrs, content: &[u8]) -> Result<String, CleanupError> {
    let s = UnixStream::connect(inst.socket("cleanup")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = CleanupClient::over(s)?;
    c.envelope(env)?;
    c.content(content)?;
    c.finish()
}

#[test]
fn cleanup_queues_a_durable_file_and_logs_message_id() {
    let inst = Instance::new("cleanup-ok", "");
    let _d = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let id = submit(
        &inst,
        &envelope("joe", "bob"),
        b"Subject: hello\n\nbody line\n",
    )
    .unwrap();
    let qid = QueueId::parse(&id).unwrap();
    let (q, path) = inst.layout.find(&qid, &[Queue::Incoming]).unwrap();
    assert_eq!(q, Queue::Incoming);
    let qf = QueueFile::open(&path, Access::ReadOnly, &Default::default()).unwrap();
    let env = qf.envelope();
    assert_eq!(env.sender, "joe@example.com");
    assert_eq!(env.recipients[0].address, "bob@example.com");
    let c = content_of(&path);
    assert_eq!(
        c[0],
        "Received: by mx.example.com (Postfix, from userid 1000)"
    );
    assert!(c.iter().any(|l| l == "From: joe@example.com"), "{c:?}");
    assert!(c.ends_with(&["".to_string(), "body line".to_string()]));
    let line = inst.wait_log(&format!("{id}: message-id=<"));
    assert!(line.contains(&format!(".{id}@mx.example.com>")), "{line}");
    assert!(line.contains("postfix/cleanup["), "{line}");
}

#[test]
fn cleanup_header_checks_reject_is_logged_like_postfix() {
    let inst = Instance::new("cleanup-reject", "");
    let _d = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    match submit(
        &inst,
        &envelope("a@example.com", "c@example.com"),
        b"Subject: buy now\n\nx\n",
    ) {
        Err(CleanupError::Refused(r)) => {
            assert_eq!(r.status, STAT_CONT);
            assert_eq!(r.reason, "5.7.1 Spam");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let line = inst.wait_log("reject: header");
    assert!(
        line.ends_with(
            "reject: header Subject: buy now from local; from=<a@example.com> to=<c@example.com>: 5.7.1 Spam"
        ),
        "{line}"
    );
    assert!(inst.files(Queue::Incoming).is_empty());
}

#[test]
fn cleanup_size_limit_and_early_disconnect_leave_nothing() {
    let inst = Instance::new("cleanup-size", "");
    let _d = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let big = vec![b'x'; 200_000];
    match submit(&inst, &envelope("a@example.com", "c@example.com"), &big) {
        Err(CleanupError::Refused(r)) => assert_eq!(r.status, STAT_SIZE),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(inst.files(Queue::Incoming).is_empty());
    // A client that goes away after the envelope.
    {
        let s = UnixStream::connect(inst.socket("cleanup")).unwrap();
        let mut c = CleanupClient::over(s).unwrap();
        c.envelope(&envelope("a@example.com", "c@example.com"))
            .unwrap();
        c.content(b"Subject: x\n").unwrap();
    }
    let start = Instant::now();
    while !inst.files(Queue::Incoming).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "file left behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cleanup_hold_action_puts_the_file_in_hold() {
    let inst = Instance::new("cleanup-hold", "");
    let _d = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let id = submit(
        &inst,
        &envelope("a@example.com", "c@example.com"),
        b"X-Hold: yes\n\nx\n",
    )
    .unwrap();
    let qid = QueueId::parse(&id).unwrap();
    let (q, _) = inst
        .layout
        .find(&qid, &[Queue::Incoming, Queue::Hold])
        .unwrap();
    assert_eq!(q, Queue::Hold);
    inst.wait_log(&format!("{id}: hold: header X-Hold: yes from local;"));
}

#[test]
fn cleanup_serves_concurrent_clients() {
    let inst = Instance::new("cleanup-many", "");
    let _d = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let inst = &inst;
                s.spawn(move || {
                    submit(
                        inst,
                        &envelope("a@example.com", &format!("r{i}@example.com")),
                        format!("Subject: {i}\n\nbody {i}\n").as_bytes(),
                    )
                    .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for id in ids {
        assert!(inst
            .layout
            .find(&QueueId::parse(&id).unwrap(), &[Queue::Incoming])
            .is_some());
    }
}

#[test]
fn cleanup_kept_connection_makes_the_next_file_and_ends_after_max_use() {
    let inst = Instance::new("cleanup-kept", "max_use = 3");
    let _d = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let timeout = Duration::from_secs(30);
    let root = inst.layout.root().to_path_buf();
    let mut client = CleanupClient::connect_kept(&root, timeout).unwrap();
    let mut done = Vec::new();
    for i in 0..3 {
        let id = client.queue_id().to_string();
        client
            .envelope(&envelope("a@example.com", &format!("r{i}@example.com")))
            .unwrap();
        client
            .content(format!("Subject: {i}\n\nbody\n").as_bytes())
            .unwrap();
        client.end().unwrap();
        let (verdict, kept) = client.verdict();
        assert_eq!(verdict.unwrap(), id);
        done.push(id);
        let kept = kept.expect("the connection is kept");
        if i == 2 {
            // max_use = 3: the third verdict ends the connection.
            assert!(kept.resume().is_err(), "no fourth queue ID");
            break;
        }
        // The next queue ID comes unasked; its file exists already,
        // unfinished (no execute bit), and is not one of the queued ones.
        client = kept.resume().unwrap();
        let next = QueueId::parse(client.queue_id()).unwrap();
        let (q, path) = inst.layout.find(&next, &[Queue::Incoming]).unwrap();
        assert_eq!(q, Queue::Incoming);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o100, 0);
        assert!(!done.contains(&client.queue_id().to_string()));
    }
    for id in &done {
        let qid = QueueId::parse(id).unwrap();
        assert!(inst.layout.find(&qid, &[Queue::Incoming]).is_some(), "{id}");
    }
    // A client that has no next message closes the kept connection: the
    // file made for it is removed.
    let c = CleanupClient::connect_kept(&root, timeout).unwrap();
    let c = {
        let mut c = c;
        c.envelope(&envelope("a@example.com", "z@example.com"))
            .unwrap();
        c.end().unwrap();
        let (v, kept) = c.verdict();
        done.push(v.unwrap());
        kept.unwrap().resume().unwrap()
    };
    let unused = QueueId::parse(c.queue_id()).unwrap();
    assert!(inst.layout.find(&unused, &[Queue::Incoming]).is_some());
    drop(c);
    let start = Instant::now();
    while inst.layout.find(&unused, &[Queue::Incoming]).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "unused file left behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(inst.files(Queue::Incoming).len(), done.len());
}

#[test]
fn cleanup_mime_and_nested_header_checks_are_logged_like_header_checks() {
    let inst = Instance::new("cleanup-mime", "");
    // header_checks only: mime_header_checks and nested_header_checks
    // default to it.
    std::fs::write(
        inst.dir.join("etc/header_checks"),
        "/^Content-(Type|Disposition):.*name[[:space:]]*=[[:space:]]*\"?.*\\.(exe|scr)\"?/ REJECT\n\
         /^Subject: .*invoice/ WARN nested subject\n",
    )
    .unwrap();
    let _d = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let exe = b"Subject: report\nMIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\n\
Content-Type: application/octet-stream\n\
Content-Disposition: attachment; filename=\"x.exe\"\n\nTVqQ\n--b1--\n";
    match submit(&inst, &envelope("a@example.com", "c@example.com"), exe) {
        Err(CleanupError::Refused(r)) => {
            assert_eq!(r.status, STAT_CONT);
            assert_eq!(r.reason, "5.7.1 message content rejected");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let line = inst.wait_log("reject: header Content-Disposition");
    assert!(
        line.ends_with(
            "reject: header Content-Disposition: attachment; filename=\"x.exe\" from local; from=<a@example.com> to=<c@example.com>: 5.7.1 message content rejected"
        ),
        "{line}"
    );
    assert!(inst.files(Queue::Incoming).is_empty());
    let fwd = b"Subject: fwd\nMIME-Version: 1.0\n\
Content-Type: message/rfc822\n\n\
From: someone@example.org\nSubject: your invoice\n\n inner body\n";
    let id = submit(&inst, &envelope("a@example.com", "c@example.com"), fwd).unwrap();
    let line = inst.wait_log(&format!("{id}: warning: header Subject"));
    assert!(
        line.ends_with(&format!(
            "{id}: warning: header Subject: your invoice from local; from=<a@example.com> to=<c@example.com>: nested subject"
        )),
        "{line}"
    );
}
