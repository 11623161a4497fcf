//! Maildir delivery rate: N deliveries of a 4 KiB message by two threads
//! into one Maildir (the `local_destination_concurrency_limit` default),
//! each durable before the next: `cargo run --release -p libmail --example
//! maildir_bench -- 3000 /tmp/mdbench`.
use libmail::mailbox::maildir::{deliver, MaildirOptions};
use libmail::mailbox::SliceSource;
use std::time::Instant;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = std::path::PathBuf::from(std::env::args().nth(2).unwrap_or("/tmp/mdbench".into()));
    let _ = std::fs::remove_dir_all(&dir);
    let body: Vec<u8> = (0..4000)
        .map(|i| if i % 72 == 71 { b'\n' } else { b'x' })
        .collect();
    let opts = MaildirOptions {
        hostname: "h".into(),
        ..Default::default()
    };
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..n / 2 {
                    let mut src = SliceSource::new(&body);
                    deliver(&dir, b"", &mut src, &opts).unwrap();
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!("{n} deliveries in {secs:.2}s: {:.0}/s", n as f64 / secs);
}
