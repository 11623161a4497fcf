//! Any bytes as a `cidr:` table file, then lookups: must never panic or
//! fail a lookup.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libmail::table::cidr::CidrTable;
use libmail::table::Table;

const KEYS: &[&str] = &[
    "",
    "1.2.3.4",
    "0.0.0.0",
    "255.255.255.255",
    "10.0.0.1",
    "192.168.1.1",
    "::",
    "::1",
    "::ffff:1.2.3.4",
    "2001:db8::1",
    "fe80::1",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "not-an-address",
];

fuzz_target!(|data: &[u8]| {
    let Ok(t) = CidrTable::parse("cidr:fuzz", "fuzz", data, None) else {
        return;
    };
    let _ = t.warnings().len();
    for k in KEYS {
        t.lookup(k).expect("a cidr lookup never fails");
    }
    // Every word of the input as a key, too (addresses from the table).
    let text = String::from_utf8_lossy(data);
    for w in text.split_whitespace().take(64) {
        let w = w
            .trim_start_matches('!')
            .trim_matches(|c| c == '[' || c == ']');
        let addr = w.split('/').next().unwrap_or(w);
        t.lookup(addr).expect("a cidr lookup never fails");
    }
});
