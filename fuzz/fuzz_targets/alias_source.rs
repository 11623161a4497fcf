//! Any text as one logical line of an aliases(5) file, through postalias's
//! parser: never a panic.
#![no_main]

use facteur_commands::postalias::parse_alias_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_alias_line(&text);
});
