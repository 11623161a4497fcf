//! Any bytes as a queue file: opening, reading the content and verifying
//! must give the message or a clean Incomplete/Corrupt error, never a
//! panic or an unbounded allocation.
#![no_main]

use std::os::unix::fs::PermissionsExt;

use libfuzzer_sys::fuzz_target;
use libmail::queue::file::{Access, QueueFile};
use libmail::queue::Limits;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("facteur-fuzz-q-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join("B59DF9902ED");
    std::fs::write(&p, data).unwrap();
    // Marked complete (owner-execute), so the reader goes past that check.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
    if let Ok(q) = QueueFile::open(&p, Access::ReadOnly, &Limits::default()) {
        let mut r = q.content();
        for _ in 0..100_000 {
            match r.next_piece() {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let _ = q.verify();
    }
});
