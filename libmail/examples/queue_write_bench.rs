//! queue_write_bench — how fast durable queue files can be written.
//!
//! Writes N messages of 4 KiB (one recipient) into `incoming/` of a
//! scratch queue directory, first one by one (`Unsynced::sync`: one file
//! fsync and one directory fsync each), then in group commits of B
//! messages (`sync_many`: one fsync per file, one per directory per
//! batch). Reports messages/s, fsyncs/message, and user and system CPU
//! time per message (the user time is this library's own cost; the
//! system time is mostly the file system's). A measurement, not a test.
//!
//! ```text
//! cargo run --release -p libmail --example queue_write_bench -- [N] [DIR] [B...]
//! ```
//!
//! N defaults to 2000, DIR to a directory under the system temp dir (put
//! it on the file system the queue will live on), B to 1 (no batching),
//! 8 and 32.

use std::time::Instant;

use libmail::queue::{
    fsync_count, sync_many, IdStyle, NewRecipient, Ownership, Queue, QueueLayout, Writer,
};

/// (user, system) CPU seconds of this process so far.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage only fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn message_lines() -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = [
        "Received: from client.example.org (client.example.org [192.0.2.7])",
        "\tby mx.example.net (Facteur) with ESMTP id 0000000000",
        "\tfor <bob@example.net>; Mon,  8 Jan 2024 11:02:03 +0000 (UTC)",
        "From: Alice <alice@example.org>",
        "To: Bob <bob@example.net>",
        "Subject: benchmark message",
        "Message-ID: <20240108110203.0000000000@example.org>",
        "Date: Mon, 8 Jan 2024 11:02:03 +0000",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut size: usize = lines.iter().map(|l| l.len() + 2).sum();
    let mut i = 0u32;
    while size < 4096 {
        let l = format!(
            "{i:04} The quick brown fox jumps over the lazy dog, again and again and again."
        );
        size += l.len() + 2;
        lines.push(l.into_bytes());
        i += 1;
    }
    lines
}

fn write_one(l: &QueueLayout, lines: &[Vec<u8>]) -> Writer {
    let mut w = Writer::create(l, Queue::Incoming, IdStyle::Short).expect("create");
    w.sender("alice@example.org").unwrap();
    w.attr("rewrite_context", "remote").unwrap();
    w.recipient(&NewRecipient::new("bob@example.net")).unwrap();
    w.start_content().unwrap();
    for line in lines {
        w.content_line(line).unwrap();
    }
    w
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("facteur-bench-{}", std::process::id()))
        });
    let mut batches: Vec<usize> = args.iter().skip(2).filter_map(|s| s.parse().ok()).collect();
    if batches.is_empty() {
        batches = vec![1, 8, 32];
    }
    let l = QueueLayout::new(&dir, "deferred, defer", 1).unwrap();
    l.create_or_repair(&Ownership::CurrentUser).unwrap();
    let lines = message_lines();
    println!(
        "{n} messages of {} bytes, 1 recipient, in {}",
        lines.iter().map(|l| l.len() + 2).sum::<usize>(),
        l.dir(Queue::Incoming).display()
    );
    println!(
        "{:>6} {:>11} {:>11} {:>13} {:>12}",
        "batch", "messages/s", "fsyncs/msg", "user us/msg", "sys us/msg"
    );
    for &b in &batches {
        let b = b.max(1);
        let (f0, c0, t0) = (fsync_count(), cpu_seconds(), Instant::now());
        let mut done = 0;
        while done < n {
            let k = b.min(n - done);
            if k == 1 {
                write_one(&l, &lines).finish().unwrap().sync().unwrap();
            } else {
                let batch: Vec<_> = (0..k)
                    .map(|_| write_one(&l, &lines).finish().unwrap())
                    .collect();
                for r in sync_many(batch) {
                    r.unwrap();
                }
            }
            done += k;
        }
        let secs = t0.elapsed().as_secs_f64();
        let (f1, c1) = (fsync_count(), cpu_seconds());
        println!(
            "{:>6} {:>11.0} {:>11.2} {:>13.1} {:>12.1}",
            b,
            n as f64 / secs,
            (f1 - f0) as f64 / n as f64,
            (c1.0 - c0.0) * 1e6 / n as f64,
            (c1.1 - c0.1) * 1e6 / n as f64
        );
        for r in l.scan(Queue::Incoming) {
            let (_, p) = r.unwrap();
            std::fs::remove_file(p).unwrap();
        }
    }
    if args.get(1).is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
