//! `$name` expansion, with Postfix's conditional and relational forms.
//!
//! The forms understood, as postconf(5) documents them:
//!
//! | form | result |
//! |---|---|
//! | `$name`, `${name}`, `$(name)` | the value of `name`, itself expanded |
//! | `${name?value}`, `${name?{value}}` | `value` if `$name` is not empty |
//! | `${name:value}`, `${name:{value}}` | `value` if `$name` is empty |
//! | `${name?{v1}:{v2}}` | `v1` if `$name` is not empty, else `v2` |
//! | `${{a} OP {b} ? {x} : {y}}` | `x` if the comparison holds, else `y` |
//! | `$$` | a literal `$` |
//!
//! `OP` is one of `==`, `!=`, `<`, `<=`, `>`, `>=`: numeric when both sides
//! are all digits, byte-wise otherwise; with the suffix `level` (e.g.
//! `<level`) both sides are compared as release levels (`3.6` < `3.10`).
//!
//! Expansion is lazy: nothing is expanded until a program asks for a value,
//! and a value always sees the final definition of every name it uses. An
//! undefined name expands to nothing and is reported once. A name that
//! (directly or not) refers to itself is an error naming the chain; the
//! nesting is also capped at [`MAX_NESTING`] like Postfix's.

/// Deepest macro nesting before expansion gives up (Postfix's limit).
pub const MAX_NESTING: usize = 100;
/// Largest expansion result (bytes): a guard against exponential growth
/// (`a = $b$b`, `b = $c$c`, ...).
pub const MAX_RESULT: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// `name` refers back to itself; `chain` is the path that led there,
    /// ending with the repeated name.
    Loop { chain: Vec<String> },
    /// Nesting deeper than [`MAX_NESTING`]; Postfix's wording names the
    /// parameter at which it stopped.
    TooDeep { name: String },
    /// A malformed `${...}` form.
    Syntax { message: String },
    /// The result grew beyond [`MAX_RESULT`].
    TooLong,
}

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpandError::Loop { chain } => {
                write!(f, "expansion loop: ${}", chain.join(" -> $"))
            }
            ExpandError::TooDeep { name } => {
                write!(f, "unreasonable macro call nesting: \"{name}\"")
            }
            ExpandError::Syntax { message } => write!(f, "{message}"),
            ExpandError::TooLong => write!(f, "expansion result longer than {MAX_RESULT} bytes"),
        }
    }
}

/// Where names get their (unexpanded) values. `None` = undefined.
pub trait Lookup {
    fn raw(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn raw(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The state of one expansion: undefined names met, and the stack of names
/// being expanded (for loop reports).
#[derive(Debug, Default)]
pub struct Expansion {
    pub undefined: Vec<String>,
    stack: Vec<String>,
}

impl Expansion {
    pub fn new() -> Self {
        Self::default()
    }

    /// Expand `text` completely.
    pub fn expand(&mut self, text: &str, lookup: &dyn Lookup) -> Result<String, ExpandError> {
        let mut out = String::with_capacity(text.len());
        self.expand_into(text, lookup, &mut out)?;
        Ok(out)
    }

    /// The fully expanded value of parameter `name` (empty when undefined).
    pub fn value_of(&mut self, name: &str, lookup: &dyn Lookup) -> Result<String, ExpandError> {
        let mut out = String::new();
        self.expand_name(name, lookup, &mut out)?;
        Ok(out)
    }

    fn expand_name(
        &mut self,
        name: &str,
        lookup: &dyn Lookup,
        out: &mut String,
    ) -> Result<(), ExpandError> {
        if let Some(pos) = self.stack.iter().position(|n| n == name) {
            let mut chain: Vec<String> = self.stack[pos..].to_vec();
            chain.push(name.to_string());
            return Err(ExpandError::Loop { chain });
        }
        if self.stack.len() >= MAX_NESTING {
            return Err(ExpandError::TooDeep {
                name: name.to_string(),
            });
        }
        match lookup.raw(name) {
            Some(raw) => {
                self.stack.push(name.to_string());
                let r = self.expand_into(&raw, lookup, out);
                self.stack.pop();
                r
            }
            None => {
                if !self.undefined.iter().any(|n| n == name) {
                    self.undefined.push(name.to_string());
                }
                Ok(())
            }
        }
    }

    fn expand_into(
        &mut self,
        text: &str,
        lookup: &dyn Lookup,
        out: &mut String,
    ) -> Result<(), ExpandError> {
        let b = text.as_bytes();
        let mut i = 0;
        let mut lit_start = 0;
        while i < b.len() {
            if b[i] != b'$' {
                i += 1;
                continue;
            }
            out.push_str(&text[lit_start..i]);
            i += 1;
            match b.get(i) {
                Some(b'$') => {
                    out.push('$');
                    i += 1;
                }
                Some(&open @ (b'{' | b'(')) => {
                    let close = if open == b'{' { b'}' } else { b')' };
                    let end = matching(b, i, open, close).ok_or_else(|| ExpandError::Syntax {
                        message: format!("truncated macro reference: \"{text}\""),
                    })?;
                    let inner = &text[i + 1..end];
                    self.expand_braced(inner, lookup, out)?;
                    i = end + 1;
                }
                Some(c) if is_name_byte(*c) => {
                    let start = i;
                    while i < b.len() && is_name_byte(b[i]) {
                        i += 1;
                    }
                    let name = &text[start..i];
                    self.expand_name(name, lookup, out)?;
                }
                _ => {
                    return Err(ExpandError::Syntax {
                        message: format!("empty macro name: \"{text}\""),
                    });
                }
            }
            lit_start = i;
            if out.len() > MAX_RESULT {
                return Err(ExpandError::TooLong);
            }
        }
        out.push_str(&text[lit_start..]);
        if out.len() > MAX_RESULT {
            return Err(ExpandError::TooLong);
        }
        Ok(())
    }

    /// The text between `${` and its `}`.
    fn expand_braced(
        &mut self,
        inner: &str,
        lookup: &dyn Lookup,
        out: &mut String,
    ) -> Result<(), ExpandError> {
        let trimmed = inner.trim_start();
        if trimmed.starts_with('{') {
            return self.expand_relational(trimmed, lookup, out);
        }
        // Postfix allows blanks around the name: `${ name }`, `${name ?x}`.
        let inner = trimmed;
        let b = inner.as_bytes();
        let mut i = 0;
        while i < b.len() && is_name_byte(b[i]) {
            i += 1;
        }
        let name = &inner[..i];
        if name.is_empty() {
            return Err(ExpandError::Syntax {
                message: format!("empty macro name: \"${{{inner}}}\""),
            });
        }
        let rest = inner[i..].trim_start();
        if rest.is_empty() {
            return self.expand_name(name, lookup, out);
        }
        let op = rest.as_bytes()[0];
        if op != b'?' && op != b':' {
            return Err(ExpandError::Syntax {
                message: format!(
                    "unexpected text \"{rest}\" after attribute name in \"${{{inner}}}\""
                ),
            });
        }
        let non_empty = !self.value_of(name, lookup)?.is_empty();
        let spec = &rest[1..];
        // `?{v1}:{v2}` and `?{v1}` and `?plain text`.
        let (then_text, else_text) = split_alternatives(spec);
        if op == b':' && else_text.is_some() {
            return Err(ExpandError::Syntax {
                message: format!("unexpected input after \"${{{name}:{then_text}}}\""),
            });
        }
        let chosen = match (op, non_empty) {
            (b'?', true) => Some(then_text),
            (b'?', false) => else_text,
            (_, false) => Some(then_text),
            _ => None,
        };
        if let Some(t) = chosen {
            self.expand_into(t, lookup, out)?;
        }
        Ok(())
    }

    /// `{a} OP {b} ? {x} : {y}` (the text inside `${` ... `}`).
    fn expand_relational(
        &mut self,
        s: &str,
        lookup: &dyn Lookup,
        out: &mut String,
    ) -> Result<(), ExpandError> {
        let bad = || ExpandError::Syntax {
            message: format!("malformed relational expression \"${{{s}}}\""),
        };
        let (left, rest) = take_group(s).ok_or_else(bad)?;
        let rest = rest.trim_start();
        let op_len = rest
            .bytes()
            .take_while(|c| matches!(c, b'=' | b'!' | b'<' | b'>'))
            .count();
        let op = &rest[..op_len];
        let mut rest = &rest[op_len..];
        let level = rest.starts_with("level");
        if level {
            rest = &rest["level".len()..];
        }
        let (right, rest) = take_group(rest.trim_start()).ok_or_else(bad)?;
        let rest = rest.trim_start();
        let op_known = matches!(op, "==" | "!=" | "<" | "<=" | ">" | ">=");
        if !op_known {
            return Err(ExpandError::Syntax {
                message: format!("unknown operator \"{op}\" in \"${{{s}}}\""),
            });
        }
        if rest.is_empty() {
            // `${{a} == {b}}` alone yields "true" or nothing.
            let truth = self.compare(left, op, level, right, lookup)?;
            if truth {
                out.push_str("true");
            }
            return Ok(());
        }
        let rest = rest.strip_prefix('?').ok_or_else(bad)?;
        let (then_text, rest) = take_group(rest.trim_start()).ok_or_else(bad)?;
        let rest = rest.trim_start();
        let else_text = if let Some(r) = rest.strip_prefix(':') {
            let (e, r) = take_group(r.trim_start()).ok_or_else(bad)?;
            if !r.trim().is_empty() {
                return Err(bad());
            }
            Some(e)
        } else if rest.is_empty() {
            None
        } else {
            return Err(bad());
        };
        let truth = self.compare(left, op, level, right, lookup)?;
        let chosen = if truth { Some(then_text) } else { else_text };
        if let Some(t) = chosen {
            self.expand_into(t, lookup, out)?;
        }
        Ok(())
    }
}

impl Expansion {
    /// Expand both sides and compare them with `op` (already validated).
    fn compare(
        &mut self,
        left: &str,
        op: &str,
        level: bool,
        right: &str,
        lookup: &dyn Lookup,
    ) -> Result<bool, ExpandError> {
        let l = self.expand(left, lookup)?;
        let r = self.expand(right, lookup)?;
        let (l, r) = (l.trim(), r.trim());
        let ord = if level {
            compare_levels(l, r)
        } else if !l.is_empty()
            && !r.is_empty()
            && l.bytes().all(|c| c.is_ascii_digit())
            && r.bytes().all(|c| c.is_ascii_digit())
        {
            let lt = l.trim_start_matches('0');
            let rt = r.trim_start_matches('0');
            lt.len().cmp(&rt.len()).then_with(|| lt.cmp(rt))
        } else {
            l.cmp(r)
        };
        use std::cmp::Ordering::*;
        Ok(match op {
            "==" => ord == Equal,
            "!=" => ord != Equal,
            "<" => ord == Less,
            "<=" => ord != Greater,
            ">" => ord == Greater,
            _ => ord != Less,
        })
    }
}

/// Release levels compare field by field as numbers: 3.6 < 3.10 < 3.10.1.
pub fn compare_levels(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| -> Vec<u64> {
        s.split('.')
            .map(|p| p.trim().parse::<u64>().unwrap_or(0))
            .collect()
    };
    let (x, y) = (parse(a), parse(b));
    let n = x.len().max(y.len());
    for k in 0..n {
        let (p, q) = (
            x.get(k).copied().unwrap_or(0),
            y.get(k).copied().unwrap_or(0),
        );
        if p != q {
            return p.cmp(&q);
        }
    }
    std::cmp::Ordering::Equal
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Index of the bracket closing the one at `open_at`, counting nesting.
fn matching(b: &[u8], open_at: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0usize;
    for (k, &c) in b.iter().enumerate().skip(open_at) {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// `{text}rest` → (text, rest).
fn take_group(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with('{') {
        return None;
    }
    let end = matching(s.as_bytes(), 0, b'{', b'}')?;
    Some((&s[1..end], &s[end + 1..]))
}

/// The text after `?` or `:` in `${name?...}`: either `{v1}:{v2}`, `{v1}`,
/// or plain text.
fn split_alternatives(spec: &str) -> (&str, Option<&str>) {
    let t = spec.trim_start();
    if let Some((first, rest)) = take_group(t) {
        let rest = rest.trim();
        if rest.is_empty() {
            return (first, None);
        }
        if let Some(r) = rest.strip_prefix(':') {
            let r = r.trim();
            if let Some((second, tail)) = take_group(r) {
                if tail.trim().is_empty() {
                    return (first, Some(second));
                }
            }
            return (first, Some(r));
        }
    }
    (spec, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(defs: &[(&str, &str)], text: &str) -> Result<(String, Vec<String>), ExpandError> {
        let map: HashMap<String, String> = defs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |n: &str| map.get(n).cloned();
        let mut e = Expansion::new();
        let s = e.expand(text, &lookup)?;
        Ok((s, e.undefined))
    }

    fn ok(defs: &[(&str, &str)], text: &str) -> String {
        run(defs, text).unwrap().0
    }

    #[test]
    fn plain_forms() {
        let d = [("a", "A"), ("b", "[$a]")];
        assert_eq!(ok(&d, "$a ${a} $(a) $b"), "A A A [A]");
        assert_eq!(ok(&d, "x$$y"), "x$y");
        assert_eq!(ok(&d, "${ a } $( a ) ${a }"), "A A A");
        assert_eq!(ok(&d, "cost $5"), "cost ");
        assert!(matches!(run(&d, "a $"), Err(ExpandError::Syntax { .. })));
        assert!(matches!(run(&d, "a $-x"), Err(ExpandError::Syntax { .. })));
        assert!(matches!(run(&d, "${}"), Err(ExpandError::Syntax { .. })));
    }

    #[test]
    fn conditionals() {
        let d = [("set", "v"), ("empty", "")];
        assert_eq!(ok(&d, "${set?yes}"), "yes");
        assert_eq!(ok(&d, "${empty?yes}"), "");
        assert_eq!(ok(&d, "${nope?yes}"), "");
        assert_eq!(ok(&d, "${set:dflt}"), "");
        assert_eq!(ok(&d, "${empty:dflt}"), "dflt");
        assert_eq!(ok(&d, "${set?{a b}:{c d}}"), "a b");
        assert_eq!(ok(&d, "${empty?{a b}:{c d}}"), "c d");
        assert_eq!(ok(&d, "${set?{$set/x}}"), "v/x");
        assert_eq!(ok(&d, "${set?{x}:y}"), "x");
        assert_eq!(ok(&d, "${empty?{x}:y}"), "y");
        assert_eq!(ok(&d, "${set?b:c}"), "b:c");
        assert!(matches!(
            run(&d, "${set:{x}:{y}}"),
            Err(ExpandError::Syntax { .. })
        ));
    }

    #[test]
    fn relational() {
        let d = [("lvl", "3.6"), ("n", "10")];
        assert_eq!(ok(&d, "${{$lvl} <level {2} ? {subnet} : {host}}"), "host");
        assert_eq!(ok(&d, "${{$lvl} <level {3.10} ? {old} : {new}}"), "old");
        assert_eq!(ok(&d, "${{$n} > {9} ? {big} : {small}}"), "big");
        assert_eq!(ok(&d, "${{$n} > {9x} ? {big} : {small}}"), "small");
        assert_eq!(ok(&d, "${{a} == {a} ? {same}}"), "same");
        assert_eq!(ok(&d, "${{a} != {a} ? {diff}}"), "");
        assert_eq!(ok(&d, "${{a} == {a}}"), "true");
        assert_eq!(ok(&d, "${{1} < {02} ? {y} : {n}}"), "y");
        assert!(matches!(
            run(&d, "${{a} === {a} ? {y}}"),
            Err(ExpandError::Syntax { .. })
        ));
    }

    #[test]
    fn undefined_names_are_empty_and_reported() {
        let (s, undef) = run(&[], "<$x${y}>").unwrap();
        assert_eq!(s, "<>");
        assert_eq!(undef, vec!["x".to_string(), "y".to_string()]);
    }

    #[test]
    fn loops_are_detected_with_their_chain() {
        let d = [("a", "$b"), ("b", "x $c"), ("c", "$a")];
        match run(&d, "$a") {
            Err(ExpandError::Loop { chain }) => assert_eq!(chain, vec!["a", "b", "c", "a"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_used_twice_is_not_a_loop() {
        let d = [("a", "$b $b"), ("b", "x")];
        assert_eq!(ok(&d, "$a"), "x x");
    }

    #[test]
    fn exponential_growth_is_bounded() {
        let mut defs = Vec::new();
        let names: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        for i in 0..39 {
            defs.push((
                names[i].clone(),
                format!("${}${}", names[i + 1], names[i + 1]),
            ));
        }
        defs.push((names[39].clone(), "xxxxxxxx".into()));
        let d: Vec<(&str, &str)> = defs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(run(&d, "$p0"), Err(ExpandError::TooLong));
    }

    #[test]
    fn malformed_forms_are_errors() {
        assert!(matches!(run(&[], "${a"), Err(ExpandError::Syntax { .. })));
        assert!(matches!(
            run(&[], "${{a} ?? {b}}"),
            Err(ExpandError::Syntax { .. })
        ));
    }

    #[test]
    fn level_comparison() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_levels("3.6", "3.10"), Less);
        assert_eq!(compare_levels("2", "2.0"), Equal);
        assert_eq!(compare_levels("3.7.1", "3.7"), Greater);
    }
}
