//! Tables made of tables: `unionmap:{ t1:n1, t2:n2 }` answers with every
//! table's result joined by commas; `pipemap:{ t1:n1, t2:n2 }` feeds each
//! result to the next table as its key and answers with the last one.
//! An error of any member fails the lookup, named after the whole table.

use super::{open, OpenOptions, Table, TableError};
use crate::config::params::split_list;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Union,
    Pipe,
}

pub struct ComposeTable {
    name: String,
    mode: Mode,
    members: Vec<Box<dyn Table>>,
}

impl ComposeTable {
    pub fn open(
        spec: &str,
        name: &str,
        mode: Mode,
        opts: &OpenOptions,
    ) -> Result<ComposeTable, TableError> {
        let kind = if mode == Mode::Union {
            "unionmap"
        } else {
            "pipemap"
        };
        let bad = || {
            TableError::Config(format!(
                "bad syntax: \"{spec}\"; need \"{kind}:{{type:name...}}\""
            ))
        };
        let inner = super::inline::braced(name).ok_or_else(bad)?;
        let items = split_list(inner);
        if items.is_empty() {
            return Err(bad());
        }
        let members = items
            .into_iter()
            .map(|item| open(item, opts))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ComposeTable {
            name: spec.to_string(),
            mode,
            members,
        })
    }

    fn wrap(&self, e: TableError) -> TableError {
        let msg = format!("table {}: query error: Application error", self.name);
        match e {
            TableError::Temporary(_) => TableError::Temporary(msg),
            TableError::Config(_) => TableError::Config(msg),
        }
    }
}

impl Table for ComposeTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn may_block(&self) -> bool {
        self.members.iter().any(|t| t.may_block())
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        match self.mode {
            Mode::Union => {
                let mut found: Vec<String> = Vec::new();
                for t in &self.members {
                    if let Some(v) = t.lookup(key).map_err(|e| self.wrap(e))? {
                        found.push(v);
                    }
                }
                Ok(if found.is_empty() {
                    None
                } else {
                    Some(found.join(","))
                })
            }
            Mode::Pipe => {
                let mut current = key.to_string();
                for t in &self.members {
                    match t.lookup(&current).map_err(|e| self.wrap(e))? {
                        Some(v) => current = v,
                        None => return Ok(None),
                    }
                }
                Ok(Some(current))
            }
        }
    }

    fn changed(&self) -> bool {
        self.members.iter().any(|t| t.changed())
    }
}

#[cfg(test)]
mod tests {
    use super::super::open;
    use super::*;

    fn q(spec: &str, key: &str) -> Result<Option<String>, TableError> {
        open(spec, &OpenOptions::default())?.lookup(key)
    }

    #[test]
    fn union_and_pipe() {
        let u = "unionmap:{inline:{a=1}, inline:{a=2}, inline:{b=3}}";
        assert_eq!(q(u, "a").unwrap().as_deref(), Some("1,2"));
        assert_eq!(q(u, "b").unwrap().as_deref(), Some("3"));
        assert_eq!(q(u, "c").unwrap(), None);
        let p = "pipemap:{inline:{a=b}, inline:{b=c}}";
        assert_eq!(q(p, "a").unwrap().as_deref(), Some("c"));
        assert_eq!(
            q("pipemap:{inline:{a=b}, inline:{x=c}}", "a").unwrap(),
            None
        );
    }

    #[test]
    fn errors() {
        assert!(q("unionmap:{}", "a").is_err());
        assert!(q("unionmap:inline:{a=1}", "a").is_err());
        assert_eq!(
            q("unionmap:{inline:{a=1}, fail:x}", "a")
                .unwrap_err()
                .to_string(),
            "table unionmap:{inline:{a=1}, fail:x}: query error: Application error"
        );
    }
}
