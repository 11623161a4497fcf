//! Any bytes as master.cf: parsing must give services or diagnostics,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use libmail::config::mastercf;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (m, _diags) = mastercf::parse(&text, "fuzz/master.cf");
    for s in m.effective() {
        let _ = (s.key(), s.process_name());
    }
});
