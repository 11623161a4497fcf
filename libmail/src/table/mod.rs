//! Lookup tables: one interface for every table type, opened from
//! Postfix's `type:name` syntax.
//!
//! A [`Table`] answers one raw query — exactly what `postmap -q` does. The
//! Postfix search rules on top of it (address forms with extensions,
//! parent domains, access(5) client lookups) live once, in [`search`], and
//! work with every table type; pattern tables (regexp, pcre, cidr) are
//! always queried with the whole string, which [`Table::is_pattern`] tells
//! the search code.
//!
//! Types, one module each:
//!
//! | type | module | source |
//! |---|---|---|
//! | `hash`, `btree` | [`indexed`] | `NAME.db`, Facteur's own format, built by postmap |
//! | `cdb` | [`cdb`] | `NAME.cdb`, the djb/tinycdb format |
//! | `texthash` | [`text`] | the source file, read whole |
//! | `inline`, `static`, `fail` | [`inline`] | the parameter value |
//! | `regexp`, `pcre` | [`regexp`] | the pattern file |
//! | `cidr` | [`cidr`] | the pattern file |
//! | `unix` | [`unix`] | `getpwnam` / `getgrnam` |
//! | `unionmap`, `pipemap` | [`compose`] | other tables |
//!
//! Daemons keep tables open; [`Table::changed`] tells when the file under
//! an indexed or file table was replaced (new inode or mtime), so the owner
//! can reopen it and see the new version. postmap writes a temporary file
//! and renames it into place, so a reader sees the old table or the new one,
//! never a mix.

use std::fmt;

/// Why a lookup or an open failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// The table cannot be used as configured: unknown type, missing or
    /// malformed file, bad pattern. The message names the file (and line)
    /// and, where it helps, the command that fixes it.
    Config(String),
    /// A temporary failure (I/O error, server unavailable): the caller
    /// should defer, not reject.
    Temporary(String),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Config(m) | TableError::Temporary(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TableError {}

/// Options for opening a table.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Do not fold keys to lower case (postmap `-f`).
    pub keep_case: bool,
}

/// One open lookup table.
pub trait Table: Send + Sync {
    /// The table as it was named (`hash:/etc/postfix/virtual`).
    fn name(&self) -> &str;

    /// One raw query: the value stored for exactly `key`, if any. Fixed-key
    /// tables fold `key` to lower case unless opened with `keep_case`;
    /// pattern tables match the whole string as given.
    fn lookup(&self, key: &str) -> Result<Option<String>, TableError>;

    /// True for regexp, pcre and cidr tables: queried once with the whole
    /// string, never with partial addresses or parent domains.
    fn is_pattern(&self) -> bool {
        false
    }

    /// True when the file behind the table was replaced since it was
    /// opened (tables with no file: never).
    fn changed(&self) -> bool {
        false
    }

    /// Problems found while reading the table that did not stop it from
    /// opening (skipped lines, duplicate keys), with file and line.
    fn warnings(&self) -> &[crate::config::Diagnostic] {
        &[]
    }

    /// True when a lookup may wait on something other than memory and
    /// local files (a name service that may ask the network). An
    /// asynchronous server runs such lookups where blocking is allowed.
    fn may_block(&self) -> bool {
        false
    }
}

/// An in-memory key → value map with Postfix's key folding: keys are
/// stored and looked up in lower case unless the table keeps case
/// (postmap `-f`). Shared by the tables that live in memory.
#[derive(Debug, Default)]
pub struct KeyMap {
    map: std::collections::HashMap<String, String>,
    keep_case: bool,
}

impl KeyMap {
    pub fn new(keep_case: bool) -> KeyMap {
        KeyMap {
            map: std::collections::HashMap::new(),
            keep_case,
        }
    }

    fn fold(&self, key: &str) -> String {
        if self.keep_case {
            key.to_string()
        } else {
            key.to_lowercase()
        }
    }

    /// Store `value` under `key` (a later insert of the same key replaces).
    pub fn insert(&mut self, key: &str, value: String) {
        let k = self.fold(key);
        self.map.insert(k, value);
    }

    pub fn get(&self, key: &str) -> Option<String> {
        if self.keep_case {
            self.map.get(key).cloned()
        } else {
            self.map.get(&key.to_lowercase()).cloned()
        }
    }
}

/// Split `type:name` (the name may itself contain colons:
/// `proxy:hash:/x`, `inline:{ a=b }`).
pub fn split_spec(spec: &str) -> Result<(&str, &str), TableError> {
    match spec.split_once(':') {
        Some((t, n)) if !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') => {
            Ok((t, n))
        }
        _ => Err(TableError::Config(format!(
            "unsupported dictionary type: {spec}: expected type:name, e.g. hash:/etc/postfix/virtual"
        ))),
    }
}

pub mod cdb;
pub mod cidr;
pub mod compose;
pub mod indexed;
pub mod inline;
pub mod regexp;
pub mod search;
pub mod source;
pub mod text;
pub mod unix;

/// Open the table named `spec` (`type:name`).
///
/// File-based types take an absolute path (relative paths are refused, as
/// Postfix's daemons refuse them); indexed types read `NAME.db` / `NAME.cdb`
/// built by `postmap`.
pub fn open(spec: &str, opts: &OpenOptions) -> Result<Box<dyn Table>, TableError> {
    let (kind, name) = split_spec(spec)?;
    Ok(match kind {
        "hash" | "btree" => Box::new(indexed::IndexedTable::open(spec, name, opts)?),
        "cdb" => Box::new(cdb::CdbTable::open(spec, name, opts)?),
        "texthash" => Box::new(text::TextHashTable::open(spec, name, opts)?),
        "inline" => Box::new(inline::InlineTable::parse(spec, name, opts)?),
        "static" => Box::new(inline::StaticTable::open(spec, name)?),
        "fail" => Box::new(inline::FailTable::new(spec)),
        "nis" => Box::new(inline::NisTable::open(spec)),
        "regexp" => Box::new(regexp::RegexpTable::open(
            spec,
            name,
            regexp::Flavor::Regexp,
        )?),
        "pcre" => Box::new(regexp::RegexpTable::open(spec, name, regexp::Flavor::Pcre)?),
        "cidr" => Box::new(cidr::CidrTable::open(spec, name)?),
        "unix" => Box::new(unix::UnixTable::open(spec, name)?),
        "unionmap" => Box::new(compose::ComposeTable::open(
            spec,
            name,
            compose::Mode::Union,
            opts,
        )?),
        "pipemap" => Box::new(compose::ComposeTable::open(
            spec,
            name,
            compose::Mode::Pipe,
            opts,
        )?),
        // proxy: is transparent here: the table is opened directly.
        "proxy" => return open(name, opts),
        other => {
            return Err(TableError::Config(format!(
                "unsupported dictionary type: {other} (supported: {})",
                TYPES.join(", ")
            )))
        }
    })
}

/// The table types [`open`] knows (`postconf -m`).
pub const TYPES: &[&str] = &[
    "btree", "cdb", "cidr", "fail", "hash", "inline", "nis", "pcre", "pipemap", "proxy", "regexp",
    "static", "texthash", "unionmap", "unix",
];

/// The file behind a file-based table, remembered at open so [`Table::changed`]
/// can tell when it was replaced (postmap renames a new file into place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

impl FileStamp {
    pub fn of(path: &std::path::Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            len: m.len(),
        })
    }

    /// True when the path now names another file, or the file was modified.
    pub fn changed(&self) -> bool {
        match FileStamp::of(&self.path) {
            Ok(now) => now != *self,
            Err(_) => true,
        }
    }
}

/// Refuse relative table paths with a message that says what to do.
pub fn require_absolute(spec: &str, path: &str) -> Result<(), TableError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(TableError::Config(format!(
            "{spec}: the table file must be an absolute path (e.g. /etc/postfix/{path})"
        )))
    }
}
