//! pickup and cleanup started together on a private instance: a maildrop
//! file written as sendmail writes it reaches incoming/, a damaged one
//! goes to corrupt/, and with cleanup down the file waits.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant, SystemTime};

use libmail::queue::{Access, IdStyle, NewRecipient, Queue, QueueFile, QueueLayout, Writer};

mod cleanup_support;
use cleanup_support::Instance;

/// A maildrop file as commands/src/sendmail.rs writes it.
fn sendmail_file(layout: &QueueLayout, sender: &str, rcpt: &str, extracted: &[&str]) -> String {
    let mut w = Writer::create(layout, Queue::Maildrop, IdStyle::Short).unwrap();
    w.arrival_time(SystemTime::now()).unwrap();
    w.attr("rewrite_context", "local").unwrap();
    w.full_name("Joe User").unwrap();
    w.sender(sender).unwrap();
    w.recipient(&NewRecipient::new(rcpt)).unwrap();
    w.start_content().unwrap();
    w.content_line(b"Subject: from sendmail").unwrap();
    w.content_line(b"").unwrap();
    w.content_line(b"hello").unwrap();
    w.start_extracted().unwrap();
    for r in extracted {
        w.recipient(&NewRecipient::new(r)).unwrap();
    }
    let d = w.finish().unwrap().sync().unwrap();
    d.id().to_string()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn complete(inst: &Instance, q: Queue) -> Vec<std::path::PathBuf> {
    inst.layout
        .scan(q)
        .filter_map(|r| r.ok())
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn pickup_moves_maildrop_files_to_cleanup() {
    let inst = Instance::new("pickup-ok", "");
    let _cleanup = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let drop_id = sendmail_file(&inst.layout, "joe", "bob", &["carol@example.org"]);
    let uid = std::fs::metadata(inst.layout.dir(Queue::Maildrop))
        .unwrap()
        .uid();
    let _pickup = inst.start(env!("CARGO_BIN_EXE_pickup"), "pickup");
    let _ = libmail::ipc::trigger(&inst.socket("pickup"), b"W");
    wait_until("maildrop emptied", || {
        complete(&inst, Queue::Maildrop).is_empty()
    });
    let files = complete(&inst, Queue::Incoming);
    assert_eq!(files.len(), 1);
    let qf = QueueFile::open(&files[0], Access::ReadOnly, &Default::default()).unwrap();
    let env = qf.envelope();
    assert_eq!(env.sender, "joe@example.com");
    let r: Vec<&str> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(r, ["bob@example.com", "carol@example.org"]);
    assert_eq!(env.attr("log_uid"), Some(uid.to_string().as_str()));
    let new_id = qf.id().unwrap().to_string();
    assert_ne!(new_id, drop_id);
    let line = inst.wait_log(&format!("{new_id}: uid={uid} from=<joe>"));
    assert!(line.contains("postfix/pickup["), "{line}");
    inst.wait_log(&format!("{new_id}: message-id=<"));
    let mut c = Vec::new();
    let mut reader = qf.content();
    let mut l = Vec::new();
    while reader.read_line(&mut l, 1 << 20).unwrap() {
        c.push(String::from_utf8_lossy(&l).into_owned());
    }
    assert_eq!(
        c[0],
        format!("Received: by mx.example.com (Postfix, from userid {uid})")
    );
    assert!(
        c.contains(&"From: Joe User <joe@example.com>".to_string()),
        "{c:?}"
    );

    eprintln!("{}", inst.log());
    // A second file, announced by a trigger.
    sendmail_file(&inst.layout, "ann", "bob", &[]);
    libmail::ipc::trigger(&inst.socket("pickup"), b"W").unwrap();
    wait_until("second file picked up", || {
        complete(&inst, Queue::Maildrop).is_empty() && complete(&inst, Queue::Incoming).len() == 2
    });
}

#[test]
fn pickup_moves_damaged_files_to_corrupt_and_goes_on() {
    let inst = Instance::new("pickup-corrupt", "");
    let _cleanup = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    let bad = sendmail_file(&inst.layout, "joe", "bob", &[]);
    let bad_path = inst
        .layout
        .find(&bad.parse().unwrap(), &[Queue::Maildrop])
        .unwrap()
        .1;
    // Same name and mode, garbage inside.
    std::fs::write(
        &bad_path,
        b"this is not a queue file at all, not even close",
    )
    .unwrap();
    sendmail_file(&inst.layout, "joe", "bob", &[]);
    let _pickup = inst.start(env!("CARGO_BIN_EXE_pickup"), "pickup");
    wait_until("both handled", || {
        complete(&inst, Queue::Maildrop).is_empty()
            && complete(&inst, Queue::Incoming).len() == 1
            && complete(&inst, Queue::Corrupt).len() == 1
    });
    inst.wait_log(&format!("warning: {bad}: "));
}

#[test]
fn pickup_leaves_the_file_while_cleanup_is_down() {
    let inst = Instance::new("pickup-down", "");
    let id = sendmail_file(&inst.layout, "joe", "bob", &[]);
    let _pickup = inst.start(env!("CARGO_BIN_EXE_pickup"), "pickup");
    inst.wait_log(&format!(
        "warning: {id}: cannot hand over to the cleanup service"
    ));
    assert_eq!(complete(&inst, Queue::Maildrop).len(), 1);
    // cleanup comes up; a trigger makes pickup retry.
    let _cleanup = inst.start(env!("CARGO_BIN_EXE_cleanup"), "cleanup");
    libmail::ipc::trigger(&inst.socket("pickup"), b"W").unwrap();
    wait_until("picked up after cleanup started", || {
        complete(&inst, Queue::Maildrop).is_empty() && complete(&inst, Queue::Incoming).len() == 1
    });
}
