//! In-place edits of main.cf, as `postconf -e`, `-X` and `-#` make them.
//!
//! The file is treated as physical lines. Each logical entry (`name =
//! value` and its continuation lines) is found; comment and blank lines
//! between continuation lines are not part of it and are kept where they
//! are. Edits:
//!
//! * set (`-e name=value`): every entry for `name` becomes one line
//!   `name = value` (Postfix warns about several entries and rewrites them
//!   all); a name not present is appended at the end;
//! * delete (`-X name`): every entry for `name` goes;
//! * comment out (`-# name`): each physical line of every entry for `name`
//!   gets a leading `#`.
//!
//! The new text is written to `main.cf.tmp` in the same directory, synced,
//! and renamed over main.cf, so a reader sees the old file or the new one,
//! never a mix, and a crash leaves one of the two.

use std::fs;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Set { name: String, value: String },
    Delete { name: String },
    CommentOut { name: String },
}

impl Edit {
    fn name(&self) -> &str {
        match self {
            Edit::Set { name, .. } | Edit::Delete { name } | Edit::CommentOut { name } => name,
        }
    }
}

/// One logical entry: its name and the physical lines (indices) it spans.
struct Span {
    name: String,
    lines: Vec<usize>,
}

fn spans(lines: &[&str]) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let mut open = false;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if l.starts_with([' ', '\t']) {
            if open {
                if let Some(s) = out.last_mut() {
                    s.lines.push(i);
                }
            }
            continue;
        }
        let name_end = t
            .find(|c: char| c == '=' || c.is_ascii_whitespace())
            .unwrap_or(t.len());
        out.push(Span {
            name: t[..name_end].to_string(),
            lines: vec![i],
        });
        open = true;
    }
    out
}

/// Apply `edits` to main.cf text. Returns the new text and the names that
/// had more than one entry (Postfix warns `multiple entries for "name"`).
pub fn apply(text: &str, edits: &[Edit]) -> (String, Vec<String>) {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let bare: Vec<&str> = lines
        .iter()
        .map(|l| l.trim_end_matches('\n').trim_end_matches('\r'))
        .collect();
    let spans = spans(&bare);
    // Per physical line: None = keep, Some(replacement text without newline;
    // empty Vec = drop).
    let mut replace: Vec<Option<Vec<String>>> = vec![None; lines.len()];
    let mut multiple: Vec<String> = Vec::new();
    let mut appended: Vec<String> = Vec::new();

    for edit in edits {
        let matching: Vec<&Span> = spans.iter().filter(|s| s.name == edit.name()).collect();
        if matching.len() > 1 && !multiple.iter().any(|n| n == edit.name()) {
            multiple.push(edit.name().to_string());
        }
        if matching.is_empty() {
            if let Edit::Set { name, value } = edit {
                appended.retain(|l| !l.starts_with(&format!("{name} = ")));
                appended.push(format!("{name} = {value}"));
            }
            continue;
        }
        for span in matching {
            for (k, &i) in span.lines.iter().enumerate() {
                replace[i] = Some(match edit {
                    Edit::Set { name, value } if k == 0 => vec![format!("{name} = {value}")],
                    Edit::Set { .. } | Edit::Delete { .. } => vec![],
                    Edit::CommentOut { .. } => vec![format!("#{}", bare[i])],
                });
            }
        }
    }

    let mut out = String::with_capacity(text.len() + 64);
    for (i, l) in lines.iter().enumerate() {
        match &replace[i] {
            None => out.push_str(l),
            Some(new) => {
                for n in new {
                    out.push_str(n);
                    out.push('\n');
                }
            }
        }
    }
    if !appended.is_empty() {
        // Postfix appends right after the last byte even when the file does
        // not end in a newline, gluing the new entry onto the last line;
        // Facteur adds the missing newline instead.
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for a in appended {
            out.push_str(&a);
            out.push('\n');
        }
    }
    (out, multiple)
}

/// Replace `path` with `text` atomically: write `path.tmp`, fsync, keep the
/// old file's permissions, rename, fsync the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let mode = fs::metadata(path).ok().map(|m| m.permissions());
    let result = (|| {
        let mut f = fs::File::create(tmp)?;
        f.write_all(text.as_bytes())?;
        if let Some(perm) = &mode {
            f.set_permissions(perm.clone())?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIG: &str = "# top\na = 1\n# mid\nrelayhost = x\n  y\n# in\n  z\nmyorigin = o\nrelayhost = dup\n# end\n";

    fn set(n: &str, v: &str) -> Edit {
        Edit::Set {
            name: n.into(),
            value: v.into(),
        }
    }

    #[test]
    fn set_replaces_every_entry_and_keeps_comments() {
        let (out, multi) = apply(
            ORIG,
            &[
                set("relayhost", "[new]:587"),
                set("myorigin", "p"),
                set("mydomain", "d e"),
            ],
        );
        assert_eq!(
            out,
            "# top\na = 1\n# mid\nrelayhost = [new]:587\n# in\nmyorigin = p\nrelayhost = [new]:587\n# end\nmydomain = d e\n"
        );
        assert_eq!(multi, vec!["relayhost".to_string()]);
    }

    #[test]
    fn delete_and_comment_out() {
        let (out, _) = apply(
            ORIG,
            &[Edit::Delete {
                name: "relayhost".into(),
            }],
        );
        assert_eq!(out, "# top\na = 1\n# mid\n# in\nmyorigin = o\n# end\n");
        let (out, _) = apply(
            ORIG,
            &[Edit::CommentOut {
                name: "relayhost".into(),
            }],
        );
        assert_eq!(
            out,
            "# top\na = 1\n# mid\n#relayhost = x\n#  y\n# in\n#  z\nmyorigin = o\n#relayhost = dup\n# end\n"
        );
    }

    #[test]
    fn append_to_file_without_final_newline() {
        let (out, _) = apply("a = 1", &[set("b", "2")]);
        assert_eq!(out, "a = 1\nb = 2\n");
        let (out, _) = apply("", &[set("b", "2"), set("b", "3")]);
        assert_eq!(out, "b = 3\n");
    }

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("facteur-edit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("main.cf");
        fs::write(&p, "a = 1\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&p, "a = 2\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "a = 2\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(!dir.join("main.cf.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
