//! `hash:` and `btree:` tables: Facteur's own memory-mapped file format,
//! `NAME.db`, built by `postmap` / `postalias`.
//!
//! This is **not** Berkeley DB. Postfix's `.db` files are Berkeley DB
//! files; Facteur writes its own format under the same name, so a
//! configuration that says `hash:/etc/postfix/virtual` keeps working after
//! `postmap /etc/postfix/virtual` is run once with Facteur's postmap. A
//! Berkeley DB file left by Postfix is recognised and refused with a
//! message that says to rebuild it.
//!
//! `btree:` shares the format: the only thing a B-tree adds over a hash
//! table is key order, and that is not observable through lookups (the
//! order of `postmap -s` is unspecified for `hash:` in Postfix too).
//!
//! # File format, version 1
//!
//! All integers are little-endian. Offsets are from the start of the file.
//!
//! ```text
//! offset size field
//!      0    8 magic            89 46 41 43 54 44 42 0A  ("\x89FACTDB\n")
//!      8    4 version          1
//!     12    4 header length    96
//!     16    8 seed             random per file; keys the hash function
//!     24    8 entry count      number of records (all live)
//!     32    8 records offset   96
//!     40    8 records length   bytes
//!     48    8 slots offset     records end rounded up to a multiple of 8
//!     56    8 slot count       a power of two, at least 8, > entry count
//!     64    8 file length      the exact size of the file
//!     72    8 body checksum    see below
//!     80    4 flags            bit 0: keys were folded to lower case
//!     84    4 reserved         0
//!     88    8 header checksum  hash64(0, bytes 0..88)
//!     96      records          back to back, no padding
//!    ...      padding          zero bytes up to the slots offset
//!    ...      slots            slot count x u64
//! ```
//!
//! A **record** is `key length: u32`, `value length: u32`, the key bytes,
//! the value bytes, and `check: u32` = low 32 bits of
//! `hash64(seed ^ CHECK_KEY, value) ^ hash64(seed, key)`. Keys and values are
//! stored without a terminating NUL (postmap's `-N`/`-n` have no effect).
//!
//! A **slot** is 0 when empty, else `tag << 40 | record offset`, where `tag`
//! is the top 24 bits of `h = hash64(seed, key)` (so a probe rarely touches
//! a record that is not the one sought) and the offset is below 2^40. The
//! table is open addressing with linear probing: a key's probe sequence
//! starts at slot `h & (slot count - 1)` and ends at its slot or an empty
//! one; there is always an empty slot (load factor at most 0.7).
//!
//! The **body checksum** covers bytes 96 to the end of the file in blocks of
//! 64 KiB: `c = seed ^ BODY_KEY`, then `c = hash64(c, block)` for each block
//! in order. It is checked by [`IndexedTable::verify`] (and so by
//! `postmap -s`), not at open: opening stays O(1) however large the table.
//!
//! # Safety of reading
//!
//! Opening checks the magic, the version, the header checksum, that the
//! file length matches, and that every section lies inside the file.
//! Every lookup bounds-checks each slot's offset and each record's lengths
//! against the mapping and checks the record's checksum, so a corrupt,
//! truncated or foreign file gives [`TableError::Config`] naming the file —
//! never a panic and never a read outside the mapping. (A file that is
//! truncated *in place* while mapped can still raise SIGBUS, as with any
//! mmap; postmap never does that: it renames a new file into place.)
//!
//! # The hash function
//!
//! [`hash64`] is written here (a folded 64x64->128 multiply per 16 bytes,
//! in the style of wyhash, with a murmur3 finaliser) because the file
//! format needs a function that is fixed forever and identical on every
//! platform: std's `DefaultHasher` (SipHash) is explicitly not stable
//! across Rust releases, and FNV-1a is byte-at-a-time and weak in its low
//! bits, which pick the slot. The per-file random seed means a list of
//! keys chosen to collide (say, in a table of spammer addresses) works for
//! one build at most, not in general.
//!
//! # Writing
//!
//! [`IndexedWriter`] streams records to a temporary file in the same
//! directory (`NAME.db.PID.N.tmp`), keeping only 16 bytes per entry plus a
//! small index in memory, detects duplicate keys as they come (so postmap
//! can warn in input order), and on [`TableWriter::commit`] appends the slot
//! array, writes the header, fsyncs the file, renames it over `NAME.db` and
//! fsyncs the directory. A reader that has the old file mapped keeps
//! reading the old one; the next open sees the new one, and
//! [`Table::changed`] tells a long-lived reader to reopen.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{require_absolute, FileStamp, OpenOptions, Table, TableError};

/// The first 8 bytes of every Facteur `.db` file.
pub const MAGIC: [u8; 8] = *b"\x89FACTDB\n";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
const HEADER_LEN: u64 = 96;
const FLAG_FOLDED: u32 = 1;
/// Bits of a slot that hold the record offset.
const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
/// Keys of the record and body checksums (xored into the seed).
const CHECK_KEY: u64 = 0x5bd1_e995_c2b2_ae35;
const BODY_KEY: u64 = 0x27d4_eb2f_1656_67c5;
const BODY_BLOCK: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// The hash function (part of the file format: never change it).

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline(always)]
fn r64(p: &[u8]) -> u64 {
    u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]])
}

#[inline(always)]
fn r32(p: &[u8]) -> u64 {
    u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as u64
}

/// The 64-bit hash of `data` under `seed` used by the `.db` format.
/// Stable: part of the on-disk format.
#[inline]
pub fn hash64(seed: u64, data: &[u8]) -> u64 {
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    const P2: u64 = 0x9e37_79b9_7f4a_7c15;
    let s1 = seed ^ P0;
    let mut h = seed ^ P1 ^ (data.len() as u64).wrapping_mul(P2);
    let mut p = data;
    while p.len() > 16 {
        h = fold_mul(r64(p) ^ s1, r64(&p[8..]) ^ h);
        p = &p[16..];
    }
    let n = p.len();
    let (a, b) = if n >= 8 {
        (r64(p), r64(&p[n - 8..]))
    } else if n >= 4 {
        (r32(p), r32(&p[n - 4..]))
    } else if n > 0 {
        (
            (p[0] as u64) << 16 | (p[n / 2] as u64) << 8 | p[n - 1] as u64,
            0,
        )
    } else {
        (0, 0)
    };
    h = fold_mul(a ^ s1, b ^ h ^ P2);
    // murmur3's fmix64: a bijection, so no seed can collapse the output.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn record_check(seed: u64, key_hash: u64, value: &[u8]) -> u32 {
    (hash64(seed ^ CHECK_KEY, value) ^ key_hash) as u32
}

/// Fold a lookup key to lower case unless `keep_case`, without allocating
/// when it is already lower case ASCII.
pub(crate) fn fold_key(key: &str, keep_case: bool) -> std::borrow::Cow<'_, str> {
    if keep_case || !key.chars().any(|c| c.is_uppercase()) {
        std::borrow::Cow::Borrowed(key)
    } else {
        std::borrow::Cow::Owned(key.to_lowercase())
    }
}

// ---------------------------------------------------------------------------
// Reading.

/// An open `hash:` or `btree:` table: the memory-mapped `NAME.db`.
pub struct IndexedTable {
    name: String,
    path: PathBuf,
    rebuild: String,
    map: Mmap,
    stamp: FileStamp,
    keep_case: bool,
    seed: u64,
    count: u64,
    records_off: u64,
    records_end: u64,
    slots_off: u64,
    slot_mask: u64,
    file_len: u64,
}

/// The header fields of a `.db` file.
struct Header {
    seed: u64,
    count: u64,
    records_off: u64,
    records_len: u64,
    slots_off: u64,
    slot_count: u64,
    file_len: u64,
    body_check: u64,
    flags: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.seed.to_le_bytes());
        b[24..32].copy_from_slice(&self.count.to_le_bytes());
        b[32..40].copy_from_slice(&self.records_off.to_le_bytes());
        b[40..48].copy_from_slice(&self.records_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.slots_off.to_le_bytes());
        b[56..64].copy_from_slice(&self.slot_count.to_le_bytes());
        b[64..72].copy_from_slice(&self.file_len.to_le_bytes());
        b[72..80].copy_from_slice(&self.body_check.to_le_bytes());
        b[80..84].copy_from_slice(&self.flags.to_le_bytes());
        let check = hash64(0, &b[0..88]);
        b[88..96].copy_from_slice(&check.to_le_bytes());
        b
    }

    /// Parse and validate a header against the actual file length. The
    /// error is the reason, without the file name.
    fn decode(b: &[u8], actual_len: u64) -> Result<Header, String> {
        if b.len() >= 16 && is_berkeley_db(b) {
            return Err(
                "is a Berkeley DB file (built by Postfix's postmap), not a Facteur table".into(),
            );
        }
        if b.len() < 8 || b[0..8] != MAGIC {
            return Err("not a Facteur hash/btree table (bad magic number)".into());
        }
        if b.len() < HEADER_LEN as usize {
            return Err(format!(
                "truncated table ({} bytes, shorter than the header)",
                b.len()
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| r64(&b[o..]);
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!(
                "unsupported table format version {version} (this program reads version {VERSION})"
            ));
        }
        if u64_at(88) != hash64(0, &b[0..88]) || u32_at(12) as u64 != HEADER_LEN {
            return Err("corrupt table header (checksum mismatch)".into());
        }
        let h = Header {
            seed: u64_at(16),
            count: u64_at(24),
            records_off: u64_at(32),
            records_len: u64_at(40),
            slots_off: u64_at(48),
            slot_count: u64_at(56),
            file_len: u64_at(64),
            body_check: u64_at(72),
            flags: u32_at(80),
        };
        if h.file_len != actual_len {
            return Err(format!(
                "truncated or damaged table (file is {actual_len} bytes, header says {})",
                h.file_len
            ));
        }
        let records_end = h.records_off.checked_add(h.records_len);
        let slots_end = h
            .slot_count
            .checked_mul(8)
            .and_then(|n| n.checked_add(h.slots_off));
        let ok = h.records_off == HEADER_LEN
            && records_end.is_some_and(|e| e <= h.slots_off && e <= OFFSET_MASK)
            && h.slots_off % 8 == 0
            && h.slot_count.is_power_of_two()
            && h.slot_count >= 8
            && h.count < h.slot_count
            && slots_end == Some(h.file_len);
        if !ok {
            return Err("corrupt table header (inconsistent section sizes)".into());
        }
        Ok(h)
    }
}

/// Berkeley DB hash and btree files carry their magic number at offset 12.
fn is_berkeley_db(b: &[u8]) -> bool {
    let m = [b[12], b[13], b[14], b[15]];
    let le = u32::from_le_bytes(m);
    let be = u32::from_be_bytes(m);
    [0x0006_1561, 0x0005_3162]
        .iter()
        .any(|&x| x == le || x == be)
}

/// Map `file`, refusing files too short to map meaningfully.
pub(crate) fn map_file(file: &File) -> io::Result<Option<Mmap>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the mapping is read-only and every access is bounds-checked
    // against its length. Facteur's writers never modify a table file in
    // place (they rename a new file over it), so the bytes under an open
    // table do not change; see the module doc about in-place truncation.
    unsafe { Mmap::map(file) }.map(Some)
}

impl IndexedTable {
    /// Open `hash:PATH` / `btree:PATH`, reading `PATH.db`. `spec` names the
    /// table in messages. Daemons' tables must be absolute paths.
    pub fn open(spec: &str, path: &str, opts: &OpenOptions) -> Result<IndexedTable, TableError> {
        require_absolute(spec, path)?;
        Self::open_path(spec, path, opts)
    }

    /// Like [`IndexedTable::open`] but accepting a relative path (postmap's
    /// operands are relative to the current directory).
    pub fn open_path(
        spec: &str,
        path: &str,
        opts: &OpenOptions,
    ) -> Result<IndexedTable, TableError> {
        let kind = spec.split_once(':').map_or("hash", |(t, _)| t);
        let kind = if kind == "btree" { "btree" } else { "hash" };
        let db = PathBuf::from(format!("{path}.db"));
        let rebuild = format!("run \"postmap {kind}:{path}\" to rebuild it");
        // The stamp is taken before the open: if the file is replaced in
        // between, changed() says so and the owner merely reopens once more.
        let stamp = FileStamp::of(&db);
        let file = File::open(&db).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                format!("; run \"postmap {kind}:{path}\" to build it")
            } else {
                String::new()
            };
            TableError::Config(format!(
                "open database {}: {}{hint}",
                db.display(),
                io_reason(&e)
            ))
        })?;
        let stamp = stamp.map_err(|e| {
            TableError::Config(format!("open database {}: {}", db.display(), io_reason(&e)))
        })?;
        let map = map_file(&file).map_err(|e| {
            TableError::Config(format!("open database {}: {}", db.display(), io_reason(&e)))
        })?;
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let h = Header::decode(bytes, bytes.len() as u64)
            .map_err(|why| TableError::Config(format!("{}: {why}; {rebuild}", db.display())))?;
        let map = map.expect("a valid header implies a non-empty file");
        Ok(IndexedTable {
            name: spec.to_string(),
            path: db,
            rebuild,
            map,
            stamp,
            keep_case: opts.keep_case,
            seed: h.seed,
            count: h.count,
            records_off: h.records_off,
            records_end: h.records_off + h.records_len,
            slots_off: h.slots_off,
            slot_mask: h.slot_count - 1,
            file_len: h.file_len,
        })
    }

    /// The `.db` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn corrupt(&self, what: &str) -> TableError {
        TableError::Config(format!(
            "{}: corrupt table: {what}; {}",
            self.path.display(),
            self.rebuild
        ))
    }

    #[inline]
    fn bytes(&self, off: u64, len: u64) -> Option<&[u8]> {
        let end = off.checked_add(len)?;
        if end > self.map.len() as u64 {
            return None;
        }
        self.map.get(off as usize..end as usize)
    }

    /// The record at `off`: key, value, and the offset just past it. Checks
    /// that it lies inside the records section.
    #[inline]
    fn record(&self, off: u64) -> Option<(&[u8], &[u8], u32, u64)> {
        if off < self.records_off || off.checked_add(8)? > self.records_end {
            return None;
        }
        let head = self.bytes(off, 8)?;
        let klen = r32(head);
        let vlen = r32(&head[4..]);
        let end = off.checked_add(8 + klen + vlen + 4)?;
        if end > self.records_end {
            return None;
        }
        let key = self.bytes(off + 8, klen)?;
        let value = self.bytes(off + 8 + klen, vlen)?;
        let check = r32(self.bytes(off + 8 + klen + vlen, 4)?) as u32;
        Some((key, value, check, end))
    }

    /// The value stored for exactly `key` (no case folding).
    pub fn lookup_bytes(&self, key: &[u8]) -> Result<Option<&[u8]>, TableError> {
        let h = hash64(self.seed, key);
        let tag = h >> OFFSET_BITS;
        let mut i = h & self.slot_mask;
        // A valid file always has an empty slot; the bound guards a corrupt
        // one that has none.
        for _ in 0..=self.slot_mask {
            let slot_at = self.slots_off + i * 8;
            let slot = match self.bytes(slot_at, 8) {
                Some(b) => r64(b),
                None => return Err(self.corrupt("slot outside the file")),
            };
            if slot == 0 {
                return Ok(None);
            }
            if slot >> OFFSET_BITS == tag {
                let off = slot & OFFSET_MASK;
                let Some((k, v, check, _)) = self.record(off) else {
                    return Err(self.corrupt(&format!("slot {i} points outside the records")));
                };
                if k == key {
                    if check != record_check(self.seed, h, v) {
                        return Err(
                            self.corrupt(&format!("bad checksum in the record at offset {off}"))
                        );
                    }
                    return Ok(Some(v));
                }
            }
            i = (i + 1) & self.slot_mask;
        }
        Ok(None)
    }

    /// Every entry, in file order (the order of first insertion).
    pub fn iter(&self) -> Entries<'_> {
        Entries {
            table: self,
            off: self.records_off,
            seen: 0,
            done: false,
        }
    }

    /// Check the whole file: the body checksum, then every record and the
    /// entry count. O(size of the file).
    pub fn verify(&self) -> Result<(), TableError> {
        let body = &self.map[HEADER_LEN as usize..self.file_len as usize];
        let stored = r64(&self.map[72..80]);
        if body_checksum(self.seed, body.chunks(BODY_BLOCK)) != stored {
            return Err(self.corrupt("checksum mismatch"));
        }
        for e in self.iter() {
            e?;
        }
        Ok(())
    }
}

fn body_checksum<'a>(seed: u64, blocks: impl Iterator<Item = &'a [u8]>) -> u64 {
    let mut c = seed ^ BODY_KEY;
    for b in blocks {
        c = hash64(c, b);
    }
    c
}

/// The entries of an [`IndexedTable`], in file order. An error (a corrupt
/// record) ends the iteration.
pub struct Entries<'a> {
    table: &'a IndexedTable,
    off: u64,
    seen: u64,
    done: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), TableError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let t = self.table;
        if self.off == t.records_end {
            self.done = true;
            if self.seen != t.count {
                return Some(Err(t.corrupt("entry count mismatch")));
            }
            return None;
        }
        let Some((k, v, check, end)) = t.record(self.off) else {
            self.done = true;
            return Some(Err(t.corrupt(&format!("bad record at offset {}", self.off))));
        };
        if check != record_check(t.seed, hash64(t.seed, k), v) {
            self.done = true;
            return Some(Err(t.corrupt(&format!(
                "bad checksum in the record at offset {}",
                self.off
            ))));
        }
        self.off = end;
        self.seen += 1;
        Some(Ok((k, v)))
    }
}

impl Table for IndexedTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        let key = fold_key(key, self.keep_case);
        Ok(self
            .lookup_bytes(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    fn changed(&self) -> bool {
        self.stamp.changed()
    }
}

/// `No such file or directory` rather than `... (os error 2)`.
pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let s = io::Error::from_raw_os_error(code).to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Writing: shared by the .db and .cdb writers.

/// What [`TableWriter::add`] does with a key that is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDuplicate {
    /// Keep the first value (postmap's default, and `-w`).
    KeepFirst,
    /// The new value replaces the old one (postmap `-r`).
    Replace,
}

/// What [`TableWriter::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    /// The key was there already; the first value was kept.
    Duplicate,
    /// The key was there already; its value was replaced.
    Replaced,
}

/// A table being built. Nothing is visible to readers until
/// [`TableWriter::commit`]; dropping the writer without committing removes
/// the temporary file.
pub trait TableWriter {
    fn add(&mut self, key: &[u8], value: &[u8], dup: OnDuplicate) -> io::Result<Added>;
    /// Finish the file, fsync it, rename it into place, fsync the directory.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// Counts returned by the `write_table` functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub entries: u64,
    pub duplicates: u64,
}

/// A temporary file next to its final name, written sequentially through a
/// buffer, readable at any offset (for duplicate checks), and renamed into
/// place on commit.
pub(crate) struct TempFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    flushed: u64,
    committed: bool,
}

const WRITE_BUF: usize = 1 << 20;

impl TempFile {
    pub(crate) fn create(final_path: &Path, mode: u32) -> io::Result<TempFile> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mut tries = 0;
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let mut name = final_path.as_os_str().to_owned();
            name.push(format!(".{}.{n}.tmp", std::process::id()));
            let tmp_path = PathBuf::from(name);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode & 0o7777)
                .open(&tmp_path)
            {
                Ok(file) => {
                    // The umask must not narrow the mode we were asked for.
                    use std::os::unix::fs::PermissionsExt;
                    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
                    return Ok(TempFile {
                        final_path: final_path.to_path_buf(),
                        tmp_path,
                        file,
                        buf: Vec::with_capacity(WRITE_BUF),
                        flushed: 0,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 100 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_BUF {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all_at(&self.buf, self.flushed)?;
            self.flushed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Read `out.len()` bytes at `off` (from the file or the buffer).
    pub(crate) fn read_at(&self, off: u64, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        if off < self.flushed {
            let n = ((self.flushed - off) as usize).min(out.len());
            self.file.read_exact_at(&mut out[..n], off)?;
            done = n;
        }
        if done < out.len() {
            let start = (off + done as u64 - self.flushed) as usize;
            let src = self
                .buf
                .get(start..start + out.len() - done)
                .ok_or_else(|| io::Error::other("read past the end of the table being written"))?;
            out[done..].copy_from_slice(src);
        }
        Ok(())
    }

    /// Overwrite bytes already written (flushes first).
    pub(crate) fn write_at(&mut self, off: u64, bytes: &[u8]) -> io::Result<()> {
        self.flush()?;
        self.file.write_all_at(bytes, off)
    }

    /// Cut the file to `len` bytes (after compaction).
    pub(crate) fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.flush()?;
        self.file.set_len(len)?;
        self.flushed = len;
        Ok(())
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn commit(mut self) -> io::Result<()> {
        self.flush()?;
        self.file.sync_all()?;
        std::fs::rename(&self.tmp_path, &self.final_path)?;
        self.committed = true;
        let dir = match self.final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(dir)?.sync_all()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// The entries written so far and an open-addressing index over them, for
/// finding duplicates while streaming. Records start with `key length:
/// u32, value length: u32, key` in both formats, so keys are compared by
/// reading them back from the temporary file (only on a full hash match).
pub(crate) struct KeyIndex {
    /// (hash, record offset) of each live entry, in order of first
    /// insertion (16 bytes per entry: the bulk of a writer's memory).
    pub(crate) entries: Vec<(u64, u64)>,
    slots: Vec<u32>,
    bits: u32,
    /// Number of records that a replacement made dead.
    pub(crate) dead: u64,
    /// The length of the record at an offset (format-specific).
    record_len: fn(&TempFile, u64) -> io::Result<u64>,
    scratch: Vec<u8>,
}

impl KeyIndex {
    pub(crate) fn new(record_len: fn(&TempFile, u64) -> io::Result<u64>) -> KeyIndex {
        KeyIndex {
            record_len,
            entries: Vec::new(),
            slots: vec![0; 1 << 10],
            bits: 10,
            dead: 0,
            scratch: Vec::new(),
        }
    }

    #[inline]
    fn pos(&self, hash: u64) -> usize {
        (fold_mul(hash, 0x9e37_79b9_7f4a_7c15) >> (64 - self.bits)) as usize
    }

    /// The entry with this key, if any.
    pub(crate) fn find(
        &mut self,
        hash: u64,
        key: &[u8],
        tmp: &TempFile,
    ) -> io::Result<Option<usize>> {
        let mask = self.slots.len() - 1;
        let mut i = self.pos(hash);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return Ok(None);
            }
            let e = (s - 1) as usize;
            let (h, off) = self.entries[e];
            if h == hash {
                let mut head = [0u8; 8];
                tmp.read_at(off, &mut head)?;
                if r32(&head) as usize == key.len() {
                    self.scratch.resize(key.len(), 0);
                    tmp.read_at(off + 8, &mut self.scratch)?;
                    if self.scratch == key {
                        return Ok(Some(e));
                    }
                }
            }
            i = (i + 1) & mask;
        }
    }

    pub(crate) fn insert(&mut self, hash: u64, off: u64) -> io::Result<()> {
        if self.entries.len() >= u32::MAX as usize - 1 {
            return Err(io::Error::other("too many entries for one table"));
        }
        self.entries.push((hash, off));
        if self.entries.len() * 2 > self.slots.len() {
            self.bits += 1;
            self.slots = vec![0; 1 << self.bits];
            for e in 0..self.entries.len() {
                self.place(e);
            }
        } else {
            self.place(self.entries.len() - 1);
        }
        Ok(())
    }

    fn place(&mut self, e: usize) {
        let mask = self.slots.len() - 1;
        let mut i = self.pos(self.entries[e].0);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = e as u32 + 1;
    }

    /// Free the index (the entries stay).
    pub(crate) fn drop_index(&mut self) {
        self.slots = Vec::new();
    }

    /// Remove dead records: move the live ones down, in file order, and
    /// cut the file. Returns the new end of the records.
    pub(crate) fn compact(&mut self, tmp: &mut TempFile, start: u64) -> io::Result<u64> {
        if self.dead == 0 {
            return Ok(tmp.len());
        }
        tmp.flush()?;
        self.drop_index();
        let mut order: Vec<u32> = (0..self.entries.len() as u32).collect();
        order.sort_unstable_by_key(|&e| self.entries[e as usize].1);
        let mut at = start;
        let mut buf = Vec::new();
        for e in order {
            let off = self.entries[e as usize].1;
            let len = (self.record_len)(tmp, off)?;
            if off != at {
                buf.resize(len as usize, 0);
                tmp.read_at(off, &mut buf)?;
                tmp.write_at(at, &buf)?;
                self.entries[e as usize].1 = at;
            }
            at += len;
        }
        tmp.truncate(at)?;
        self.dead = 0;
        self.entries.sort_unstable_by_key(|e| e.1);
        Ok(at)
    }
}

/// `8 + key length + value length` of the record at `off` (both formats
/// start records with the two lengths).
pub(crate) fn record_len_at(tmp: &TempFile, off: u64) -> io::Result<u64> {
    let mut head = [0u8; 8];
    tmp.read_at(off, &mut head)?;
    Ok(8 + r32(&head) + r32(&head[4..]))
}

/// Add a record to `tmp`/`index`: the shared part of both writers.
/// `write_record` writes the record's bytes.
pub(crate) fn add_record(
    tmp: &mut TempFile,
    index: &mut KeyIndex,
    hash: u64,
    key: &[u8],
    dup: OnDuplicate,
    write_record: impl FnOnce(&mut TempFile) -> io::Result<()>,
) -> io::Result<Added> {
    let found = index.find(hash, key, tmp)?;
    if found.is_some() && dup == OnDuplicate::KeepFirst {
        return Ok(Added::Duplicate);
    }
    let off = tmp.len();
    write_record(tmp)?;
    match found {
        Some(e) => {
            index.dead += 1;
            index.entries[e].1 = off;
            Ok(Added::Replaced)
        }
        None => {
            index.insert(hash, off)?;
            Ok(Added::New)
        }
    }
}

/// A random 64-bit value (std's randomly keyed SipHash of nothing).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Writes a `.db` file; see the module doc.
pub struct IndexedWriter {
    tmp: TempFile,
    index: KeyIndex,
    seed: u64,
    flags: u32,
}

impl IndexedWriter {
    /// Start writing `path_db` (the full name, `NAME.db`). The file gets
    /// exactly `mode` (the umask does not apply).
    pub fn create(path_db: &Path, mode: u32) -> io::Result<IndexedWriter> {
        let mut tmp = TempFile::create(path_db, mode)?;
        tmp.write(&[0u8; HEADER_LEN as usize])?;
        Ok(IndexedWriter {
            tmp,
            index: KeyIndex::new(|tmp, off| Ok(record_len_at(tmp, off)? + 4)),
            seed: random_seed(),
            flags: 0,
        })
    }

    /// Record in the header that keys were folded to lower case
    /// (informational).
    pub fn set_folded(&mut self, folded: bool) {
        self.flags = if folded { FLAG_FOLDED } else { 0 };
    }

    fn finish(mut self) -> io::Result<TempFile> {
        let records_end = self.index.compact(&mut self.tmp, HEADER_LEN)?;
        self.index.drop_index();
        let n = self.index.entries.len() as u64;
        let slot_count = (n * 10 / 7 + 1).max(8).next_power_of_two();
        let mask = slot_count - 1;
        // The slot array is streamed, not built in memory: with the entries
        // sorted by home slot, linear probing places each one at
        // max(home, previous position + 1); the few that run past the end
        // wrap around into the first free slots from 0.
        let mut entries = std::mem::take(&mut self.index.entries);
        entries.sort_unstable_by_key(|&(h, _)| h & mask);
        let slot = |h: u64, off: u64| (h >> OFFSET_BITS) << OFFSET_BITS | off;
        let mut wrapped = Vec::new();
        let mut next = 0u64;
        for &(h, off) in &entries {
            let pos = (h & mask).max(next);
            if pos >= slot_count {
                wrapped.push(slot(h, off));
            }
            next = pos + 1;
        }
        let slots_off = records_end.div_ceil(8) * 8;
        self.tmp
            .write(&vec![0u8; (slots_off - records_end) as usize])?;
        let mut wrapped = wrapped.into_iter();
        let mut chunk: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut at = 0u64;
        let mut next = 0u64;
        let emit = |tmp: &mut TempFile, v: u64, chunk: &mut Vec<u8>| -> io::Result<()> {
            chunk.extend_from_slice(&v.to_le_bytes());
            if chunk.len() >= 64 * 1024 {
                tmp.write(chunk)?;
                chunk.clear();
            }
            Ok(())
        };
        for &(h, off) in &entries {
            let pos = (h & mask).max(next);
            if pos >= slot_count {
                break;
            }
            while at < pos {
                emit(&mut self.tmp, wrapped.next().unwrap_or(0), &mut chunk)?;
                at += 1;
            }
            emit(&mut self.tmp, slot(h, off), &mut chunk)?;
            at += 1;
            next = pos + 1;
        }
        while at < slot_count {
            emit(&mut self.tmp, wrapped.next().unwrap_or(0), &mut chunk)?;
            at += 1;
        }
        self.tmp.write(&chunk)?;
        drop(entries);
        if wrapped.next().is_some() {
            return Err(io::Error::other("internal error: hash table overflow"));
        }
        self.tmp.flush()?;
        let file_len = self.tmp.len();
        // The body checksum, read back in the same 64 KiB blocks verify()
        // uses (the file is in the page cache).
        let mut c = self.seed ^ BODY_KEY;
        let mut block = vec![0u8; BODY_BLOCK];
        let mut at = HEADER_LEN;
        while at < file_len {
            let n = ((file_len - at) as usize).min(BODY_BLOCK);
            self.tmp.file().read_exact_at(&mut block[..n], at)?;
            c = hash64(c, &block[..n]);
            at += n as u64;
        }
        let header = Header {
            seed: self.seed,
            count: n,
            records_off: HEADER_LEN,
            records_len: records_end - HEADER_LEN,
            slots_off,
            slot_count,
            file_len,
            body_check: c,
            flags: self.flags,
        };
        self.tmp.write_at(0, &header.encode())?;
        Ok(self.tmp)
    }
}

impl TableWriter for IndexedWriter {
    fn add(&mut self, key: &[u8], value: &[u8], dup: OnDuplicate) -> io::Result<Added> {
        let too_big = || io::Error::other("key or value longer than 4 GiB");
        let klen = u32::try_from(key.len()).map_err(|_| too_big())?;
        let vlen = u32::try_from(value.len()).map_err(|_| too_big())?;
        let h = hash64(self.seed, key);
        let seed = self.seed;
        let len = 12 + key.len() as u64 + value.len() as u64;
        if self.tmp.len() + len > OFFSET_MASK {
            return Err(io::Error::other("table larger than 1 TiB"));
        }
        add_record(&mut self.tmp, &mut self.index, h, key, dup, |tmp| {
            tmp.write(&klen.to_le_bytes())?;
            tmp.write(&vlen.to_le_bytes())?;
            tmp.write(key)?;
            tmp.write(value)?;
            tmp.write(&record_check(seed, h, value).to_le_bytes())?;
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> io::Result<()> {
        self.finish()?.commit()
    }
}

/// Write `path_db` (`NAME.db`, mode 0644) from `entries`, replacing any
/// existing file atomically.
pub fn write_table<I, K, V>(path_db: &Path, entries: I, dup: OnDuplicate) -> io::Result<WriteStats>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut w = Box::new(IndexedWriter::create(path_db, 0o644)?);
    let stats = add_all(w.as_mut(), entries, dup)?;
    w.commit()?;
    Ok(stats)
}

pub(crate) fn add_all<I, K, V>(
    w: &mut dyn TableWriter,
    entries: I,
    dup: OnDuplicate,
) -> io::Result<WriteStats>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut stats = WriteStats::default();
    for (k, v) in entries {
        match w.add(k.as_ref(), v.as_ref(), dup)? {
            Added::New => stats.entries += 1,
            Added::Duplicate | Added::Replaced => stats.duplicates += 1,
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("facteur-indexed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn hash_is_stable() {
        // Part of the file format: these values must never change.
        let pinned = [
            hash64(0, b""),
            hash64(0, b"a"),
            hash64(42, b"user@example.com"),
            hash64(
                42,
                b"a key that is longer than sixteen bytes, to use the loop",
            ),
        ];
        assert_eq!(
            pinned,
            [
                0x7389_627f_5bb7_8404,
                0x8b72_6a8c_b4da_8d54,
                0xd241_b772_e140_599c,
                0x43a4_0429_e0db_ec7d
            ],
            "{pinned:#x?}"
        );
        assert_eq!(hash64(0, b"a"), hash64(0, b"a"));
        assert_ne!(hash64(0, b"a"), hash64(1, b"a"));
        assert_ne!(hash64(0, b"ab"), hash64(0, b"ba"));
        assert_ne!(hash64(0, b"abcdefgh"), hash64(0, b"abcdefgh\0"));
        let all: std::collections::HashSet<u64> = (0..100_000u32)
            .map(|i| hash64(7, format!("user{i}@example.com").as_bytes()))
            .collect();
        assert_eq!(all.len(), 100_000);
    }

    #[test]
    fn write_open_lookup_iterate() {
        let d = dir("basic");
        let base = d.join("t");
        let db = d.join("t.db");
        let entries: Vec<(String, String)> = (0..5000)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect();
        let stats = write_table(
            &db,
            entries.iter().map(|(k, v)| (k, v)),
            OnDuplicate::KeepFirst,
        )
        .unwrap();
        assert_eq!(
            stats,
            WriteStats {
                entries: 5000,
                duplicates: 0
            }
        );
        let spec = format!("hash:{}", base.display());
        let t = IndexedTable::open(&spec, base.to_str().unwrap(), &OpenOptions::default()).unwrap();
        assert_eq!(t.len(), 5000);
        for (k, v) in &entries {
            assert_eq!(t.lookup(k).unwrap().as_deref(), Some(v.as_str()));
        }
        assert_eq!(t.lookup("KEY17").unwrap().as_deref(), Some("value 17"));
        assert_eq!(t.lookup("nope").unwrap(), None);
        let all: Vec<(Vec<u8>, Vec<u8>)> = t
            .iter()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert_eq!(all.len(), 5000);
        assert_eq!(all[0], (b"key0".to_vec(), b"value 0".to_vec()));
        t.verify().unwrap();
        let kc = IndexedTable::open(
            &spec,
            base.to_str().unwrap(),
            &OpenOptions { keep_case: true },
        )
        .unwrap();
        assert_eq!(kc.lookup("KEY17").unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn full_small_tables_wrap_around() {
        // 5 entries in 8 slots, 300 times with fresh seeds: probe runs
        // often wrap past the last slot.
        let d = dir("wrap");
        let base = d.join("t");
        let p = base.to_str().unwrap();
        for round in 0..300 {
            let keys: Vec<String> = (0..5).map(|i| format!("r{round}k{i}")).collect();
            write_table(
                &d.join("t.db"),
                keys.iter().map(|k| (k, k)),
                OnDuplicate::KeepFirst,
            )
            .unwrap();
            let t = IndexedTable::open("hash:x", p, &OpenOptions::default()).unwrap();
            for k in &keys {
                assert_eq!(
                    t.lookup(k).unwrap().as_deref(),
                    Some(k.as_str()),
                    "round {round}"
                );
            }
            assert_eq!(t.lookup("absent").unwrap(), None);
            t.verify().unwrap();
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn duplicates_replace_and_compaction() {
        let d = dir("dups");
        let db = d.join("t.db");
        let mut w = Box::new(IndexedWriter::create(&db, 0o600).unwrap());
        assert_eq!(
            w.add(b"a", b"1", OnDuplicate::KeepFirst).unwrap(),
            Added::New
        );
        assert_eq!(
            w.add(b"b", b"2", OnDuplicate::KeepFirst).unwrap(),
            Added::New
        );
        assert_eq!(
            w.add(b"a", b"3", OnDuplicate::KeepFirst).unwrap(),
            Added::Duplicate
        );
        assert_eq!(
            w.add(b"a", b"4444", OnDuplicate::Replace).unwrap(),
            Added::Replaced
        );
        assert_eq!(w.add(b"c", b"5", OnDuplicate::Replace).unwrap(), Added::New);
        w.commit().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let base = d.join("t");
        let t =
            IndexedTable::open("hash:x", base.to_str().unwrap(), &OpenOptions::default()).unwrap();
        assert_eq!(t.lookup("a").unwrap().as_deref(), Some("4444"));
        let keys: Vec<Vec<u8>> = t.iter().map(|e| e.unwrap().0.to_vec()).collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"a".to_vec(), b"c".to_vec()]);
        t.verify().unwrap();
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_foreign_and_truncated_files() {
        let d = dir("bad");
        let base = d.join("t");
        let p = base.to_str().unwrap();
        let spec = format!("hash:{p}");
        let err = IndexedTable::open(&spec, p, &OpenOptions::default())
            .err()
            .unwrap();
        assert_eq!(
            err,
            TableError::Config(format!(
                "open database {p}.db: No such file or directory; run \"postmap hash:{p}\" to build it"
            ))
        );
        assert!(IndexedTable::open("hash:rel", "rel", &OpenOptions::default()).is_err());
        let mut bdb = vec![0u8; 4096];
        bdb[12..16].copy_from_slice(&0x0006_1561u32.to_le_bytes());
        std::fs::write(d.join("t.db"), &bdb).unwrap();
        let err = IndexedTable::open(&spec, p, &OpenOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("Berkeley DB"), "{err}");
        write_table(
            &d.join("t.db"),
            [("k", "v"), ("k2", "v2")],
            OnDuplicate::KeepFirst,
        )
        .unwrap();
        let good = std::fs::read(d.join("t.db")).unwrap();
        for n in 0..good.len() {
            std::fs::write(d.join("t.db"), &good[..n]).unwrap();
            let err = IndexedTable::open(&spec, p, &OpenOptions::default())
                .err()
                .unwrap();
            assert!(
                err.to_string().starts_with(&format!("{p}.db: ")),
                "{n}: {err}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
