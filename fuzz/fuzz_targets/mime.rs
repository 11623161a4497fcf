//! Any bytes as a message: cleanup's MIME state machine
//! (`cleanup::mime`), driven as cleanup drives it — header lines
//! (folded lines joined) until a blank or non-header line, then body
//! lines, whose boundary lines open part headers. Properties: no panic,
//! the open levels never exceed the nesting limit (plus the one that
//! would exceed it, which is refused), a header block is only reported
//! while headers are being read, and a boundary line is only found when
//! a level is open.
#![no_main]

use facteur_daemons::cleanup::mime::{parse_content_type, Delimiter, Mime};
use libfuzzer_sys::fuzz_target;

fn is_header(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(n) if n > 0 => line[..n].iter().all(|&b| b > b' ' && b < 127),
        _ => false,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let limit = usize::from(first % 8);
    let boundary_len = 1 + usize::from(first / 8);
    let mut m = Mime::new(limit, boundary_len);
    let mut pending: Option<Vec<u8>> = None;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Any value parses without panicking.
        let _ = parse_content_type(line);
        if m.header_class().is_some() {
            if matches!(line.first(), Some(b' ' | b'\t')) && pending.is_some() {
                if let Some(p) = pending.as_mut() {
                    if p.len() < 1 << 16 {
                        p.push(b'\n');
                        p.extend_from_slice(line);
                    }
                }
                continue;
            }
            if let Some(h) = pending.take() {
                let _ = m.header(&h);
                assert!(m.depth() <= limit + 1, "depth {} > {}", m.depth(), limit + 1);
            }
            if is_header(line) {
                pending = Some(line.to_vec());
                continue;
            }
            m.end_headers(line.is_empty());
            if line.is_empty() {
                continue;
            }
        }
        let depth = m.depth();
        match m.body_line(line) {
            Some(Delimiter::Part) => {
                assert!(depth > 0);
                assert!(m.header_class().is_some());
            }
            Some(Delimiter::Close) => {
                assert!(depth > 0);
                assert!(m.depth() < depth);
                assert!(m.header_class().is_none());
            }
            None => {}
        }
    }
    if let Some(h) = pending.take() {
        let _ = m.header(&h);
    }
    assert!(m.depth() <= limit + 1);
});
