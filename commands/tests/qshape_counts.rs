//! qshape over a deferred queue of 10,000 messages to 50 domains with
//! ages from seconds to weeks: every bucket count is checked against a
//! table computed here independently (integer arithmetic on the bucket
//! bounds, not qshape's logarithm). The time qshape took is printed, not
//! asserted (benchmarks are scripts).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libmail::config::params::Params;
use libmail::queue::{sync_many, IdStyle, NewRecipient, Queue, QueueLayout, Writer};

const MESSAGES: usize = 10_000;
const DOMAINS: usize = 50;

/// The bucket of an age in seconds with 5-minute ticks and 10 buckets:
/// bucket 1 is [0, 5 min); bucket k >= 2 is [5·2^(k-2), 5·2^(k-1)) min;
/// the last takes everything older.
fn expected_bucket(age_secs: u64) -> usize {
    let tick = 300u64;
    if age_secs < tick {
        return 1;
    }
    let mut k = 2;
    let mut upper = tick * 2;
    while age_secs >= upper && k < 10 {
        k += 1;
        upper *= 2;
    }
    k
}

#[test]
fn bucket_counts_are_right_for_a_large_deferred_queue() {
    let s = common::setup("qshape-counts", "", true);
    let params = Params::load(&s.etc).unwrap();
    let layout = QueueLayout::from_params(&params).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut expected: BTreeMap<String, [u64; 11]> = BTreeMap::new();
    let mut batch = Vec::new();
    // Ages spread over 0 s .. ~2 weeks, with a step that is not a
    // divisor of the bucket bounds; a margin keeps each age clear of a
    // bound so that the seconds qshape starts later cannot move it.
    for i in 0..MESSAGES {
        let mut age = (i as u64 * 7919 + 13) % (14 * 86400);
        let b = expected_bucket(age);
        let b_late = expected_bucket(age + 120);
        if b != b_late {
            age += 240; // step over the bound
        }
        let b = expected_bucket(age);
        let domain = format!("d{:02}.example", i % DOMAINS);
        let rcpts = 1 + i % 3;
        let mut w = Writer::create(&layout, Queue::Deferred, IdStyle::Short).unwrap();
        w.arrival_time(UNIX_EPOCH + Duration::from_secs(now - age))
            .unwrap();
        w.sender("s@example.org").unwrap();
        let addrs: Vec<String> = (0..rcpts).map(|r| format!("u{r}@{domain}")).collect();
        for a in &addrs {
            w.recipient(&NewRecipient::new(a)).unwrap();
        }
        w.start_content().unwrap();
        w.content_line(b"Subject: x").unwrap();
        batch.push(w.finish().unwrap());
        for row in [domain.as_str(), "TOTAL"] {
            let e = expected.entry(row.to_string()).or_insert([0; 11]);
            e[0] += rcpts as u64;
            e[b] += rcpts as u64;
        }
        if batch.len() == 1000 {
            for r in sync_many(std::mem::take(&mut batch)) {
                r.unwrap();
            }
        }
    }
    for r in sync_many(batch) {
        r.unwrap();
    }
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_qshape"))
        .args(["-c", &s.etc, "deferred"])
        .output()
        .unwrap();
    eprintln!(
        "qshape over {MESSAGES} messages took {:?}",
        started.elapsed()
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut got: BTreeMap<String, [u64; 11]> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 12, "{line}");
        let mut counts = [0u64; 11];
        for (k, v) in f[1..].iter().enumerate() {
            counts[k] = v.parse().unwrap();
        }
        got.insert(f[0].to_string(), counts);
    }
    assert_eq!(got, expected);
    // TOTAL first, then by total descending.
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert!(rows[0].trim_start().starts_with("TOTAL"));
    let totals: Vec<u64> = rows
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{text}");
}
