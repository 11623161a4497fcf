//! `cdb:` tables: D. J. Bernstein's constant database format, `NAME.cdb`,
//! byte for byte as djb's `cdbmake` and tinycdb write it, so files built by
//! Facteur's postmap are read by `cdb -q` and files built by tinycdb (or by
//! Postfix with its cdb module) are read here.
//!
//! # The format
//!
//! All numbers are u32, little-endian; the file is at most 4 GiB.
//!
//! * a 2048-byte header: 256 pairs `(position, slot count)`, one per hash
//!   table;
//! * the records, from offset 2048: `key length, data length, key, data`;
//! * the 256 hash tables, each `slot count` slots of `(hash, record
//!   position)`; position 0 marks an empty slot.
//!
//! The hash of a key is `h = 5381; h = ((h << 5) + h) ^ byte` for each byte.
//! A key lives in table `h & 255`; its probe starts at slot
//! `(h >> 8) % slot count` and goes on linearly (wrapping) until an empty
//! slot. Each table has twice as many slots as keys.
//!
//! Keys and values are written without a terminating NUL. Lookups try the
//! key as given and then with a NUL appended, dropping a trailing NUL from
//! the value, so tables that Postfix built with NULs read the same.
//!
//! # Why by hand
//!
//! The reader is a few dozen lines over a memory map; the writer shares the
//! streaming, duplicate detection and atomic replace of [`super::indexed`].
//! The cdb crates available either read through `std::io` rather than a
//! bounds-checked mmap, or are Unlicense-only (this project is
//! MIT/Apache-2.0).
//!
//! # Safety of reading
//!
//! Every table position, slot and record length is checked against the
//! mapping before use: a corrupt or truncated file gives
//! [`TableError::Config`] naming it, never a panic. The format has no
//! checksum, so a flipped byte inside a value reads back as a different
//! value; [`CdbTable::verify`] checks everything the structure allows
//! (every record in bounds, every slot pointing at a record whose key has
//! the slot's hash and belongs in that table, one slot per record).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::indexed::{
    add_all, add_record, fold_key, io_reason, map_file, record_len_at, KeyIndex, TempFile,
};
use super::indexed::{Added, OnDuplicate, TableWriter, WriteStats};
use super::{require_absolute, FileStamp, OpenOptions, Table, TableError};

const HEADER_LEN: u64 = 2048;

/// djb's cdb hash.
#[inline]
pub fn cdb_hash(data: &[u8]) -> u32 {
    let mut h: u32 = 5381;
    for &c in data {
        h = (h << 5).wrapping_add(h) ^ c as u32;
    }
    h
}

#[inline]
fn u32_at(b: &[u8], off: u64) -> Option<u32> {
    let o = usize::try_from(off).ok()?;
    let s = b.get(o..o.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// An open `cdb:` table: the memory-mapped `NAME.cdb`.
pub struct CdbTable {
    name: String,
    path: PathBuf,
    rebuild: String,
    map: Mmap,
    stamp: FileStamp,
    keep_case: bool,
    /// End of the records (start of the first hash table).
    data_end: u64,
}

impl CdbTable {
    /// Open `cdb:PATH`, reading `PATH.cdb`. Daemons' tables must be
    /// absolute paths.
    pub fn open(spec: &str, path: &str, opts: &OpenOptions) -> Result<CdbTable, TableError> {
        require_absolute(spec, path)?;
        Self::open_path(spec, path, opts)
    }

    /// Like [`CdbTable::open`] but accepting a relative path (postmap).
    pub fn open_path(spec: &str, path: &str, opts: &OpenOptions) -> Result<CdbTable, TableError> {
        let file_path = PathBuf::from(format!("{path}.cdb"));
        let rebuild = format!("run \"postmap cdb:{path}\" to rebuild it");
        let fail = |e: &io::Error| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                format!("; run \"postmap cdb:{path}\" to build it")
            } else {
                String::new()
            };
            TableError::Config(format!(
                "open database {}: {}{hint}",
                file_path.display(),
                io_reason(e)
            ))
        };
        let stamp = FileStamp::of(&file_path);
        let file = File::open(&file_path).map_err(|e| fail(&e))?;
        let stamp = stamp.map_err(|e| fail(&e))?;
        let map = map_file(&file).map_err(|e| fail(&e))?;
        let bad =
            |why: String| TableError::Config(format!("{}: {why}; {rebuild}", file_path.display()));
        let Some(map) = map else {
            return Err(bad(
                "truncated cdb file (0 bytes, shorter than the 2048-byte header)".into(),
            ));
        };
        let len = map.len() as u64;
        if len < HEADER_LEN {
            return Err(bad(format!(
                "truncated cdb file ({len} bytes, shorter than the 2048-byte header)"
            )));
        }
        if len > u32::MAX as u64 + 1 {
            return Err(bad(format!(
                "not a cdb file ({len} bytes, more than 4 GiB)"
            )));
        }
        let mut data_end = len;
        for t in 0..256u64 {
            let pos = u32_at(&map, t * 8).unwrap_or(0) as u64;
            let slots = u32_at(&map, t * 8 + 4).unwrap_or(0) as u64;
            if pos < HEADER_LEN || pos + slots * 8 > len {
                return Err(bad(format!(
                    "corrupt cdb file (hash table {t} at {pos}, {slots} slots, lies outside the {len}-byte file)"
                )));
            }
            data_end = data_end.min(pos);
        }
        Ok(CdbTable {
            name: spec.to_string(),
            path: file_path,
            rebuild,
            map,
            stamp,
            keep_case: opts.keep_case,
            data_end,
        })
    }

    /// The `.cdb` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, what: &str) -> TableError {
        TableError::Config(format!(
            "{}: corrupt cdb file: {what}; {}",
            self.path.display(),
            self.rebuild
        ))
    }

    /// The record at `pos`: key, data and the position after it, if it
    /// lies inside `[2048, limit)`.
    #[inline]
    fn record(&self, pos: u64, limit: u64) -> Option<(&[u8], &[u8], u64)> {
        if pos < HEADER_LEN {
            return None;
        }
        let klen = u32_at(&self.map, pos)? as u64;
        let dlen = u32_at(&self.map, pos + 4)? as u64;
        let end = pos + 8 + klen + dlen;
        if end > limit {
            return None;
        }
        let k = self
            .map
            .get((pos + 8) as usize..(pos + 8 + klen) as usize)?;
        let d = self.map.get((pos + 8 + klen) as usize..end as usize)?;
        Some((k, d, end))
    }

    fn find(&self, key: &[u8]) -> Result<Option<&[u8]>, TableError> {
        let h = cdb_hash(key);
        let t = (h & 255) as u64;
        let pos = u32_at(&self.map, t * 8).unwrap_or(0) as u64;
        let slots = u32_at(&self.map, t * 8 + 4).unwrap_or(0) as u64;
        if slots == 0 {
            return Ok(None);
        }
        let start = (h >> 8) as u64 % slots;
        for n in 0..slots {
            let at = pos + ((start + n) % slots) * 8;
            let (Some(sh), Some(sp)) = (u32_at(&self.map, at), u32_at(&self.map, at + 4)) else {
                return Err(self.corrupt("hash table outside the file"));
            };
            if sp == 0 {
                return Ok(None);
            }
            if sh == h {
                let Some((k, d, _)) = self.record(sp as u64, self.data_end) else {
                    return Err(self.corrupt(&format!("record at {sp} lies outside the file")));
                };
                if k == key {
                    return Ok(Some(d));
                }
            }
        }
        Ok(None)
    }

    /// The value stored for exactly `key` (no case folding); a key stored
    /// with a terminating NUL (as Postfix may write it) is found too.
    pub fn lookup_bytes(&self, key: &[u8]) -> Result<Option<&[u8]>, TableError> {
        if let Some(v) = self.find(key)? {
            return Ok(Some(v));
        }
        let mut with_nul = Vec::with_capacity(key.len() + 1);
        with_nul.extend_from_slice(key);
        with_nul.push(0);
        Ok(self
            .find(&with_nul)?
            .map(|v| v.strip_suffix(b"\0").unwrap_or(v)))
    }

    /// Every record, in file order (what `cdb -d` prints).
    pub fn iter(&self) -> CdbEntries<'_> {
        CdbEntries {
            table: self,
            pos: HEADER_LEN,
            done: false,
        }
    }

    /// Check the whole structure (see the module doc). O(size of the file).
    pub fn verify(&self) -> Result<u64, TableError> {
        let mut records = 0u64;
        for e in self.iter() {
            e?;
            records += 1;
        }
        let mut used = 0u64;
        for t in 0..256u64 {
            let pos = u32_at(&self.map, t * 8).unwrap_or(0) as u64;
            let slots = u32_at(&self.map, t * 8 + 4).unwrap_or(0) as u64;
            for n in 0..slots {
                let at = pos + n * 8;
                let sh = u32_at(&self.map, at).unwrap_or(0);
                let sp = u32_at(&self.map, at + 4).unwrap_or(0) as u64;
                if sp == 0 {
                    continue;
                }
                used += 1;
                match self.record(sp, self.data_end) {
                    Some((k, _, _)) if cdb_hash(k) == sh && (sh & 255) as u64 == t => {}
                    _ => return Err(self.corrupt(&format!("slot {n} of hash table {t} is wrong"))),
                }
            }
        }
        if used != records {
            return Err(self.corrupt(&format!("{records} records but {used} hash table entries")));
        }
        Ok(records)
    }
}

/// The records of a [`CdbTable`] in file order; an error ends the
/// iteration.
pub struct CdbEntries<'a> {
    table: &'a CdbTable,
    pos: u64,
    done: bool,
}

impl<'a> Iterator for CdbEntries<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), TableError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.pos >= self.table.data_end {
            if !self.done && self.pos > self.table.data_end {
                self.done = true;
                return Some(Err(self.table.corrupt("records overrun the hash tables")));
            }
            self.done = true;
            return None;
        }
        match self.table.record(self.pos, self.table.data_end) {
            Some((k, d, end)) => {
                self.pos = end;
                Some(Ok((k, d)))
            }
            None => {
                self.done = true;
                Some(Err(self.table.corrupt(&format!(
                    "record at {} overruns the data",
                    self.pos
                ))))
            }
        }
    }
}

impl Table for CdbTable {
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

/// Writes a `.cdb` file: records stream to a temporary file next to it;
/// [`TableWriter::commit`] appends the hash tables, writes the header,
/// fsyncs and renames it into place.
pub struct CdbWriter {
    tmp: TempFile,
    index: KeyIndex,
}

fn too_large() -> io::Error {
    io::Error::other("cdb file would be larger than 4 GiB")
}

impl CdbWriter {
    /// Start writing `path_cdb` (the full name, `NAME.cdb`) with exactly
    /// `mode`.
    pub fn create(path_cdb: &Path, mode: u32) -> io::Result<CdbWriter> {
        let mut tmp = TempFile::create(path_cdb, mode)?;
        tmp.write(&[0u8; HEADER_LEN as usize])?;
        Ok(CdbWriter {
            tmp,
            index: KeyIndex::new(record_len_at),
        })
    }

    fn finish(mut self) -> io::Result<TempFile> {
        let data_end = self.index.compact(&mut self.tmp, HEADER_LEN)?;
        self.index.drop_index();
        let entries = std::mem::take(&mut self.index.entries);
        // Group the entries by table, keeping their order within each.
        let mut counts = [0u32; 256];
        for &(h, _) in &entries {
            counts[(h & 255) as usize] += 1;
        }
        let mut starts = [0usize; 257];
        for t in 0..256 {
            starts[t + 1] = starts[t] + counts[t] as usize;
        }
        let mut fill = starts;
        let mut grouped = vec![(0u32, 0u32); entries.len()];
        for &(h, off) in &entries {
            let t = (h & 255) as usize;
            grouped[fill[t]] = (h as u32, off as u32);
            fill[t] += 1;
        }
        drop(entries);
        let mut header = [0u8; HEADER_LEN as usize];
        let mut pos = data_end;
        let mut table: Vec<(u32, u32)> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        for t in 0..256 {
            let group = &grouped[starts[t]..starts[t + 1]];
            let slots = group.len() * 2;
            let p = u32::try_from(pos).map_err(|_| too_large())?;
            header[t * 8..t * 8 + 4].copy_from_slice(&p.to_le_bytes());
            header[t * 8 + 4..t * 8 + 8].copy_from_slice(&(slots as u32).to_le_bytes());
            if slots == 0 {
                continue;
            }
            table.clear();
            table.resize(slots, (0, 0));
            for &(h, off) in group {
                let mut i = (h >> 8) as usize % slots;
                while table[i].1 != 0 {
                    i = (i + 1) % slots;
                }
                table[i] = (h, off);
            }
            bytes.clear();
            for &(h, off) in &table {
                bytes.extend_from_slice(&h.to_le_bytes());
                bytes.extend_from_slice(&off.to_le_bytes());
            }
            self.tmp.write(&bytes)?;
            pos += bytes.len() as u64;
        }
        if pos > u32::MAX as u64 + 1 {
            return Err(too_large());
        }
        self.tmp.write_at(0, &header)?;
        Ok(self.tmp)
    }
}

impl TableWriter for CdbWriter {
    fn add(&mut self, key: &[u8], value: &[u8], dup: OnDuplicate) -> io::Result<Added> {
        let len = 8 + key.len() as u64 + value.len() as u64;
        // Leave room for the hash tables (16 bytes per entry at most).
        let projected = self.tmp.len() + len + 16 * (self.index.entries.len() as u64 + 1);
        if projected > u32::MAX as u64 {
            return Err(too_large());
        }
        let h = cdb_hash(key);
        add_record(&mut self.tmp, &mut self.index, h as u64, key, dup, |tmp| {
            tmp.write(&(key.len() as u32).to_le_bytes())?;
            tmp.write(&(value.len() as u32).to_le_bytes())?;
            tmp.write(key)?;
            tmp.write(value)?;
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> io::Result<()> {
        self.finish()?.commit()
    }
}

/// Write `path_cdb` (`NAME.cdb`, mode 0644) from `entries`, replacing any
/// existing file atomically.
pub fn write_table<I, K, V>(path_cdb: &Path, entries: I, dup: OnDuplicate) -> io::Result<WriteStats>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut w = Box::new(CdbWriter::create(path_cdb, 0o644)?);
    let stats = add_all(w.as_mut(), entries, dup)?;
    w.commit()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("facteur-cdb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn djb_hash() {
        assert_eq!(cdb_hash(b""), 5381);
        // ((5381 << 5) + 5381) ^ 'a'
        assert_eq!(cdb_hash(b"a"), (5381u32 * 33) ^ 97);
    }

    #[test]
    fn write_open_lookup_iterate_verify() {
        let d = dir("basic");
        let base = d.join("t");
        let p = base.to_str().unwrap();
        let entries: Vec<(String, String)> = (0..3000)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect();
        write_table(
            &d.join("t.cdb"),
            entries.iter().map(|(k, v)| (k, v)),
            OnDuplicate::KeepFirst,
        )
        .unwrap();
        let t = CdbTable::open(&format!("cdb:{p}"), p, &OpenOptions::default()).unwrap();
        for (k, v) in &entries {
            assert_eq!(t.lookup(k).unwrap().as_deref(), Some(v.as_str()));
        }
        assert_eq!(t.lookup("Key5").unwrap().as_deref(), Some("value 5"));
        assert_eq!(t.lookup("nope").unwrap(), None);
        assert_eq!(t.iter().count(), 3000);
        assert_eq!(t.verify().unwrap(), 3000);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn replace_leaves_no_dead_records_and_nul_keys_are_found() {
        let d = dir("dups");
        let base = d.join("t");
        let p = base.to_str().unwrap();
        let s = write_table(
            &d.join("t.cdb"),
            [("a", "1"), ("b", "2"), ("a", "3"), ("k\0", "nul\0")],
            OnDuplicate::Replace,
        )
        .unwrap();
        assert_eq!(
            s,
            WriteStats {
                entries: 3,
                duplicates: 1
            }
        );
        let t = CdbTable::open("cdb:x", p, &OpenOptions::default()).unwrap();
        let all: Vec<(Vec<u8>, Vec<u8>)> = t
            .iter()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].0, b"b");
        assert_eq!(t.lookup("a").unwrap().as_deref(), Some("3"));
        assert_eq!(t.lookup("k").unwrap().as_deref(), Some("nul"));
        t.verify().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncations_and_flips_never_panic() {
        let d = dir("bad");
        let base = d.join("t");
        let p = base.to_str().unwrap();
        let file = d.join("t.cdb");
        write_table(
            &file,
            [("k1", "v1"), ("k2", "v2"), ("k3", "v3")],
            OnDuplicate::KeepFirst,
        )
        .unwrap();
        let good = std::fs::read(&file).unwrap();
        for n in 0..good.len() {
            std::fs::write(&file, &good[..n]).unwrap();
            if let Ok(t) = CdbTable::open("cdb:x", p, &OpenOptions::default()) {
                let _ = t.lookup("k1");
                let _ = t.verify();
            }
        }
        let mut x: u32 = 12345;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut bad = good.clone();
            let i = x as usize % bad.len();
            bad[i] ^= 1 << (x >> 29);
            std::fs::write(&file, &bad).unwrap();
            if let Ok(t) = CdbTable::open("cdb:x", p, &OpenOptions::default()) {
                for k in ["k1", "k2", "k3", "zz"] {
                    let _ = t.lookup(k);
                }
                let _ = t.iter().count();
                let _ = t.verify();
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
