//! `texthash:` tables: the postmap source file read directly, with no
//! compiled file — same lookups as `hash:`, read once when opened.
//!
//! Problems in the file are warnings (the line is skipped), kept in
//! [`TextHashTable::warnings`] for the caller to print; the first entry of
//! a duplicated key wins.

use std::path::Path;

use super::source::{first_wins, parse_source};
use super::{FileStamp, KeyMap, OpenOptions, Table, TableError};
use crate::config::maincf::read_config_file;
use crate::config::Diagnostic;

pub struct TextHashTable {
    name: String,
    map: KeyMap,
    stamp: FileStamp,
    warnings: Vec<Diagnostic>,
}

impl TextHashTable {
    pub fn open(spec: &str, path: &str, opts: &OpenOptions) -> Result<TextHashTable, TableError> {
        let text =
            read_config_file(path).map_err(|e| TableError::Config(format!("open {path}: {e}")))?;
        let stamp = FileStamp::of(Path::new(path))
            .map_err(|e| TableError::Config(format!("open {path}: {e}")))?;
        let (entries, mut warnings) = parse_source(&text, path);
        for w in &mut warnings {
            if !w.message.ends_with("-- ignoring this line") {
                w.message.push_str(" -- ignoring this line");
            }
        }
        let (entries, dups) = first_wins(entries, opts.keep_case, path);
        warnings.extend(dups);
        let mut map = KeyMap::new(opts.keep_case);
        for e in entries {
            map.insert(&e.key, e.value);
        }
        Ok(TextHashTable {
            name: spec.to_string(),
            map,
            stamp,
            warnings,
        })
    }

    /// Lines skipped and duplicates dropped while reading the file.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }
}

impl Table for TextHashTable {
    fn warnings(&self) -> &[Diagnostic] {
        TextHashTable::warnings(self)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        Ok(self.map.get(key))
    }

    fn changed(&self) -> bool {
        self.stamp.changed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_source_with_postfix_rules() {
        let dir = std::env::temp_dir().join(format!("facteur-texthash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("src");
        std::fs::write(
            &p,
            "# c\nKey1 Val One\nnovalue\nkey1 dup\n@Example.COM  x\n",
        )
        .unwrap();
        let ps = p.to_str().unwrap();
        let t =
            TextHashTable::open(&format!("texthash:{ps}"), ps, &OpenOptions::default()).unwrap();
        assert_eq!(t.lookup("KEY1").unwrap().as_deref(), Some("Val One"));
        assert_eq!(t.lookup("@example.com").unwrap().as_deref(), Some("x"));
        let w: Vec<String> = t.warnings().iter().map(|d| d.located()).collect();
        assert_eq!(
            w,
            vec![
                format!(
                    "{ps}, line 3: expected format: key whitespace value -- ignoring this line"
                ),
                format!("{ps}, line 4: duplicate entry: \"key1\""),
            ]
        );
        assert!(!t.changed());
        std::fs::write(&p, "a b\n").unwrap();
        assert!(t.changed());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
