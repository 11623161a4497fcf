//! In-process lookup micro-benchmark for `hash:` (and `cdb:`) tables.
//!
//! Builds an N-entry table (default 1,000,000) in a temporary directory,
//! then times warm lookups of random existing keys in batches and prints
//! the median nanoseconds per lookup: through `lookup_bytes` (zero-copy)
//! and through the `Table` trait (case folding and a `String` result, what
//! the daemons call).
//!
//! `cargo run --release -p libmail --example table_lookup_bench [N]`

use std::time::Instant;

use libmail::table::cdb::{self, CdbTable};
use libmail::table::indexed::{self, IndexedTable, OnDuplicate};
use libmail::table::{OpenOptions, Table};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median ns per call of `f` over `rounds` batches of `keys`.
fn bench(keys: &[String], rounds: usize, mut f: impl FnMut(&str) -> bool) -> f64 {
    // Warm up: touch every page the lookups will touch.
    let mut found = 0usize;
    for k in keys {
        found += f(k) as usize;
    }
    assert_eq!(found, keys.len(), "every key must be found");
    let mut per = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut n = 0usize;
        for k in keys {
            n += f(k) as usize;
        }
        let ns = t.elapsed().as_nanos() as f64 / keys.len() as f64;
        std::hint::black_box(n);
        per.push(ns);
    }
    median(per)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("facteur-lookup-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("t");
    let base_s = base.to_str().unwrap().to_string();
    let entries = (0..n).map(|i| {
        (
            format!("user{i}@example{}.com", i % 1000),
            format!("smtp:[relay{}.example.net]:25", i % 97),
        )
    });
    let t = Instant::now();
    indexed::write_table(&dir.join("t.db"), entries.clone(), OnDuplicate::KeepFirst).unwrap();
    let build_db = t.elapsed();
    let t = Instant::now();
    cdb::write_table(&dir.join("t.cdb"), entries, OnDuplicate::KeepFirst).unwrap();
    let build_cdb = t.elapsed();

    // 200,000 random existing keys (xorshift, fixed seed).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let keys: Vec<String> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % n as u64) as usize;
            format!("user{i}@example{}.com", i % 1000)
        })
        .collect();

    let opts = OpenOptions::default();
    let db = IndexedTable::open("hash:bench", &base_s, &opts).unwrap();
    let cdb_t = CdbTable::open("cdb:bench", &base_s, &opts).unwrap();
    let rounds = 15;
    let db_bytes = bench(&keys, rounds, |k| {
        db.lookup_bytes(k.as_bytes()).unwrap().is_some()
    });
    let db_trait = bench(&keys, rounds, |k| db.lookup(k).unwrap().is_some());
    let cdb_bytes = bench(&keys, rounds, |k| {
        cdb_t.lookup_bytes(k.as_bytes()).unwrap().is_some()
    });
    let cdb_trait = bench(&keys, rounds, |k| cdb_t.lookup(k).unwrap().is_some());
    println!("entries: {n}");
    println!("build hash (in process): {:.3} s", build_db.as_secs_f64());
    println!("build cdb  (in process): {:.3} s", build_cdb.as_secs_f64());
    println!("hash lookup_bytes: median {db_bytes:.0} ns per warm lookup");
    println!("hash Table::lookup: median {db_trait:.0} ns per warm lookup");
    println!("cdb  lookup_bytes: median {cdb_bytes:.0} ns per warm lookup");
    println!("cdb  Table::lookup: median {cdb_trait:.0} ns per warm lookup");
    std::fs::remove_dir_all(&dir).unwrap();
}
