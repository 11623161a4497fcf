//! Queue file records: framing, types, the size record, a bounded reader.
//!
//! # Framing
//!
//! A record is one type byte, the payload length as an unsigned LEB128
//! varint (7 bits per byte, low-order group first, high bit set on every
//! byte but the last; 1 to 4 bytes, minimal encoding only), and the
//! payload. A record is never longer than [`MAX_RECORD_LEN`] bytes of
//! payload when written; readers apply their own, usually smaller,
//! [`Limits`].
//!
//! # Types
//!
//! The type letters are Postfix's where Postfix has the same record, so
//! `postcat` can print them with Postfix's labels ([`RecordType::label`])
//! and the section markers of [`Section::postcat_title`]:
//!
//! | byte | label | payload |
//! |---|---|---|
//! | `C` | message_size | [`SizeRecord`]: 7 fixed-width decimal fields |
//! | `T` | message_arrival_time | `seconds microseconds` |
//! | `F` | sender_fullname | text |
//! | `S` | sender | address, empty for the null sender |
//! | `O` | original_recipient | address, applies to the next `R`/`D` |
//! | `o` | dsn_original_recipient | `type;address`, applies to the next `R`/`D` |
//! | `n` | dsn_notify_flags | decimal flags, applies to the next `R`/`D` |
//! | `R` | recipient | address |
//! | `D` | done_recipient | address (an `R` whose type byte was rewritten) |
//! | `i` | dsn_envelope_id | text |
//! | `<` | dsn_return_flags | decimal flags |
//! | `A` | named_attribute | `name=value` |
//! | `M` | message_content | empty: the content follows |
//! | `N` | regular_text | a content line, or the last piece of one |
//! | `L` | unterminated_text | a piece of a content line, more follows |
//! | `X` | extracted_info | empty: extracted records follow |
//! | `E` | message_end | 8 lower-case hex digits: the CRC-32C |
//!
//! Text payloads are UTF-8; content payloads are arbitrary bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{Incomplete, Limits, ReadError};

/// The largest payload a writer produces for any record.
pub const MAX_RECORD_LEN: usize = 1 << 20;

/// Content lines are split into records of at most this many bytes.
pub const CONTENT_CHUNK: usize = 4096;

/// The record types. See the module documentation for payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordType {
    Size = b'C',
    Time = b'T',
    FullName = b'F',
    Sender = b'S',
    OrigRecipient = b'O',
    DsnOrcpt = b'o',
    DsnNotify = b'n',
    Recipient = b'R',
    Done = b'D',
    DsnEnvid = b'i',
    DsnRet = b'<',
    Attr = b'A',
    Message = b'M',
    Normal = b'N',
    Cont = b'L',
    Extracted = b'X',
    End = b'E',
}

const ALL_TYPES: [RecordType; 17] = [
    RecordType::Size,
    RecordType::Time,
    RecordType::FullName,
    RecordType::Sender,
    RecordType::OrigRecipient,
    RecordType::DsnOrcpt,
    RecordType::DsnNotify,
    RecordType::Recipient,
    RecordType::Done,
    RecordType::DsnEnvid,
    RecordType::DsnRet,
    RecordType::Attr,
    RecordType::Message,
    RecordType::Normal,
    RecordType::Cont,
    RecordType::Extracted,
    RecordType::End,
];

impl RecordType {
    pub fn from_byte(b: u8) -> Option<RecordType> {
        ALL_TYPES.iter().copied().find(|t| *t as u8 == b)
    }

    pub fn byte(self) -> u8 {
        self as u8
    }

    /// The name `postcat` prints before a record's value (Postfix's
    /// names for the same record types).
    pub fn label(self) -> &'static str {
        match self {
            RecordType::Size => "message_size",
            RecordType::Time => "message_arrival_time",
            RecordType::FullName => "sender_fullname",
            RecordType::Sender => "sender",
            RecordType::OrigRecipient => "original_recipient",
            RecordType::DsnOrcpt => "dsn_original_recipient",
            RecordType::DsnNotify => "dsn_notify_flags",
            RecordType::Recipient => "recipient",
            RecordType::Done => "done_recipient",
            RecordType::DsnEnvid => "dsn_envelope_id",
            RecordType::DsnRet => "dsn_return_flags",
            RecordType::Attr => "named_attribute",
            RecordType::Message => "message_content",
            RecordType::Normal => "regular_text",
            RecordType::Cont => "unterminated_text",
            RecordType::Extracted => "extracted_info",
            RecordType::End => "message_end",
        }
    }

    /// The section a record of this type starts, if any.
    pub fn starts_section(self) -> Option<Section> {
        match self {
            RecordType::Message => Some(Section::Content),
            RecordType::Extracted => Some(Section::Extracted),
            RecordType::End => Some(Section::End),
            _ => None,
        }
    }
}

/// The parts of a queue file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Envelope,
    Content,
    Extracted,
    End,
}

impl Section {
    /// `postcat` prints `*** <title> <path> ***` where a section starts.
    pub fn postcat_title(self) -> &'static str {
        match self {
            Section::Envelope => "ENVELOPE RECORDS",
            Section::Content => "MESSAGE CONTENTS",
            Section::Extracted => "HEADER EXTRACTED",
            Section::End => "MESSAGE FILE END",
        }
    }
}

/// Appends the varint encoding of `n` (which must be below 2^28).
pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    debug_assert!(n < 1 << 28);
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// The encoded length of the varint of `n`.
pub fn varint_len(n: usize) -> usize {
    match n {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        _ => 4,
    }
}

/// Appends a whole record.
pub fn put_record(out: &mut Vec<u8>, kind: RecordType, payload: &[u8]) {
    out.push(kind.byte());
    put_varint(out, payload.len());
    out.extend_from_slice(payload);
}

/// The version of the format written by this code (field 7 of `C`).
pub const FORMAT_VERSION: u64 = 1;

const SIZE_FIELDS: usize = 7;
const SIZE_WIDTH: usize = 15;
/// Payload length of the size record: 7 fields of width 15, separated by
/// single spaces.
pub const SIZE_PAYLOAD_LEN: usize = SIZE_FIELDS * SIZE_WIDTH + SIZE_FIELDS - 1;
/// Length of the whole size record (type, 1-byte length, payload).
pub const SIZE_RECORD_LEN: usize = 2 + SIZE_PAYLOAD_LEN;
/// Length of the whole end record (type, length, 8 hex digits).
pub const END_RECORD_LEN: usize = 2 + 8;
const SIZE_MAX_VALUE: u64 = 999_999_999_999_999;

/// The fixed-width record at offset 0: where everything is, so a reader
/// finds the content and the extracted section without scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeRecord {
    /// Message content size: the bytes of all content lines plus two per
    /// line for its line end (the size with CRLF line ends, as Postfix
    /// counts `message_size`: what mailq and qmgr's `size=` show).
    pub content_size: u64,
    /// Offset of the first content record (just after `M`).
    pub data_offset: u64,
    /// Recipient records (`R` and `D`) in the envelope and extracted
    /// sections.
    pub rcpt_count: u64,
    /// Message flags, for the daemons (0 today).
    pub flags: u64,
    /// Offset of the `X` record.
    pub xtra_offset: u64,
    /// Offset of the `E` record; the file is `end_offset + 10` bytes long.
    pub end_offset: u64,
    /// [`FORMAT_VERSION`].
    pub version: u64,
}

impl SizeRecord {
    fn fields(&self) -> [u64; SIZE_FIELDS] {
        [
            self.content_size,
            self.data_offset,
            self.rcpt_count,
            self.flags,
            self.xtra_offset,
            self.end_offset,
            self.version,
        ]
    }

    /// The payload: each field right-aligned in 15 columns, single spaces
    /// between. Values above 10^15 - 1 cannot be written.
    pub fn encode(&self) -> io::Result<[u8; SIZE_PAYLOAD_LEN]> {
        let mut out = [b' '; SIZE_PAYLOAD_LEN];
        for (i, v) in self.fields().iter().enumerate() {
            if *v > SIZE_MAX_VALUE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "queue file too large for its size record",
                ));
            }
            let s = v.to_string();
            let end = i * (SIZE_WIDTH + 1) + SIZE_WIDTH;
            out[end - s.len()..end].copy_from_slice(s.as_bytes());
        }
        Ok(out)
    }

    pub fn decode(p: &[u8]) -> Result<SizeRecord, &'static str> {
        if p.len() != SIZE_PAYLOAD_LEN {
            return Err("size record has the wrong length");
        }
        let mut v = [0u64; SIZE_FIELDS];
        for (i, slot) in v.iter_mut().enumerate() {
            let start = i * (SIZE_WIDTH + 1);
            let field = &p[start..start + SIZE_WIDTH];
            if i + 1 < SIZE_FIELDS && p[start + SIZE_WIDTH] != b' ' {
                return Err("size record fields not separated by a space");
            }
            let digits = field.iter().position(|&c| c != b' ').unwrap_or(SIZE_WIDTH);
            let num = &field[digits..];
            if num.is_empty() || !num.iter().all(u8::is_ascii_digit) {
                return Err("size record field is not a number");
            }
            *slot = num.iter().fold(0u64, |a, &c| a * 10 + u64::from(c - b'0'));
        }
        Ok(SizeRecord {
            content_size: v[0],
            data_offset: v[1],
            rcpt_count: v[2],
            flags: v[3],
            xtra_offset: v[4],
            end_offset: v[5],
            version: v[6],
        })
    }
}

/// One record as read: where it starts, its type, its payload.
#[derive(Debug)]
pub struct Record<'a> {
    pub offset: u64,
    pub kind: RecordType,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes the record takes in the file.
    pub fn size_in_file(&self) -> u64 {
        (1 + varint_len(self.payload.len()) + self.payload.len()) as u64
    }

    /// The payload as text (envelope records are UTF-8).
    pub fn text(&self) -> Result<&str, ReadError> {
        std::str::from_utf8(self.payload)
            .map_err(|_| ReadError::corrupt(self.offset, "record text is not UTF-8"))
    }
}

const READ_BUF: usize = 64 << 10;

/// Reads records in file order from `start` up to `end`, with every
/// length checked against [`Limits`] before anything is allocated or
/// read. Any file: `postcat` uses it directly, [`super::file`] on top.
pub struct RecordReader<'f> {
    file: &'f File,
    file_len: u64,
    end: u64,
    buf: Vec<u8>,
    buf_off: u64,
    pos: usize,
    filled: usize,
    big: Vec<u8>,
    max_record_len: usize,
    records_left: u64,
}

impl<'f> RecordReader<'f> {
    /// A reader over `file` (of length `file_len`, from fstat) from
    /// `start` to `end` (exclusive; at most `file_len`).
    pub fn new(file: &'f File, file_len: u64, start: u64, end: u64, limits: &Limits) -> Self {
        RecordReader {
            file,
            file_len,
            end: end.min(file_len),
            buf: Vec::new(),
            buf_off: start,
            pos: 0,
            filled: 0,
            big: Vec::new(),
            max_record_len: limits.max_record_len,
            records_left: limits.max_records,
        }
    }

    /// [`new`](Self::new) with the section's bytes already read
    /// (`bytes`: the file from `start` on, or more), so reading it takes no
    /// system call. Only when `bytes` hold the whole section: the reader
    /// then behaves as one that read the section itself (its buffer is
    /// the section, never more).
    pub fn with_section(
        file: &'f File,
        file_len: u64,
        start: u64,
        end: u64,
        limits: &Limits,
        bytes: &[u8],
    ) -> Self {
        let mut r = RecordReader::new(file, file_len, start, end, limits);
        let section = r.end.saturating_sub(start) as usize;
        if section > 0 && section <= READ_BUF && bytes.len() >= section {
            r.buf = bytes[..section].to_vec();
            r.filled = section;
        }
        r
    }

    /// The offset of the next record.
    pub fn offset(&self) -> u64 {
        self.buf_off + self.pos as u64
    }

    /// Makes `n` bytes (at most the buffer size) available at `pos`;
    /// false when the reader's end comes first.
    fn need(&mut self, n: usize) -> io::Result<bool> {
        if self.filled - self.pos >= n {
            return Ok(true);
        }
        if self.buf.is_empty() {
            // No bigger than the section: reading a small envelope must
            // not zero 64 KiB (mailq reads 100,000 envelopes).
            let section = self.end.saturating_sub(self.buf_off) as usize;
            self.buf = vec![0; section.max(n).clamp(64, READ_BUF)];
        }
        self.buf.copy_within(self.pos..self.filled, 0);
        self.buf_off += self.pos as u64;
        self.filled -= self.pos;
        self.pos = 0;
        let avail = self.end.saturating_sub(self.buf_off);
        let want_end = (self.buf.len() as u64).min(avail) as usize;
        while self.filled < n {
            if self.filled >= want_end {
                return Ok(false);
            }
            let at = self.buf_off + self.filled as u64;
            match self.file.read_at(&mut self.buf[self.filled..want_end], at) {
                Ok(0) => return Ok(false),
                Ok(r) => self.filled += r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn short(&self, offset: u64) -> ReadError {
        if self.end >= self.file_len {
            ReadError::Incomplete(Incomplete::Truncated {
                file_len: self.file_len,
                expected: offset + 1,
            })
        } else {
            ReadError::corrupt(offset, "record crosses the end of its section")
        }
    }

    /// The next record, or `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ReadError> {
        let offset = self.offset();
        if offset >= self.end {
            return Ok(None);
        }
        if self.records_left == 0 {
            return Err(ReadError::corrupt(offset, "too many records"));
        }
        self.records_left -= 1;
        if !self.need(1)? {
            return Err(self.short(offset));
        }
        let tbyte = self.buf[self.pos];
        let kind = RecordType::from_byte(tbyte).ok_or_else(|| {
            ReadError::corrupt(offset, format!("unknown record type 0x{tbyte:02x}"))
        })?;
        let mut len: usize = 0;
        let mut hdr = 1;
        loop {
            if hdr > 4 {
                return Err(ReadError::corrupt(offset, "record length too long"));
            }
            if !self.need(hdr + 1)? {
                return Err(self.short(offset));
            }
            let b = self.buf[self.pos + hdr];
            len |= usize::from(b & 0x7f) << (7 * (hdr - 1));
            hdr += 1;
            if b & 0x80 == 0 {
                if b == 0 && hdr > 2 {
                    return Err(ReadError::corrupt(offset, "record length not minimal"));
                }
                break;
            }
        }
        if len > self.max_record_len {
            return Err(ReadError::corrupt(
                offset,
                format!("record length {len} exceeds the limit"),
            ));
        }
        let total = (hdr + len) as u64;
        if offset + total > self.end {
            return Err(self.short(offset + total - 1));
        }
        if hdr + len <= READ_BUF {
            if !self.need(hdr + len)? {
                return Err(self.short(offset + total - 1));
            }
            let start = self.pos + hdr;
            self.pos += hdr + len;
            return Ok(Some(Record {
                offset,
                kind,
                payload: &self.buf[start..start + len],
            }));
        }
        // A payload larger than the buffer: read it directly.
        let at = offset + hdr as u64;
        self.big.resize(len, 0);
        let file = self.file;
        if let Err(e) = file.read_exact_at(&mut self.big, at) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                self.short(offset + total - 1)
            } else {
                ReadError::Io(e)
            });
        }
        self.buf_off = offset + total;
        self.pos = 0;
        self.filled = 0;
        Ok(Some(Record {
            offset,
            kind,
            payload: &self.big,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_minimal_and_round_trip() {
        for n in [
            0usize,
            1,
            127,
            128,
            300,
            16383,
            16384,
            2_097_151,
            2_097_152,
            (1 << 28) - 1,
        ] {
            let mut v = Vec::new();
            put_varint(&mut v, n);
            assert_eq!(v.len(), varint_len(n));
            let mut got = 0usize;
            for (i, b) in v.iter().enumerate() {
                got |= usize::from(b & 0x7f) << (7 * i);
            }
            assert_eq!(got, n);
            assert_eq!(v.last().map(|b| b & 0x80), Some(0));
        }
    }

    #[test]
    fn size_record_round_trips_and_is_strict() {
        let s = SizeRecord {
            content_size: 5293,
            data_offset: 415,
            rcpt_count: 3,
            flags: 0,
            xtra_offset: 5708,
            end_offset: 5710,
            version: 1,
        };
        let p = s.encode().unwrap();
        assert_eq!(p.len(), SIZE_PAYLOAD_LEN);
        assert_eq!(&p[..15], b"           5293");
        assert_eq!(SizeRecord::decode(&p).unwrap(), s);
        let mut bad = p;
        bad[15] = b'1';
        assert!(SizeRecord::decode(&bad).is_err());
        let mut bad = p;
        bad[14] = b'x';
        assert!(SizeRecord::decode(&bad).is_err());
        let mut bad = p;
        bad[5] = b'1'; // "     1     5293": digits then spaces
        assert!(SizeRecord::decode(&bad).is_err());
        assert!(SizeRecord::decode(&p[1..]).is_err());
        let huge = SizeRecord {
            content_size: SIZE_MAX_VALUE + 1,
            ..s
        };
        assert!(huge.encode().is_err());
    }

    #[test]
    fn labels_are_postfix_names() {
        assert_eq!(RecordType::Size.label(), "message_size");
        assert_eq!(RecordType::Done.label(), "done_recipient");
        assert_eq!(RecordType::from_byte(b'<'), Some(RecordType::DsnRet));
        assert_eq!(RecordType::from_byte(0), None);
        for t in ALL_TYPES {
            assert_eq!(RecordType::from_byte(t.byte()), Some(t));
        }
        assert_eq!(Section::Content.postcat_title(), "MESSAGE CONTENTS");
    }
}
