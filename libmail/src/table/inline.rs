//! Tables written in the parameter value: `inline:{ key=value, { key =
//! text with spaces } }`, `static:value` / `static:{ text }`, and `fail:`.
//!
//! * inline: items separated by commas or whitespace; each is `key=value`
//!   (no blanks) or a `{ key = value }` group (blanks allowed, trimmed).
//!   The last definition of a key wins. Keys fold to lower case unless the
//!   table is opened with `keep_case`.
//! * static: every lookup returns the value.
//! * fail: every lookup fails temporarily (for tests of error handling).

use super::{KeyMap, OpenOptions, Table, TableError};
use crate::config::params::split_list;

/// The inside of `{ ... }` when `name` is one whole brace group.
pub fn braced(name: &str) -> Option<&str> {
    let t = name.trim();
    let inner = t.strip_prefix('{')?.strip_suffix('}')?;
    // The closing brace must close the opening one, not an inner group.
    let mut depth = 0i32;
    for (i, c) in t.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 && i != t.len() - 1 {
                    return None;
                }
            }
            _ => {}
        }
    }
    Some(inner)
}

pub struct InlineTable {
    name: String,
    map: KeyMap,
}

impl InlineTable {
    pub fn parse(spec: &str, name: &str, opts: &OpenOptions) -> Result<InlineTable, TableError> {
        let need = || "need \"inline:{name=value...}\"".to_string();
        let inner = braced(name)
            .filter(|i| !i.trim().is_empty())
            .ok_or_else(|| TableError::Config(format!("bad syntax: \"{spec}\"; {}", need())))?;
        let mut map = KeyMap::new(opts.keep_case);
        for item in split_list(inner) {
            let (k, v) = match braced(item) {
                Some(group) => group.split_once('=').map(|(k, v)| (k.trim(), v.trim())),
                None => item.split_once('='),
            }
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                TableError::Config(format!(
                    "missing '=' after attribute name: \"{spec}\"; {}",
                    need()
                ))
            })?;
            map.insert(k, v.to_string());
        }
        Ok(InlineTable {
            name: spec.to_string(),
            map,
        })
    }
}

impl Table for InlineTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        Ok(self.map.get(key))
    }
}

pub struct StaticTable {
    name: String,
    value: String,
}

impl StaticTable {
    pub fn open(spec: &str, name: &str) -> Result<StaticTable, TableError> {
        let value = if name.trim_start().starts_with('{') {
            braced(name).map(str::trim).ok_or_else(|| {
                TableError::Config(format!(
                    "bad static:name syntax: missing '}}' in \"{name}\""
                ))
            })?
        } else {
            name
        };
        if name.is_empty() {
            return Err(TableError::Config(format!(
                "open dictionary: expecting \"type:name\" form instead of \"{spec}\""
            )));
        }
        Ok(StaticTable {
            name: spec.to_string(),
            value: value.to_string(),
        })
    }
}

impl Table for StaticTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, _key: &str) -> Result<Option<String>, TableError> {
        Ok(Some(self.value.clone()))
    }
}

pub struct FailTable {
    name: String,
}

impl FailTable {
    pub fn new(spec: &str) -> FailTable {
        FailTable {
            name: spec.to_string(),
        }
    }
}

impl Table for FailTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, _key: &str) -> Result<Option<String>, TableError> {
        Err(TableError::Temporary(format!(
            "table {}: query error: Application error",
            self.name
        )))
    }
}

/// `nis:map`: Facteur has no NIS client. Postfix on a host without an NIS
/// domain opens such a table, warns once and finds nothing in it; the
/// same here, so that Postfix's default `alias_maps = hash:/etc/aliases,
/// nis:mail.aliases` (and the `local_recipient_maps` built on it) works.
pub struct NisTable {
    name: String,
}

impl NisTable {
    pub fn open(spec: &str) -> NisTable {
        crate::warning!("dict_nis_init: NIS domain name not set - NIS lookups disabled");
        NisTable {
            name: spec.to_string(),
        }
    }
}

impl Table for NisTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, _key: &str) -> Result<Option<String>, TableError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(spec: &str) -> Result<InlineTable, TableError> {
        InlineTable::parse(
            spec,
            spec.strip_prefix("inline:").unwrap(),
            &OpenOptions::default(),
        )
    }

    #[test]
    fn inline_forms() {
        let t = inline("inline:{ foo=bar, { x = y z } Key=V }").unwrap();
        assert_eq!(t.lookup("FOO").unwrap().as_deref(), Some("bar"));
        assert_eq!(t.lookup("x").unwrap().as_deref(), Some("y z"));
        assert_eq!(t.lookup("key").unwrap().as_deref(), Some("V"));
        assert_eq!(t.lookup("nope").unwrap(), None);
        let t = inline("inline:{ a=1, a=2 }").unwrap();
        assert_eq!(t.lookup("a").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn inline_errors_are_worded_like_postfix() {
        assert_eq!(
            inline("inline:{ a = 1 }").err().unwrap().to_string(),
            "missing '=' after attribute name: \"inline:{ a = 1 }\"; need \"inline:{name=value...}\""
        );
        assert_eq!(
            inline("inline:{}").err().unwrap().to_string(),
            "bad syntax: \"inline:{}\"; need \"inline:{name=value...}\""
        );
        assert!(inline("inline:foo=bar").is_err());
        assert!(inline("inline:{foo=bar").is_err());
    }

    #[test]
    fn keep_case() {
        let opts = OpenOptions { keep_case: true };
        let t = InlineTable::parse("inline:{A=1}", "{A=1}", &opts).unwrap();
        assert_eq!(t.lookup("A").unwrap().as_deref(), Some("1"));
        assert_eq!(t.lookup("a").unwrap(), None);
    }

    #[test]
    fn static_and_fail() {
        let t = StaticTable::open("static:{ text with spaces }", "{ text with spaces }").unwrap();
        assert_eq!(t.lookup("x").unwrap().as_deref(), Some("text with spaces"));
        assert!(StaticTable::open("static:{a", "{a").is_err());
        assert!(StaticTable::open("static:", "").is_err());
        assert!(matches!(
            FailTable::new("fail:x").lookup("a"),
            Err(TableError::Temporary(_))
        ));
    }
}
