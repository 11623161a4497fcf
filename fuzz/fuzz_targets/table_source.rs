//! Any bytes as a postmap source file (the `key value` text postmap
//! compiles and texthash reads): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libmail::table::source::{first_wins, parse_source};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (entries, _) = parse_source(&text, "fuzz");
    let _ = first_wins(entries, false, "fuzz");
});
