//! Any bytes as a `regexp:` table file, then lookups: must never panic,
//! hang or fail a lookup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libmail::table::regexp::{Flavor, RegexpTable};
use libmail::table::Table;

const KEYS: &[&str] = &[
    "",
    "a",
    "ABC",
    "user+ext@example.com",
    "postmaster@Example.ORG",
    "a\nb",
    "Subject: hello\n world",
    "\u{e9}t\u{e9}",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac",
];

fuzz_target!(|data: &[u8]| {
    let Ok(t) = RegexpTable::parse("regexp:fuzz", "fuzz", data, Flavor::Regexp) else {
        return;
    };
    let _ = t.warnings().len();
    for k in KEYS {
        t.lookup(k).expect("a regexp lookup never fails");
    }
    // The table's own text as a key, too.
    let own = String::from_utf8_lossy(&data[..data.len().min(256)]);
    t.lookup(&own).expect("a regexp lookup never fails");
});
