//! The attribute protocol Facteur's daemons speak to each other over
//! UNIX-domain sockets (Postfix uses attribute lists for the same job;
//! wire compatibility with Postfix is not needed inside one system).
//!
//! ```text
//! list   = *( name "=" value LF ) LF        an attribute list, ended by an empty line
//! data   = "#" length LF bytes               a chunk of raw bytes (length in decimal)
//! end    = "#0" LF                           the end of a run of chunks
//! ```
//!
//! Names are `[A-Za-z0-9_.-]+`. Values are bytes with `%`, LF, CR and NUL
//! written as `%25`, `%0A`, `%0D`, `%00`; nothing else is escaped, so a
//! list is readable in `strace` output. A reader bounds every line
//! ([`MAX_LINE`]), the attributes of one list ([`MAX_ATTRS`]) and each
//! chunk ([`MAX_CHUNK`]): a peer cannot make it hold more than that.
//!
//! Hand-written because it is a few dozen lines and every daemon links
//! it; a serialization crate would add a dependency and hide the bounds.

use std::io::{self, BufRead, BufReader, Read, Write};

/// Longest line of a list (name, `=`, escaped value).
pub const MAX_LINE: usize = 1 << 20;
/// Most attributes in one list.
pub const MAX_ATTRS: usize = 100_000;
/// Largest data chunk.
pub const MAX_CHUNK: usize = 1 << 20;

/// An attribute list, in order; names may repeat (one per recipient).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs(pub Vec<(String, String)>);

impl Attrs {
    pub fn new() -> Attrs {
        Attrs(Vec::new())
    }

    /// Appends `name=value`.
    pub fn push(&mut self, name: &str, value: impl ToString) -> &mut Self {
        self.0.push((name.to_string(), value.to_string()));
        self
    }

    /// Builder form of [`push`](Self::push).
    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.push(name, value);
        self
    }

    /// Appends a recipient as the cleanup and delivery protocols carry
    /// it: `rcpt`, then its `rcpt.orig`, `rcpt.notify`, `rcpt.orcpt` when
    /// set (a reader applies `rcpt.*` to the `rcpt` before them).
    pub fn push_recipient(
        &mut self,
        address: &str,
        orig: Option<&str>,
        notify: u32,
        orcpt: Option<&str>,
    ) -> &mut Self {
        self.push("rcpt", address);
        if let Some(o) = orig {
            self.push("rcpt.orig", o);
        }
        if notify != 0 {
            self.push("rcpt.notify", notify);
        }
        if let Some(o) = orcpt {
            self.push("rcpt.orcpt", o);
        }
        self
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name` as a number.
    pub fn get_num<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.get(name).and_then(|v| v.parse().ok())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The attribute `name` or an `InvalidData` error naming it.
    pub fn require(&self, name: &str) -> io::Result<&str> {
        self.get(name)
            .ok_or_else(|| bad(format!("missing attribute {name}")))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn escape_into(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        match b {
            b'%' => out.extend_from_slice(b"%25"),
            b'\n' => out.extend_from_slice(b"%0A"),
            b'\r' => out.extend_from_slice(b"%0D"),
            0 => out.extend_from_slice(b"%00"),
            _ => out.push(b),
        }
    }
}

fn unescape(v: &[u8]) -> io::Result<String> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("bad %-escape in attribute value"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad("attribute value is not UTF-8"))
}

/// Encodes a list (with its ending empty line).
pub fn encode(attrs: &Attrs) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * attrs.0.len() + 1);
    for (n, v) in &attrs.0 {
        debug_assert!(valid_name(n), "bad attribute name {n:?}");
        out.extend_from_slice(n.as_bytes());
        out.push(b'=');
        escape_into(&mut out, v.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// One end of a connection: buffered reads, explicit flushes.
pub struct Conn<S: Read + Write> {
    reader: BufReader<S>,
    out: Vec<u8>,
    line: Vec<u8>,
}

/// What [`Conn::recv_item`] found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Attrs(Attrs),
    /// A data chunk (empty = the end marker `#0`).
    Data(Vec<u8>),
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            reader: BufReader::with_capacity(64 << 10, stream),
            out: Vec::with_capacity(4096),
            line: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        self.reader.get_ref()
    }

    /// Whether bytes already read wait in the buffer (the next reply may
    /// be there while the socket itself has nothing more).
    pub fn buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// The stream, for a caller that goes on without the framing (what
    /// was read ahead into the buffer is lost: only for a peer that has
    /// nothing more to say until it is spoken to).
    pub fn into_inner(self) -> S {
        self.reader.into_inner()
    }

    /// Queues a list for sending (see [`flush`](Self::flush)).
    pub fn put(&mut self, attrs: &Attrs) {
        encode_list(attrs, &mut self.out);
    }

    /// Queues a data chunk; an empty chunk is the end marker.
    pub fn put_data(&mut self, chunk: &[u8]) {
        debug_assert!(chunk.len() <= MAX_CHUNK);
        self.out.push(b'#');
        self.out
            .extend_from_slice(chunk.len().to_string().as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(chunk);
        if self.out.len() >= 64 << 10 {
            // Keep the buffer bounded while streaming a large message.
            let _ = self.flush_inner();
        }
    }

    fn flush_inner(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.reader.get_mut().write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.flush_inner()?;
        self.reader.get_mut().flush()
    }

    /// Sends a list now.
    pub fn send(&mut self, attrs: &Attrs) -> io::Result<()> {
        self.put(attrs);
        self.flush()
    }

    /// Reads one line (without LF) into `self.line`; false at EOF before
    /// any byte.
    fn read_line(&mut self) -> io::Result<bool> {
        self.line.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Ok(false);
        }
        if self.line.last() != Some(&b'\n') {
            if self.line.len() > MAX_LINE {
                return Err(bad("attribute line too long"));
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a line",
            ));
        }
        self.line.pop();
        Ok(true)
    }

    /// The next list or data chunk; `None` at a clean end of stream.
    pub fn recv_item(&mut self) -> io::Result<Option<Item>> {
        if !self.read_line()? {
            return Ok(None);
        }
        if self.line.first() == Some(&b'#') {
            let len: usize = std::str::from_utf8(&self.line[1..])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad data chunk length"))?;
            if len > MAX_CHUNK {
                return Err(bad("data chunk too large"));
            }
            // Copied out of the reader's buffer: a zeroed buffer that
            // read_exact then overwrites costs a memset per chunk.
            let mut buf = Vec::with_capacity(len);
            while buf.len() < len {
                let avail = match self.reader.fill_buf() {
                    Ok(a) => a,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if avail.is_empty() {
                    // read_exact's error, as before.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ));
                }
                let n = avail.len().min(len - buf.len());
                buf.extend_from_slice(&avail[..n]);
                self.reader.consume(n);
            }
            return Ok(Some(Item::Data(buf)));
        }
        let mut attrs = Attrs::new();
        loop {
            if self.line.is_empty() {
                return Ok(Some(Item::Attrs(attrs)));
            }
            if attrs.0.len() >= MAX_ATTRS {
                return Err(bad("too many attributes"));
            }
            attrs.0.push(parse_line(&self.line)?);
            if !self.read_line()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of an attribute list",
                ));
            }
        }
    }

    /// The next list; `None` at a clean end of stream; data where a list
    /// is expected is an error.
    pub fn recv(&mut self) -> io::Result<Option<Attrs>> {
        match self.recv_item()? {
            None => Ok(None),
            Some(Item::Attrs(a)) => Ok(Some(a)),
            Some(Item::Data(_)) => Err(bad("data chunk where an attribute list was expected")),
        }
    }

    /// The next list, or an error at end of stream.
    pub fn expect(&mut self) -> io::Result<Attrs> {
        self.recv()?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")
        })
    }
}

/// Appends `attrs` to `out` as one list on the wire.
pub fn encode_list(attrs: &Attrs, out: &mut Vec<u8>) {
    for (n, v) in &attrs.0 {
        out.extend_from_slice(n.as_bytes());
        out.push(b'=');
        escape_into(out, v.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// One `name=value` line (without its LF).
fn parse_line(line: &[u8]) -> io::Result<(String, String)> {
    let eq = line
        .iter()
        .position(|&b| b == b'=')
        .ok_or_else(|| bad("attribute without ="))?;
    let name = std::str::from_utf8(&line[..eq])
        .ok()
        .filter(|n| valid_name(n))
        .ok_or_else(|| bad("bad attribute name"))?
        .to_string();
    Ok((name, unescape(&line[eq + 1..])?))
}

/// Where the first complete list in `buf` ends (the index after its
/// empty line), for a reader that gathers bytes as they come.
pub fn list_end(buf: &[u8]) -> Option<usize> {
    list_end_after(buf, 0)
}

/// [`list_end`] for a buffer whose first `seen` bytes were already
/// looked at without finding the end: only what came since is scanned
/// (with the byte before it), so gathering a long list stays linear.
pub fn list_end_after(buf: &[u8], seen: usize) -> Option<usize> {
    if seen == 0 && buf.first() == Some(&b'\n') {
        return Some(1);
    }
    let from = seen.saturating_sub(1).min(buf.len());
    buf[from..]
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i + 2)
}

/// Parses one complete list, `buf[..list_end(buf)]`, with the bounds of
/// [`Conn::recv`].
pub fn parse_list(buf: &[u8]) -> io::Result<Attrs> {
    let body = buf
        .strip_suffix(b"\n")
        .ok_or_else(|| bad("attribute list without its end"))?;
    let mut attrs = Attrs::new();
    if body.is_empty() {
        return Ok(attrs);
    }
    let body = body
        .strip_suffix(b"\n")
        .ok_or_else(|| bad("attribute list without its end"))?;
    for line in body.split(|&b| b == b'\n') {
        if line.len() > MAX_LINE {
            return Err(bad("attribute line too long"));
        }
        if line.is_empty() {
            return Err(bad("empty line inside an attribute list"));
        }
        if attrs.0.len() >= MAX_ATTRS {
            return Err(bad("too many attributes"));
        }
        attrs.0.push(parse_line(line)?);
    }
    Ok(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    struct Duplex(Cursor<Vec<u8>>, Vec<u8>);
    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn reader(bytes: &[u8]) -> Conn<Duplex> {
        Conn::new(Duplex(Cursor::new(bytes.to_vec()), Vec::new()))
    }

    #[test]
    fn a_list_gathered_piecewise_parses_as_conn_reads_it() {
        let a = Attrs::new()
            .with("status", "sent")
            .with("reason", "250 2.0.0 ok\nsecond line")
            .with("rcpt", "x@y");
        let mut wire = Vec::new();
        encode_list(&a, &mut wire);
        // Not complete until the empty line has arrived.
        for cut in 0..wire.len() {
            assert_eq!(list_end(&wire[..cut]), None, "cut at {cut}");
        }
        assert_eq!(list_end(&wire), Some(wire.len()));
        // Scanning on from where the last look stopped finds the same end.
        for seen in 0..wire.len() {
            assert_eq!(list_end_after(&wire, seen), Some(wire.len()), "seen {seen}");
        }
        assert_eq!(parse_list(&wire).unwrap(), a);
        assert_eq!(reader(&wire).recv().unwrap(), Some(a));
        assert_eq!(list_end(b"\nrest"), Some(1));
        assert_eq!(parse_list(b"\n").unwrap(), Attrs::new());
        assert!(parse_list(b"no-equals\n\n").is_err());
        assert!(parse_list(b"bad name=x\n\n").is_err());
        assert!(parse_list(b"a=1\n").is_err());
    }

    #[test]
    fn round_trip_with_escapes_and_data() {
        let a = Attrs::new()
            .with("sender", "a%b\nc\r\0d")
            .with("rcpt", "x@y")
            .with("rcpt", "z@w");
        let mut w = Conn::new(Duplex(Cursor::new(Vec::new()), Vec::new()));
        w.put(&a);
        w.put_data(b"Subject: hi\n\nbody\n");
        w.put_data(b"");
        w.flush().unwrap();
        let bytes = w.get_ref().1.clone();
        assert!(bytes.starts_with(b"sender=a%25b%0Ac%0D%00d\nrcpt=x@y\n"));
        let mut r = reader(&bytes);
        assert_eq!(r.recv_item().unwrap(), Some(Item::Attrs(a.clone())));
        assert_eq!(
            r.recv_item().unwrap(),
            Some(Item::Data(b"Subject: hi\n\nbody\n".to_vec()))
        );
        assert_eq!(r.recv_item().unwrap(), Some(Item::Data(vec![])));
        assert_eq!(r.recv_item().unwrap(), None);
        let got = a.get_all("rcpt").collect::<Vec<_>>();
        assert_eq!(got, ["x@y", "z@w"]);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for input in [
            &b"noequals\n\n"[..],
            b"bad name=x\n\n",
            b"a=%zz\n\n",
            b"a=%4\n\n",
            b"#99999999999\n",
            b"#-1\n",
            b"a=1\n",
            b"a=1",
            b"#5\nab",
        ] {
            let mut r = reader(input);
            assert!(r.recv_item().is_err(), "{input:?}");
        }
        let mut long = vec![b'a'; MAX_LINE + 10];
        long.insert(1, b'=');
        long.push(b'\n');
        assert!(reader(&long).recv_item().is_err());
    }

    /// Gives at most 3 bytes per read, as a socket may.
    struct Trickle(Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = b.len().min(3);
            self.0.read(&mut b[..n])
        }
    }
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_chunk_arriving_in_pieces_is_whole() {
        let mut r = Conn::new(Trickle(Cursor::new(
            b"#10
0123456789#2
ab"
            .to_vec(),
        )));
        assert_eq!(
            r.recv_item().unwrap(),
            Some(Item::Data(b"0123456789".to_vec()))
        );
        assert_eq!(r.recv_item().unwrap(), Some(Item::Data(b"ab".to_vec())));
        let mut r = Conn::new(Trickle(Cursor::new(
            b"#10
01234"
                .to_vec(),
        )));
        let e = r.recv_item().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn data_where_a_list_is_expected_is_refused() {
        let mut r = reader(b"#1\nx");
        assert!(r.recv().is_err());
    }
}
