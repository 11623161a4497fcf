//! Any bytes as a compiled `hash:` (.db) or `cdb:` (.cdb) file: opening,
//! looking up, iterating and verifying must give results or clean errors,
//! never a panic or an out-of-bounds read. The first input byte picks the
//! format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libmail::table::cdb::CdbTable;
use libmail::table::indexed::IndexedTable;
use libmail::table::{OpenOptions, Table};

const KEYS: &[&str] = &["", "a", "key", "user@example.com", "@example.com", "*", "x\0"];

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("facteur-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let base = dir.join("t");
    let base = base.to_str().unwrap();
    let opts = OpenOptions::default();
    if which & 1 == 0 {
        std::fs::write(format!("{base}.db"), body).unwrap();
        if let Ok(t) = IndexedTable::open_path("hash:fuzz", base, &opts) {
            for k in KEYS {
                let _ = t.lookup(k);
            }
            for e in t.iter().take(10_000) {
                if e.is_err() {
                    break;
                }
            }
            let _ = t.verify();
        }
    } else {
        std::fs::write(format!("{base}.cdb"), body).unwrap();
        if let Ok(t) = CdbTable::open_path("cdb:fuzz", base, &opts) {
            for k in KEYS {
                let _ = t.lookup(k);
            }
            for e in t.iter().take(10_000) {
                if e.is_err() {
                    break;
                }
            }
            let _ = t.verify();
        }
    }
});
