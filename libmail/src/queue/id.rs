//! Queue IDs: the names of queue files, made as Postfix makes them.
//!
//! # Forms
//!
//! A queue ID is built from the time the queue file was created (seconds
//! and microseconds) and the inode number of that file, so two live queue
//! files on one file system never share an ID.
//!
//! * **Short** (`enable_long_queue_ids = no`, the default): the
//!   microseconds as exactly 5 upper-case hex digits (`%05X`), then the
//!   inode number in upper-case hex without padding (`%X`). Variable
//!   length, usually 10–12 characters: `B59DF9902ED`. Short IDs repeat over
//!   time (the seconds are not part of them, inodes are reused).
//! * **Long** (`enable_long_queue_ids = yes`): the seconds in base 52,
//!   zero-padded to at least 6 digits; the microseconds in base 52, exactly
//!   4 digits; the letter `z`; the inode number in base 51. The base-52
//!   alphabet is `0-9`, `B-Z` and `b-z` without vowels; base 51 is the same
//!   alphabet without its last letter `z`, so the *last* `z` of an ID is
//!   always the separator: `4jZNQr5H5qz1SZKg`.
//!
//! Checked against Postfix 3.7.11: with long IDs on, a file created at
//! 1795619428.743903 with inode 10027757 was named `4jZNQr5H5qz1SZKg`;
//! after switching long IDs off, `postsuper` renamed it `B59DF9902ED`.
//!
//! # Hashed subdirectories
//!
//! For queues listed in `hash_queue_names`, a file lives `hash_queue_depth`
//! single-character directories deep. The characters are the first
//! characters of the creation time's microseconds in 5-digit upper-case
//! hex — for a short ID simply its first characters, for a long ID the
//! decoded microseconds converted to hex (postconf(5), and observed:
//! `4jZNQr5H5qz1SZKg` went to `incoming/B/5/` at depth 2). So both forms
//! hash alike and a queue can hold both. Postfix accepts depths above 5
//! (short IDs then use inode digits; long IDs make cleanup fail with
//! `mail_queue_enter: rename ... giving up`, observed on 3.7.11); Facteur
//! caps the depth at 5, see [`MAX_HASH_DEPTH`].
//!
//! # Untrusted IDs
//!
//! [`QueueId::parse`] accepts only the two forms above: the ID alphabets,
//! bounded lengths, decodable numbers. An ID that parses cannot contain
//! `/`, `.` or anything else a path could be built from, so `postcat -q`
//! and `postsuper -d` can join it to a directory safely.

use std::fmt;

/// Upper bound of an ID's length: a long ID with a 64-bit time and inode
/// has at most 12 + 4 + 1 + 12 = 29 characters; a short one 5 + 16.
pub const MAX_ID_LEN: usize = 32;

/// The deepest `hash_queue_depth` Facteur supports (the 5 hex digits of
/// the microseconds).
pub const MAX_HASH_DEPTH: usize = 5;

/// The 52-character vowel-free alphabet of long IDs; its first 51
/// characters (all but `z`) encode the inode.
const B52: &[u8; 52] = b"0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz";
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Which form new IDs take (`enable_long_queue_ids`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdStyle {
    Short,
    Long,
}

impl IdStyle {
    /// The style for a value of `enable_long_queue_ids` (already checked
    /// as a boolean).
    pub fn from_long_ids(long: bool) -> IdStyle {
        if long {
            IdStyle::Long
        } else {
            IdStyle::Short
        }
    }
}

/// A valid queue ID. Small and `Copy`; the text is always ASCII from one
/// of the two ID alphabets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    len: u8,
    buf: [u8; MAX_ID_LEN],
}

/// Why a string is not a queue ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId {
    pub reason: &'static str,
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid queue ID: {}", self.reason)
    }
}

impl std::error::Error for InvalidId {}

fn b52_value(c: u8) -> Option<u64> {
    B52.iter().position(|&x| x == c).map(|p| p as u64)
}

/// Writes `v` in `base` with the first `base` characters of [`B52`],
/// at least `min` digits, into `out`.
fn push_base(out: &mut Vec<u8>, mut v: u64, base: u64, min: usize) {
    let mut digits = [0u8; 16];
    let mut n = 0;
    loop {
        digits[n] = B52[(v % base) as usize];
        n += 1;
        v /= base;
        if v == 0 {
            break;
        }
    }
    while n < min {
        digits[n] = b'0';
        n += 1;
    }
    out.extend(digits[..n].iter().rev());
}

fn decode_base(s: &[u8], base: u64) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in s {
        let d = b52_value(c)?;
        if d >= base {
            return None;
        }
        v = v.checked_mul(base)?.checked_add(d)?;
    }
    Some(v)
}

impl QueueId {
    /// Builds the ID of a file created at `sec`.`usec` with inode `inode`.
    /// `usec` must be below 1,000,000.
    pub fn new(style: IdStyle, sec: u64, usec: u32, inode: u64) -> QueueId {
        debug_assert!(usec < 1_000_000);
        let mut out = Vec::with_capacity(MAX_ID_LEN);
        match style {
            IdStyle::Short => {
                out.extend_from_slice(format!("{:05X}{:X}", usec, inode).as_bytes());
            }
            IdStyle::Long => {
                push_base(&mut out, sec, 52, 6);
                push_base(&mut out, u64::from(usec), 52, 4);
                out.push(b'z');
                push_base(&mut out, inode, 51, 1);
            }
        }
        let mut buf = [0u8; MAX_ID_LEN];
        buf[..out.len()].copy_from_slice(&out);
        QueueId {
            len: out.len() as u8,
            buf,
        }
    }

    /// Validates an untrusted ID (a file name found in a queue, an
    /// argument of `postcat -q` or `postsuper -d`).
    pub fn parse(s: &str) -> Result<QueueId, InvalidId> {
        let b = s.as_bytes();
        if b.len() > MAX_ID_LEN {
            return Err(InvalidId { reason: "too long" });
        }
        if b.iter().all(|c| HEX.contains(c)) {
            // Short: 5 hex digits of microseconds, 1..=16 of inode.
            if b.len() < 6 {
                return Err(InvalidId {
                    reason: "too short",
                });
            }
            if b.len() > 5 + 16 {
                return Err(InvalidId {
                    reason: "inode part too long",
                });
            }
        } else {
            let z = b.iter().rposition(|&c| c == b'z').ok_or(InvalidId {
                reason: "not a short (hex) or long (base 52 with z) ID",
            })?;
            let (time, inode) = (&b[..z], &b[z + 1..]);
            if inode.is_empty() {
                return Err(InvalidId {
                    reason: "no inode after z",
                });
            }
            if time.len() < 10 {
                return Err(InvalidId {
                    reason: "time part too short",
                });
            }
            decode_base(&time[..time.len() - 4], 52).ok_or(InvalidId {
                reason: "bad seconds",
            })?;
            let usec = decode_base(&time[time.len() - 4..], 52).ok_or(InvalidId {
                reason: "bad microseconds",
            })?;
            if usec >= 1_000_000 {
                return Err(InvalidId {
                    reason: "microseconds out of range",
                });
            }
            decode_base(inode, 51).ok_or(InvalidId {
                reason: "bad inode part",
            })?;
        }
        let mut buf = [0u8; MAX_ID_LEN];
        buf[..b.len()].copy_from_slice(b);
        Ok(QueueId {
            len: b.len() as u8,
            buf,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII from the ID alphabets is ever stored.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }

    pub fn style(&self) -> IdStyle {
        if self.as_str().contains('z') {
            IdStyle::Long
        } else {
            IdStyle::Short
        }
    }

    /// The inode number the ID was made from.
    pub fn inode(&self) -> Option<u64> {
        let s = self.as_str().as_bytes();
        match self.style() {
            IdStyle::Short => u64::from_str_radix(self.as_str().get(5..)?, 16).ok(),
            IdStyle::Long => {
                let z = s.iter().rposition(|&c| c == b'z')?;
                decode_base(&s[z + 1..], 51)
            }
        }
    }

    /// The same ID (same style and creation time) for another inode:
    /// `postsuper -s` renames a file whose name does not match its inode
    /// (a queue restored from a backup) to this.
    pub fn with_inode(&self, inode: u64) -> QueueId {
        let s = self.as_str().as_bytes();
        match self.style() {
            IdStyle::Short => {
                let out = format!("{}{inode:X}", &self.as_str()[..5]);
                QueueId::parse(&out).unwrap_or(*self)
            }
            IdStyle::Long => {
                let z = s.iter().rposition(|&c| c == b'z').unwrap_or(0);
                let mut out = s[..=z].to_vec();
                push_base(&mut out, inode, 51, 1);
                QueueId::parse(std::str::from_utf8(&out).unwrap_or("")).unwrap_or(*self)
            }
        }
    }

    /// The 5 upper-case hex digits of the creation time's microseconds:
    /// the characters hashed subdirectories are named after.
    pub fn hash_key(&self) -> [u8; 5] {
        let s = self.as_str().as_bytes();
        let mut key = [0u8; 5];
        match self.style() {
            IdStyle::Short => key.copy_from_slice(&s[..5]),
            IdStyle::Long => {
                let z = s.iter().rposition(|&c| c == b'z').unwrap_or(0);
                let usec = decode_base(&s[z.saturating_sub(4)..z], 52).unwrap_or(0);
                key = hash_key_of_usec(usec as u32);
            }
        }
        key
    }
}

/// The hash key (5 upper-case hex digits) of a creation time's
/// microseconds; known before the file exists, so a writer can create
/// its file in the right subdirectory.
pub fn hash_key_of_usec(usec: u32) -> [u8; 5] {
    let mut key = [0u8; 5];
    let mut v = usec;
    for k in key.iter_mut().rev() {
        *k = HEX[(v & 15) as usize];
        v >>= 4;
    }
    key
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueId({})", self.as_str())
    }
}

impl std::str::FromStr for QueueId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<QueueId, InvalidId> {
        QueueId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postfix_3_7_observed_ids() {
        // Observed on Postfix 3.7.11 (see the module doc).
        let long = QueueId::new(IdStyle::Long, 1795619428, 743903, 10027757);
        assert_eq!(long.as_str(), "4jZNQr5H5qz1SZKg");
        let short = QueueId::new(IdStyle::Short, 1795619428, 743903, 10027757);
        assert_eq!(short.as_str(), "B59DF9902ED");
        assert_eq!(&long.hash_key(), b"B59DF");
        assert_eq!(&short.hash_key(), b"B59DF");
        assert_eq!(long.style(), IdStyle::Long);
        assert_eq!(short.style(), IdStyle::Short);
    }

    #[test]
    fn short_ids_pad_microseconds_only() {
        assert_eq!(QueueId::new(IdStyle::Short, 0, 10, 1).as_str(), "0000A1");
        assert_eq!(QueueId::new(IdStyle::Short, 0, 0, 0).as_str(), "000000");
        assert_eq!(
            QueueId::new(IdStyle::Short, 0, 999_999, u64::MAX).as_str(),
            "F423FFFFFFFFFFFFFFFFF"
        );
    }

    #[test]
    fn long_ids_pad_seconds_to_six_and_usec_to_four() {
        let id = QueueId::new(IdStyle::Long, 0, 0, 0);
        assert_eq!(id.as_str(), "0000000000z0");
        let big = QueueId::new(IdStyle::Long, u64::MAX, 999_999, u64::MAX);
        assert!(big.as_str().len() <= MAX_ID_LEN);
        assert_eq!(QueueId::parse(big.as_str()).unwrap(), big);
        assert_eq!(&big.hash_key(), b"F423F");
    }

    #[test]
    fn postconf_example_parses() {
        let id = QueueId::parse("3Pt2mN2VXxznjll").unwrap();
        assert_eq!(id.style(), IdStyle::Long);
        assert!(QueueId::parse("C3CD21F3E90").is_ok());
        assert!(QueueId::parse("4F2A51C0D2").is_ok());
    }

    #[test]
    fn round_trips_many_values() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let usec = (x % 1_000_000) as u32;
            for style in [IdStyle::Short, IdStyle::Long] {
                let id = QueueId::new(style, x >> 20, usec, x.rotate_left(17) >> (x % 40));
                let p = QueueId::parse(id.as_str()).unwrap();
                assert_eq!(p, id);
                assert_eq!(p.hash_key(), hash_key_of_usec(usec));
            }
        }
    }

    #[test]
    fn rejects_anything_path_like_or_out_of_alphabet() {
        for bad in [
            "",
            "ABCDE",
            "../../etc/passwd",
            "ABCDEF/..",
            "abcdef",
            "ABCDEFG.",
            "0000000000z",
            "000000000z1",
            "4jZNQr5H5qz1SZKg/",
            "4jZNQr5H5qz1SZKgz",
            "4jZNQr5H5aqz1SZKg",
            "4jZNQrzzzzz1SZKg",
            "ABCDEF\0",
            "ÀBCDEF",
            "0123456789ABCDEF0123456789ABCDEF0",
            "0123456789ABCDEF0123456",
        ] {
            assert!(QueueId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn inode_round_trips_and_can_be_replaced() {
        for style in [IdStyle::Short, IdStyle::Long] {
            let id = QueueId::new(style, 1_700_000_000, 123_456, 0x98C0E5);
            assert_eq!(id.inode(), Some(0x98C0E5), "{id}");
            let other = id.with_inode(4242);
            assert_eq!(other.inode(), Some(4242));
            assert_eq!(
                other.hash_key(),
                id.hash_key(),
                "same time, same subdirectory"
            );
            assert_eq!(other, QueueId::new(style, 1_700_000_000, 123_456, 4242));
        }
    }
}
