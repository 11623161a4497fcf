//! Any bytes as main.cf: parsing, expanding every value and checking the
//! whole configuration must give values or diagnostics, never a panic or a
//! hang (expansion is bounded in depth and size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use libmail::config::check::check_config;
use libmail::config::maincf::MainCf;
use libmail::config::params::Params;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (cf, _diags) = MainCf::parse(&text, "fuzz/main.cf");
    let names: Vec<String> = cf.effective().map(|e| e.name.clone()).collect();
    let params = Params::new("/nonexistent", cf).with_system_hostname("fuzz.example");
    for n in names.iter().take(64) {
        let _ = params.value(n);
    }
    for n in ["myhostname", "mydomain", "mydestination", "mynetworks", "smtpd_banner"] {
        let _ = params.value(n);
    }
    let _ = check_config(&params, None);
});
