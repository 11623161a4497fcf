//! Any bytes after a 354: smtpd's DATA reader (read_data_into), with
//! pieces as short as 3 bytes so line boundaries fall everywhere. The
//! property is SMTP smuggling's: the content ends exactly where the input
//! first holds `<CR><LF>.<CR><LF>` (or starts with `.<CR><LF>`), never
//! earlier and never elsewhere; what came before is handed over whole
//! (dot-unstuffed), and an input without that end is never called ended.
#![no_main]

use std::time::Duration;

use facteur_daemons::smtpd::server::data_spec::{reference, Recorder};
use facteur_daemons::smtpd::server::{read_data_into, End};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let piece = 3 + usize::from(first % 64);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut sink = Recorder::default();
    let mut rd: &[u8] = data;
    let got = rt.block_on(read_data_into(&mut rd, Duration::from_secs(5), piece, &mut sink));
    match reference(data) {
        Some((end, text, bare)) => {
            assert_eq!(got, Ok(()), "the content ends at {end}");
            assert_eq!(data.len() - rd.len(), end, "consumed exactly up to the end");
            assert_eq!(sink.text, text, "the content, whole and unstuffed");
            assert_eq!(sink.bare_lf, bare, "bare LF lines");
        }
        None => assert_eq!(got, Err(End::Lost), "no end without CRLF.CRLF"),
    }
});
