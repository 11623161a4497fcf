//! Any text as a table spec opened by `libmail::table::open` — the parsers
//! of `inline:{...}`, `static:{...}`, `unionmap:{...}`, `pipemap:{...}` and
//! `type:name` splitting — then a few lookups: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libmail::table::{open, OpenOptions};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Keep to in-memory types: a fuzzer must not open arbitrary files.
    let spec = match data.first().map(|b| b % 4) {
        Some(0) => format!("inline:{text}"),
        Some(1) => format!("static:{text}"),
        Some(2) => format!("unionmap:{{inline:{text}, static:x}}"),
        _ => format!("pipemap:{{inline:{text}, inline:{text}}}"),
    };
    if let Ok(t) = open(&spec, &OpenOptions::default()) {
        for k in ["", "a", "key", "foo", "x"] {
            let _ = t.lookup(k);
        }
    }
});
