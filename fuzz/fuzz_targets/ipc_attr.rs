//! Any bytes as a stream from a peer daemon: attribute lists and data
//! chunks read with their bounds, then every list taken as a delivery
//! request and as a reply. Never a panic, never more memory than the
//! bounds allow.
#![no_main]

use std::io::{Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use libmail::deliver::{outcomes_from_attrs, Request};
use libmail::ipc::attr::{Conn, Item};

struct Peer(Cursor<Vec<u8>>);

impl Read for Peer {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for Peer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut conn = Conn::new(Peer(Cursor::new(data.to_vec())));
    for _ in 0..1000 {
        match conn.recv_item() {
            Ok(Some(Item::Attrs(a))) => {
                let _ = Request::from_attrs(&a);
                let _ = outcomes_from_attrs(&a);
            }
            Ok(Some(Item::Data(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
