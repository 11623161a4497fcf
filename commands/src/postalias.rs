//! postalias(1) and newaliases(1): aliases(5) tables, with the postmap
//! engine ([`crate::postmap`]) and the aliases source format.
//!
//! An aliases line is `name: value, value, ...` (logical lines: comments,
//! continuation lines). As Postfix does, the line is read as RFC 822
//! tokens — atoms, `"quoted strings"`, `(comments)`, `[domain literals]`
//! and the operators `< > @ , ; : . ! % | ) ]` — and:
//!
//! * the name is the tokens before the first `:`, unquoted (`"a b": x`
//!   has the name `a b`), folded to lower case unless `-f`; a name with an
//!   `@` is refused (`name must be local`);
//! * the value is the tokens after it, written back in a normal form:
//!   `a,b` becomes `a, b`, `user @ example . com` becomes
//!   `user@example.com`, an atom that needs quoting is quoted, comments and
//!   quoted strings stay as written;
//! * a line without a name, a colon or a value is reported
//!   (`need name:value pair`) and skipped.
//!
//! `|command`, `/file` and `:include:/file` values are stored as they
//! are: what they mean is local(8)'s business, as is `owner-` handling.
//! hash and btree tables also get the NIS entries Postfix adds: `@` -> `@`,
//! `YP_LAST_MODIFIED` (the build time) and `YP_MASTER_NAME` (`$myhostname`).
//!
//! newaliases builds every table named in `$alias_database`.

use std::io;

use libmail::cli::getopt;
use libmail::config;
use libmail::config::params::{split_list, Params};
use libmail::table::indexed::{OnDuplicate, TableWriter};

use crate::postmap::{self, Parsed, Program};

/// postalias's entry point.
pub fn main(args: Vec<String>) -> i32 {
    postmap::run(Program::Postalias, args)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Unescaped text.
    Atom(String),
    /// Unescaped content.
    Quoted(String),
    /// As written, parentheses included.
    Comment(String),
    /// Unescaped content, without the brackets.
    Literal(String),
    Op(char),
}

impl Tok {
    fn is_word(&self) -> bool {
        !matches!(self, Tok::Op(_))
    }
}

const OPERATORS: &str = "<>@,;:.!%|)]";

fn tokenize(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut it = text.chars().peekable();
    while let Some(&c) = it.peek() {
        if c == ' ' || c == '\t' || c == '\r' || c == '\n' {
            it.next();
        } else if c == '(' {
            let mut s = String::new();
            let mut depth = 0usize;
            while let Some(c) = it.next() {
                s.push(c);
                match c {
                    '\\' => {
                        if let Some(n) = it.next() {
                            s.push(n);
                        }
                    }
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            out.push(Tok::Comment(s));
        } else if c == '"' || c == '[' {
            it.next();
            let close = if c == '"' { '"' } else { ']' };
            let mut s = String::new();
            while let Some(c) = it.next() {
                if c == '\\' {
                    if let Some(n) = it.next() {
                        s.push(n);
                    }
                } else if c == close {
                    break;
                } else {
                    s.push(c);
                }
            }
            out.push(if close == '"' {
                Tok::Quoted(s)
            } else {
                Tok::Literal(s)
            });
        } else if OPERATORS.contains(c) {
            it.next();
            out.push(Tok::Op(c));
        } else {
            let mut s = String::new();
            while let Some(&c) = it.peek() {
                if c == '\\' {
                    it.next();
                    if let Some(n) = it.next() {
                        s.push(n);
                    }
                } else if c == ' '
                    || c == '\t'
                    || c == '\r'
                    || c == '\n'
                    || c == '('
                    || c == '"'
                    || c == '['
                    || OPERATORS.contains(c)
                {
                    break;
                } else {
                    s.push(c);
                    it.next();
                }
            }
            out.push(Tok::Atom(s));
        }
    }
    out
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Write tokens back: `external` quotes what needs quoting (the value);
/// otherwise quoted strings are unquoted (the name).
fn join(toks: &[Tok], external: bool) -> String {
    let mut out = String::new();
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Atom(s) => {
                let special = |c: char| "()<>@,;:\\\".[]!%|".contains(c) || c == ' ' || c == '\t';
                if external && s.chars().any(special) {
                    quote(s, &mut out);
                } else {
                    out.push_str(s);
                }
            }
            Tok::Quoted(s) if external => quote(s, &mut out),
            Tok::Quoted(s) => out.push_str(s),
            Tok::Comment(s) => out.push_str(s),
            Tok::Literal(s) => {
                out.push('[');
                out.push_str(s);
                out.push(']');
            }
            Tok::Op(c) => out.push(*c),
        }
        if *t == Tok::Op(',') {
            out.push(' ');
            continue;
        }
        if let Some(n) = toks.get(i + 1) {
            if *n == Tok::Op('<') || (t.is_word() && n.is_word()) {
                out.push(' ');
            }
        }
    }
    out
}

/// Split one logical aliases line into name and normalised value, or say
/// why it is skipped.
pub fn parse_alias_line(text: &str) -> Parsed {
    let toks = tokenize(text);
    let Some(colon) = toks.iter().position(|t| *t == Tok::Op(':')) else {
        return Parsed::Skip("need name:value pair".into());
    };
    let (name, value) = (&toks[..colon], &toks[colon + 1..]);
    if name.is_empty() || value.is_empty() {
        return Parsed::Skip("need name:value pair".into());
    }
    if name.contains(&Tok::Op('@')) {
        return Parsed::Skip("name must be local".into());
    }
    Parsed::Entry(join(name, false), join(value, true))
}

/// The NIS entries Postfix adds to hash and btree alias tables.
pub fn add_nis_entries(w: &mut dyn TableWriter, hostname: &str) -> io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    w.add(b"@", b"@", OnDuplicate::KeepFirst)?;
    w.add(
        b"YP_LAST_MODIFIED",
        format!("{now:010}").as_bytes(),
        OnDuplicate::Replace,
    )?;
    w.add(b"YP_MASTER_NAME", hostname.as_bytes(), OnDuplicate::Replace)?;
    Ok(())
}

const NEWALIASES_USAGE: &str = "usage: newaliases [-C config_dir] [-v]
Rebuild every table in $alias_database (postalias on each). See newaliases(1).";

/// newaliases(1) (= `sendmail -bi`): postalias on every table in
/// `$alias_database`. Sendmail's `-C dir` names the configuration
/// directory (a `main.cf` path works too); other sendmail options are
/// ignored.
pub fn newaliases(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{NEWALIASES_USAGE}");
        return 0;
    }
    let opts = match getopt(&args, "C:vB:F:N:O:R:V:X:o:") {
        Ok(o) => o,
        Err(e) => {
            eprintln!("newaliases: {e}\n{NEWALIASES_USAGE}");
            return 1;
        }
    };
    let dir = opts.arg('C').map(|c| {
        let p = std::path::Path::new(c);
        if p.is_file() {
            p.parent()
                .map_or(".".into(), |d| d.to_string_lossy().into_owned())
        } else {
            c.to_string()
        }
    });
    let explicit = dir.or_else(|| std::env::var("MAIL_CONFIG").ok().filter(|s| !s.is_empty()));
    let config_dir = config::config_directory(explicit.as_deref());
    // Only errors stop newaliases; main.cf warnings (an overridden entry)
    // do not.
    let params = match Params::load(&config_dir) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("newaliases: fatal: {}", d.located());
            return 1;
        }
    };
    let tables = match params.value("alias_database") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("newaliases: fatal: alias_database: {e:?}");
            return 1;
        }
    };
    let tables: Vec<String> = split_list(&tables).iter().map(|s| s.to_string()).collect();
    if tables.is_empty() {
        return 0;
    }
    let mut pa_args = vec!["-c".to_string(), config_dir];
    if opts.has('v') {
        pa_args.push("-v".into());
    }
    pa_args.extend(tables);
    postmap::run(Program::Postalias, pa_args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(rhs: &str) -> String {
        match parse_alias_line(&format!("x: {rhs}")) {
            Parsed::Entry(_, v) => v,
            Parsed::Skip(w) => panic!("{rhs}: {w}"),
        }
    }

    fn name(line: &str) -> String {
        match parse_alias_line(line) {
            Parsed::Entry(k, _) => k,
            Parsed::Skip(w) => panic!("{line}: {w}"),
        }
    }

    fn skip(line: &str) -> String {
        match parse_alias_line(line) {
            Parsed::Skip(w) => w,
            Parsed::Entry(k, v) => panic!("{line}: {k} {v}"),
        }
    }

    #[test]
    fn values_are_normalised_as_postalias_does() {
        // Each pair observed with Postfix 3.7.11's postalias -s.
        let cases = [
            ("x  y   z", "x y z"),
            ("x , y ,z,,w", "x, y, z, , w"),
            ("\"quoted  str\" tail", "\"quoted  str\" tail"),
            ("Name <user @ example . com>", "Name <user@example.com>"),
            (
                "user(comment  here)x , (c2) y",
                "user (comment  here) x, (c2) y",
            ),
            ("[1.2.3.4]  x[ a b ]", "[1.2.3.4] x [ a b ]"),
            ("|\"/usr/bin/foo bar\" ; x", "|\"/usr/bin/foo bar\";x"),
            ("x\\y \"a\\\"b\" ", "xy \"a\\\"b\""),
            ("x:y; z", "x:y;z"),
            ("\"unterminated", "\"unterminated\""),
            ("(unterminated", "(unterminated"),
            ("a <b", "a <b"),
            ("a > b", "a>b"),
            (":include: /path/x", ":include:/path/x"),
            ("| /bin/cmd arg", "|/bin/cmd arg"),
            ("x\"y\"z", "x \"y\" z"),
            ("a,b,", "a, b, "),
            ("x | y", "x|y"),
            ("x ! y % z", "x!y%z"),
            ("x $ y & z * w", "x $ y & z * w"),
            ("x <y> z", "x <y>z"),
            ("<a> <b>", "<a> <b>"),
            ("x\\ y", "\"x y\""),
            ("Name<a@b>,Other<c@d>", "Name <a@b>, Other <c@d>"),
            ("a (b (c) d) e", "a (b (c) d) e"),
            ("x\\:y", "\"x:y\""),
            ("x\\\\y", "\"x\\\\y\""),
            ("(a\\)b) c", "(a\\)b) c"),
            ("[unterm", "[unterm]"),
            ("x@<a>", "x@ <a>"),
            ("x\\.y", "\"x.y\""),
            ("x\\ty", "xty"),
            ("[a\\]b]", "[a]b]"),
            ("x#y", "x#y"),
            ("<a>\"q\"", "<a>\"q\""),
            ("a>(c)", "a>(c)"),
            ("admin,   other@example.com", "admin, other@example.com"),
            ("owner-list: root", "owner-list:root"),
        ];
        for (rhs, want) in cases {
            assert_eq!(value(rhs), want, "{rhs}");
        }
    }

    #[test]
    fn names_and_refusals() {
        assert_eq!(name("k1  k2: v1"), "k1 k2");
        assert_eq!(name("\"K3 K4\": v2"), "K3 K4");
        assert_eq!(name("\"k7@x\": v4"), "k7@x");
        assert_eq!(name("a:b: c"), "a");
        assert_eq!(name("(cmt) k9: v9"), "(cmt) k9");
        assert_eq!(name("\"q\"k11: v11"), "q k11");
        assert_eq!(name("k21\\: x: y"), "k21: x");
        assert_eq!(skip("k8@: v5"), "name must be local");
        assert_eq!(skip("@x: y"), "name must be local");
        assert_eq!(skip("bad line"), "need name:value pair");
        assert_eq!(skip("e1:"), "need name:value pair");
        assert_eq!(skip("e2:   "), "need name:value pair");
        assert_eq!(skip(": novalue"), "need name:value pair");
    }
}
