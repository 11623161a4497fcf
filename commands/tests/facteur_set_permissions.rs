//! `facteur set-permissions`: creates the queue directory with Postfix's
//! layout and modes, reports each change, repairs what drifted, and says
//! nothing when all is in order.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

mod common;

fn run(dir: &str) -> (i32, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_facteur"))
        .args(["-c", dir, "set-permissions"])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    (
        out.status.code().unwrap_or(-1),
        err.lines().map(str::to_string).collect(),
    )
}

fn mode(p: &std::path::Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn creates_then_repairs_the_queue_directory() {
    let s = common::setup("setperm", "", false);
    let (queue, etc) = (&s.queue, s.etc.as_str());

    let (code, lines) = run(etc);
    assert_eq!(code, 0, "{lines:#?}");
    for q in [
        "maildrop", "incoming", "active", "deferred", "hold", "corrupt", "defer", "bounce",
        "public", "private", "pid", "recycle",
    ] {
        assert!(queue.join(q).is_dir(), "{q} missing; {lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("created {}", queue.join(q).display()))),
            "{q} creation not reported: {lines:#?}"
        );
    }
    assert_eq!(mode(&queue.join("incoming")), 0o700);
    assert_eq!(mode(&queue.join("maildrop")), 0o730);
    assert_eq!(mode(&queue.join("public")), 0o710);

    // Nothing to do: nothing said.
    let (code, lines) = run(etc);
    assert_eq!((code, lines.len()), (0, 0), "{lines:#?}");

    // Drift is repaired and reported.
    fs::set_permissions(queue.join("active"), fs::Permissions::from_mode(0o777)).unwrap();
    let (code, lines) = run(etc);
    assert_eq!(code, 0);
    assert_eq!(mode(&queue.join("active")), 0o700);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("mode 0777 -> 0700"), "{lines:#?}");
}

/// As root the queue is handed to `mail_owner`, so an unknown one is a
/// clear error and nothing is created; as an ordinary user everything
/// stays the user's and `mail_owner` is not consulted.
#[test]
fn unknown_mail_owner_matters_only_to_root() {
    let top = std::env::temp_dir().join(format!("facteur-setperm-owner-{}", std::process::id()));
    let _ = fs::remove_dir_all(&top);
    fs::create_dir_all(top.join("etc")).unwrap();
    fs::write(
        top.join("etc/main.cf"),
        format!(
            "queue_directory = {}/queue\nmail_owner = no-such-user-facteur\n",
            top.display()
        ),
    )
    .unwrap();
    let (code, lines) = run(top.join("etc").to_str().unwrap());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(code, 1);
        assert!(
            lines[0].contains("mail_owner no-such-user-facteur: no such user"),
            "{lines:#?}"
        );
        assert!(!top.join("queue").exists());
    } else {
        assert_eq!(code, 0, "{lines:#?}");
        assert!(top.join("queue/incoming").is_dir());
    }
    fs::remove_dir_all(&top).unwrap();
}
