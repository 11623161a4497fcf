//! Domain lists: `mydestination`, `relay_domains`,
//! `virtual_alias_domains`, `virtual_mailbox_domains` (Postfix's
//! match_list of domain names).
//!
//! Items, first match wins: `example.com` (that domain; its subdomains too
//! when the parameter is listed in `parent_domain_matches_subdomains`),
//! `.example.com` (its subdomains), `type:table` (the domain, then its
//! parents, looked up as keys; any value is a match), `/file/name` (items
//! read from the file), `!item` (a match ends the search with "no").
//! Matching ignores case.

use crate::config::params::{split_list, Params};
use crate::table::search::Maps;
use crate::table::{OpenOptions, TableError};

enum Item {
    Name(String),
    Table(Maps),
}

/// One parameter's domain list.
pub struct DomainList {
    items: Vec<(bool, Item)>,
    parent_matches: bool,
}

/// Most items read from `/file` entries (bounded like everything else).
const MAX_ITEMS: usize = 100_000;

/// A list parameter's value, and whether it is named in
/// `parent_domain_matches_subdomains` (domain and network lists alike).
pub(crate) fn list_param(params: &Params, name: &str) -> Result<(String, bool), TableError> {
    let value = params
        .value(name)
        .map_err(|e| TableError::Config(format!("{name}: {e}")))?;
    let parents = params
        .value("parent_domain_matches_subdomains")
        .unwrap_or_default();
    Ok((value, split_list(&parents).contains(&name)))
}

impl DomainList {
    /// The list in parameter `name` of `params`.
    pub fn from_param(params: &Params, name: &str) -> Result<DomainList, TableError> {
        let (value, parent_matches) = list_param(params, name)?;
        DomainList::new(name, &value, parent_matches)
    }

    /// A list from its text.
    pub fn new(name: &str, value: &str, parent_matches: bool) -> Result<DomainList, TableError> {
        let mut items = Vec::new();
        let mut pending: Vec<String> = split_list(value).iter().map(|s| s.to_string()).collect();
        pending.reverse();
        while let Some(raw) = pending.pop() {
            if items.len() >= MAX_ITEMS {
                return Err(TableError::Config(format!("{name}: too many items")));
            }
            let (neg, item) = match raw.strip_prefix('!') {
                Some(r) => (true, r.trim().to_string()),
                None => (false, raw.clone()),
            };
            if item.starts_with('/') {
                let text = std::fs::read_to_string(&item)
                    .map_err(|e| TableError::Config(format!("{name}: open {item}: {e}")))?;
                let mut from_file: Vec<String> = text
                    .lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .flat_map(|l| {
                        split_list(l)
                            .into_iter()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                from_file.reverse();
                pending.extend(from_file);
                continue;
            }
            if item.contains(':') && !item.starts_with('[') {
                let maps = Maps::open(name, &item, &OpenOptions::default())?;
                items.push((neg, Item::Table(maps)));
            } else {
                items.push((neg, Item::Name(item.to_ascii_lowercase())));
            }
        }
        Ok(DomainList {
            items,
            parent_matches,
        })
    }

    /// Whether `domain` is in the list.
    pub fn matches(&self, domain: &str) -> Result<bool, TableError> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() {
            return Ok(false);
        }
        for (neg, item) in &self.items {
            let hit = match item {
                Item::Name(n) => self.name_matches(n, &d),
                Item::Table(maps) => {
                    let mut keys = vec![crate::table::search::Key {
                        text: d.clone(),
                        whole: true,
                    }];
                    let mut rest = d.as_str();
                    while let Some(i) = rest.find('.') {
                        rest = &rest[i + 1..];
                        if rest.is_empty() {
                            break;
                        }
                        keys.push(crate::table::search::Key {
                            text: if self.parent_matches {
                                rest.to_string()
                            } else {
                                format!(".{rest}")
                            },
                            whole: false,
                        });
                    }
                    maps.find_first(&keys)?.is_some()
                }
            };
            if hit {
                return Ok(!neg);
            }
        }
        Ok(false)
    }

    fn name_matches(&self, pattern: &str, d: &str) -> bool {
        if let Some(parent) = pattern.strip_prefix('.') {
            // `.example.com` means "subdomains" only where parents do not
            // match subdomains already; for a parameter listed in
            // parent_domain_matches_subdomains Postfix 3.7 matches nothing
            // with it (checked against Postfix: relay_domains =
            // .relay.example relays neither x.relay.example nor
            // relay.example). Matching more here would relay more.
            return !self.parent_matches && d.len() > parent.len() && d.ends_with(pattern);
        }
        if d == pattern {
            return true;
        }
        self.parent_matches && d.len() > pattern.len() && d.ends_with(&format!(".{pattern}"))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_dots_negation_and_parents() {
        let l = DomainList::new(
            "mydestination",
            "Example.COM, .sub.org, !bad.net, net",
            false,
        )
        .unwrap();
        assert!(l.matches("example.com").unwrap());
        assert!(l.matches("EXAMPLE.com.").unwrap());
        assert!(!l.matches("x.example.com").unwrap());
        assert!(l.matches("a.sub.org").unwrap());
        assert!(!l.matches("sub.org").unwrap());
        assert!(!l.matches("bad.net").unwrap());
        assert!(l.matches("net").unwrap());
        let r = DomainList::new("relay_domains", "example.com", true).unwrap();
        assert!(r.matches("x.example.com").unwrap());
        assert!(!r.matches("xexample.com").unwrap());
        // With parents matching subdomains, a leading dot matches nothing
        // (Postfix 3.7): never relay more than Postfix would.
        let r = DomainList::new("relay_domains", ".relay.example", true).unwrap();
        assert!(!r.matches("x.relay.example").unwrap());
        assert!(!r.matches("relay.example").unwrap());
    }

    #[test]
    fn tables_and_files() {
        let dir = std::env::temp_dir().join(format!("domains-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("list");
        std::fs::write(&f, "# comment\none.example\n two.example three.example\n").unwrap();
        let t = dir.join("table");
        std::fs::write(&t, "vdomain.example  ok\n").unwrap();
        let value = format!("{}, texthash:{}", f.display(), t.display());
        let l = DomainList::new("virtual_mailbox_domains", &value, false).unwrap();
        for d in [
            "one.example",
            "two.example",
            "three.example",
            "vdomain.example",
        ] {
            assert!(l.matches(d).unwrap(), "{d}");
        }
        assert!(!l.matches("four.example").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
