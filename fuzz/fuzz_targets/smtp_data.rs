//! Any bytes after a 354: smtpd's DATA reader (read_data_into), with
//! pieces as short as 2 bytes so line boundaries fall everywhere. The
//! property is SMTP smuggling's: the content ends exactly where the input
//! first holds `<CR><LF>.<CR><LF>` (or starts with `.<CR><LF>`), never
//! earlier and never elsewhere; what came before is handed over whole
//! (dot-unstuffed), and an input without that end is never called ended.
#![no_main]

use std::time::Duration;

use facteur_daemons::smtpd::server::{read_data_into, DataSink, End};
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Recorder {
    /// The content as the reader handed it over, lines ending in LF.
    text: Vec<u8>,
    bare_lf: usize,
}

impl DataSink for Recorder {
    fn line(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
        self.text.push(b'\n');
    }
    fn piece(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
    }
    fn bare_lf(&mut self) {
        self.bare_lf += 1;
    }
    fn checkpoint(&mut self) {}
}

/// Where the content ends (the offset after the final `.<CR><LF>`), by
/// the plain definition, and the content before it.
fn expected_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b".\r\n") {
        return Some(3);
    }
    data.windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|i| i + 5)
}

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
    let got = rt.block_on(read_data_into(
        &mut rd,
        Duration::from_secs(5),
        piece,
        &mut sink,
    ));
    match expected_end(data) {
        Some(end) => {
            assert_eq!(got, Ok(()), "the content ends at {end}");
            assert_eq!(data.len() - rd.len(), end, "consumed exactly up to the end");
            // What was handed over is the content before the end line,
            // line by line: its LF or CRLF made LF, one leading dot removed.
            let body = &data[..end - 3];
            let mut want = Vec::new();
            for line in body.split_inclusive(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                want.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
                want.push(b'\n');
            }
            assert_eq!(sink.text, want);
            let bare = body
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| !l.ends_with(b"\r\n"))
                .count();
            assert_eq!(sink.bare_lf, bare, "bare LF lines");
        }
        None => assert_eq!(got, Err(End::Lost), "no end without CRLF.CRLF"),
    }
});
