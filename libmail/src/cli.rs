//! Command-line options the way Postfix's tools read them (`getopt(3)` as
//! glibc does it): single-letter flags that may be bundled (`-nf`, `-M#`),
//! options that take the rest of the word or the next word as argument
//! (`-cDIR`, `-c DIR`), options and operands in any order, `--` ending the
//! options.
//!
//! Written here rather than taken from clap because the Postfix tools'
//! flags are not clap-shaped: `-#` and `-X` are flags, bundles like `-M#`
//! and `-PX` change a mode, and scripts rely on exactly this parsing.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opt {
    Flag(char),
    WithArg(char, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub opts: Vec<Opt>,
    pub operands: Vec<String>,
}

impl Parsed {
    pub fn has(&self, c: char) -> bool {
        self.opts.iter().any(|o| {
            matches!(o, Opt::Flag(f) if *f == c) || matches!(o, Opt::WithArg(f, _) if *f == c)
        })
    }

    /// The last argument given to option `c`.
    pub fn arg(&self, c: char) -> Option<&str> {
        self.opts.iter().rev().find_map(|o| match o {
            Opt::WithArg(f, a) if *f == c => Some(a.as_str()),
            _ => None,
        })
    }

    /// Every argument given to option `c`, in order.
    pub fn args(&self, c: char) -> Vec<&str> {
        self.opts
            .iter()
            .filter_map(|o| match o {
                Opt::WithArg(f, a) if *f == c => Some(a.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Parse `args` (without the program name) against `spec`, getopt style:
/// each character is an option, followed by `:` when it takes an argument.
/// Errors are worded like glibc's (`invalid option -- 'z'`).
pub fn getopt(args: &[String], spec: &str) -> Result<Parsed, String> {
    let takes_arg = |c: char| -> Option<bool> {
        let mut it = spec.chars().peekable();
        while let Some(s) = it.next() {
            let has_arg = it.peek() == Some(&':');
            if has_arg {
                it.next();
            }
            if s == c {
                return Some(has_arg);
            }
        }
        None
    };
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            out.operands.extend(args[i..].iter().cloned());
            break;
        }
        if a.len() < 2 || !a.starts_with('-') {
            out.operands.push(a.clone());
            continue;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            k += 1;
            match takes_arg(c) {
                None => return Err(format!("invalid option -- '{c}'")),
                Some(false) => out.opts.push(Opt::Flag(c)),
                Some(true) => {
                    let rest: String = chars[k..].iter().collect();
                    let value = if !rest.is_empty() {
                        rest
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(format!("option requires an argument -- '{c}'"));
                    };
                    out.opts.push(Opt::WithArg(c, value));
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn bundles_args_and_permutation() {
        let p = getopt(
            &v(&[
                "-nx",
                "relayhost",
                "-c",
                "/etc/x",
                "-M#",
                "-o",
                "a=b",
                "-obb=c",
            ]),
            "c:nxM#o:",
        )
        .unwrap();
        assert_eq!(
            p.opts,
            vec![
                Opt::Flag('n'),
                Opt::Flag('x'),
                Opt::WithArg('c', "/etc/x".into()),
                Opt::Flag('M'),
                Opt::Flag('#'),
                Opt::WithArg('o', "a=b".into()),
                Opt::WithArg('o', "bb=c".into()),
            ]
        );
        assert_eq!(p.operands, v(&["relayhost"]));
        assert_eq!(p.args('o'), vec!["a=b", "bb=c"]);
        assert!(p.has('#'));
    }

    #[test]
    fn errors() {
        assert_eq!(
            getopt(&v(&["-z"]), "n").unwrap_err(),
            "invalid option -- 'z'"
        );
        assert_eq!(
            getopt(&v(&["-c"]), "c:").unwrap_err(),
            "option requires an argument -- 'c'"
        );
    }

    #[test]
    fn double_dash_and_lone_dash() {
        let p = getopt(&v(&["-n", "--", "-x", "-"]), "nx").unwrap();
        assert_eq!(p.operands, v(&["-x", "-"]));
        let p = getopt(&v(&["-"]), "n").unwrap();
        assert_eq!(p.operands, v(&["-"]));
    }
}
