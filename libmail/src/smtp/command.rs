//! SMTP command lines: the verb, and for MAIL and RCPT the address and
//! the ESMTP parameters, parsed strictly enough to be safe and leniently
//! enough for real clients, as Postfix's smtpd is (with
//! `strict_rfc821_envelopes = no`): `MAIL FROM: <a@b>` with a space,
//! `MAIL FROM:a@b` without brackets, `<<a@b>>` and `<a@b>>`, source
//! routes `<@x,@y:a@b>` dropped; [`parse_with`] under `strict` wants the
//! brackets.
//!
//! A parse error is the reply Postfix sends for it (`501 5.5.4 Syntax:
//! MAIL FROM:<address>`, `555 5.5.4 Unsupported option: X`, ...). Every
//! length is bounded by the caller's line limit; addresses are further
//! limited to [`MAX_ADDRESS`] bytes.

use super::reply::Reply;

/// Longest envelope address accepted (RFC 5321 allows 256 octets for a
/// path; Postfix is more generous, but nothing legitimate needs more).
pub const MAX_ADDRESS: usize = 1024;
/// Most ESMTP parameters on one MAIL or RCPT command.
pub const MAX_PARAMS: usize = 16;

/// `BODY=` of MAIL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// The parameters of MAIL FROM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<Body>,
    /// `RET=`: 1 FULL, 2 HDRS (the queue file's DSN_RET values).
    pub ret: u32,
    pub envid: Option<String>,
    /// `AUTH=` as given (xtext decoded), `<>` included.
    pub auth: Option<String>,
    pub smtputf8: bool,
}

/// The parameters of RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// NOTIFY bits: NEVER 1, SUCCESS 2, FAILURE 4, DELAY 8 (0 = not given).
    pub notify: u32,
    /// `ORCPT=type;address`, address xtext-decoded.
    pub orcpt: Option<String>,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail(String, MailParams),
    Rcpt(String, RcptParams),
    Data,
    /// `BDAT size [LAST]`.
    Bdat(u64, bool),
    Rset,
    Noop,
    Vrfy(String),
    Etrn(String),
    Quit,
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth(String, Option<String>),
    /// A verb smtpd does not know (HELP among them, as in Postfix 3.7).
    Unknown(String),
}

fn syntax(what: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Syntax: {what}"))
}

/// Splits off the verb (case-insensitive) and its argument text.
fn verb(line: &str) -> (String, &str) {
    let line = line.trim_start();
    match line.find([' ', '\t']) {
        Some(i) => (line[..i].to_ascii_uppercase(), line[i..].trim()),
        None => (line.to_ascii_uppercase(), ""),
    }
}

/// Parses one command line (without its CRLF), leniently
/// (`strict_rfc821_envelopes = no`).
pub fn parse(line: &str) -> Result<Command, Reply> {
    parse_with(line, false)
}

/// Parses one command line; `strict` (`strict_rfc821_envelopes = yes`):
/// MAIL and RCPT addresses must be in `<>`.
pub fn parse_with(line: &str, strict: bool) -> Result<Command, Reply> {
    let (v, arg) = verb(line);
    Ok(match v.as_str() {
        "HELO" => {
            if arg.is_empty() {
                return Err(Reply::new(501, "", "Syntax: HELO hostname"));
            }
            Command::Helo(arg.to_string())
        }
        "EHLO" => {
            if arg.is_empty() {
                return Err(Reply::new(501, "", "Syntax: EHLO hostname"));
            }
            Command::Ehlo(arg.to_string())
        }
        "MAIL" => {
            let (addr, params) = path_and_params(arg, "FROM:", strict)
                .ok_or_else(|| syntax("MAIL FROM:<address>"))?;
            let addr = addr.map_err(|_| Reply::new(501, "5.1.7", "Bad sender address syntax"))?;
            Command::Mail(addr, mail_params(&params)?)
        }
        "RCPT" => {
            let (addr, params) =
                path_and_params(arg, "TO:", strict).ok_or_else(|| syntax("RCPT TO:<address>"))?;
            let addr =
                addr.map_err(|_| Reply::new(501, "5.1.3", "Bad recipient address syntax"))?;
            if addr.is_empty() {
                return Err(Reply::new(501, "5.1.3", "Bad recipient address syntax"));
            }
            Command::Rcpt(addr, rcpt_params(&params)?)
        }
        "DATA" => {
            if !arg.is_empty() {
                return Err(syntax("DATA"));
            }
            Command::Data
        }
        "BDAT" => {
            let mut w = arg.split_ascii_whitespace();
            let size = w
                .next()
                .filter(|s| s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| syntax("BDAT count [LAST]"))?;
            let last = match w.next() {
                None => false,
                Some(l) if l.eq_ignore_ascii_case("LAST") => true,
                Some(_) => return Err(syntax("BDAT count [LAST]")),
            };
            if w.next().is_some() {
                return Err(syntax("BDAT count [LAST]"));
            }
            Command::Bdat(size, last)
        }
        "RSET" => {
            if !arg.is_empty() {
                return Err(syntax("RSET"));
            }
            Command::Rset
        }
        "NOOP" => Command::Noop,
        "VRFY" => {
            if arg.is_empty() {
                return Err(syntax("VRFY address"));
            }
            Command::Vrfy(arg.to_string())
        }
        "ETRN" => {
            if arg.is_empty() {
                return Err(Reply::new(500, "5.5.4", "Syntax: ETRN domain"));
            }
            Command::Etrn(arg.to_string())
        }
        "QUIT" => Command::Quit,
        "STARTTLS" => {
            if !arg.is_empty() {
                return Err(syntax("STARTTLS"));
            }
            Command::StartTls
        }
        "AUTH" => {
            let mut w = arg.split_ascii_whitespace();
            let mech = w
                .next()
                .ok_or_else(|| syntax("AUTH mechanism"))?
                .to_ascii_uppercase();
            let initial = w.next().map(str::to_string);
            if w.next().is_some() {
                return Err(syntax("AUTH mechanism"));
            }
            Command::Auth(mech, initial)
        }
        _ => Command::Unknown(v),
    })
}

/// `FROM:<addr> params` (or `TO:`): `None` when the keyword is missing;
/// the inner result fails for a malformed address, and under `strict`
/// for one without `<>`. As in Postfix, brackets may be doubled
/// (`<<a@b>>`) and extra closing ones follow (`<a@b>>`), but the path
/// must end at a blank (`<a@b>x` is malformed).
fn path_and_params<'a>(
    arg: &'a str,
    keyword: &str,
    strict: bool,
) -> Option<(Result<String, ()>, Vec<&'a str>)> {
    if arg.len() < keyword.len() || !arg[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    if rest.is_empty() {
        return None;
    }
    let (path, tail) = if rest.starts_with('<') {
        let body = rest.trim_start_matches('<');
        let opened = rest.len() - body.len();
        match closing_bracket(body) {
            Some(end) => {
                let after = &body[end..];
                let tail = after.trim_start_matches('>');
                let closed = after.len() - tail.len();
                if closed < opened || !(tail.is_empty() || tail.starts_with([' ', '\t'])) {
                    (Err(()), "")
                } else {
                    (Ok(&body[..end]), tail)
                }
            }
            None => (Err(()), ""),
        }
    } else if strict {
        (Err(()), "")
    } else {
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        (Ok(&rest[..end]), &rest[end..])
    };
    let params: Vec<&str> = tail.split_ascii_whitespace().collect();
    let addr = path.and_then(clean_path);
    Some((addr, params))
}

/// The index of the `>` that closes a path, skipping quoted parts.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Drops a source route and checks what is left: no control characters,
/// no unbalanced quotes or brackets, bounded length.
fn clean_path(p: &str) -> Result<String, ()> {
    let p = if p.starts_with('@') {
        // <@a,@b:user@domain>: the route ends at the first unquoted ':'.
        match p.find(':') {
            Some(i) => &p[i + 1..],
            None => return Err(()),
        }
    } else {
        p
    };
    if p.len() > MAX_ADDRESS || p.chars().any(|c| c.is_control()) {
        return Err(());
    }
    // Outside quotes: no blanks, no angle brackets; quotes must close.
    let mut quoted = false;
    let mut escaped = false;
    for c in p.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '\t' | '<' | '>' if !quoted => return Err(()),
            _ => {}
        }
    }
    if quoted || escaped {
        return Err(());
    }
    Ok(p.to_string())
}

/// RFC 3461 xtext: `+XX` hex escapes.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                let v = u8::from_str_radix(h, 16).ok()?;
                out.push(v);
                i += 3;
            }
            c if (b'!'..=b'~').contains(&c) && c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3461 xtext encoding: `+`, `=`, controls, space and non-ASCII
/// bytes as `+XX`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn unsupported(p: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Unsupported option: {p}"))
}

fn mail_params(params: &[&str]) -> Result<MailParams, Reply> {
    if params.len() > MAX_PARAMS {
        return Err(Reply::new(501, "5.5.4", "Too many parameters"));
    }
    let mut m = MailParams::default();
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => {
                let n = v
                    .parse::<u64>()
                    .ok()
                    .filter(|_| v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| Reply::new(501, "5.5.4", "Bad message size syntax"))?;
                m.size = Some(n);
            }
            "BODY" => {
                m.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(Reply::new(501, "5.5.4", "Bad BODY keyword syntax")),
                })
            }
            "RET" => {
                if m.ret != 0 {
                    return Err(Reply::new(501, "5.5.4", "Duplicate RET parameter"));
                }
                m.ret = match v.to_ascii_uppercase().as_str() {
                    "FULL" => 1,
                    "HDRS" => 2,
                    _ => return Err(Reply::new(501, "5.5.4", "Bad RET parameter syntax")),
                }
            }
            "ENVID" => {
                if m.envid.is_some() {
                    return Err(Reply::new(501, "5.5.4", "Duplicate ENVID parameter"));
                }
                let d = xtext_decode(v)
                    .filter(|d| !d.is_empty() && d.len() <= 100)
                    .ok_or_else(|| Reply::new(501, "5.5.4", "Bad ENVID parameter syntax"))?;
                m.envid = Some(d);
            }
            "AUTH" => {
                let d = xtext_decode(v)
                    .filter(|d| d.len() <= MAX_ADDRESS)
                    .ok_or_else(|| Reply::new(501, "5.5.4", "Bad AUTH parameter syntax"))?;
                m.auth = Some(d);
            }
            "SMTPUTF8" if v.is_empty() && !p.contains('=') => m.smtputf8 = true,
            _ => return Err(unsupported(p)),
        }
    }
    Ok(m)
}

fn rcpt_params(params: &[&str]) -> Result<RcptParams, Reply> {
    if params.len() > MAX_PARAMS {
        return Err(Reply::new(501, "5.5.4", "Too many parameters"));
    }
    let mut r = RcptParams::default();
    for p in params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "NOTIFY" => {
                if r.notify != 0 {
                    return Err(Reply::new(501, "5.5.4", "Duplicate NOTIFY parameter"));
                }
                let mut bits = 0;
                for w in v.split(',') {
                    bits |= match w.to_ascii_uppercase().as_str() {
                        "NEVER" => 1,
                        "SUCCESS" => 2,
                        "FAILURE" => 4,
                        "DELAY" => 8,
                        _ => {
                            return Err(Reply::new(
                                501,
                                "5.5.4",
                                "Error: Bad NOTIFY parameter syntax",
                            ))
                        }
                    };
                }
                if bits & 1 != 0 && bits != 1 {
                    return Err(Reply::new(
                        501,
                        "5.5.4",
                        "Error: Bad NOTIFY parameter syntax",
                    ));
                }
                r.notify = bits;
            }
            "ORCPT" => {
                if r.orcpt.is_some() {
                    return Err(Reply::new(501, "5.5.4", "Duplicate ORCPT parameter"));
                }
                let (ty, addr) = v
                    .split_once(';')
                    .filter(|(t, _)| {
                        !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
                    .ok_or_else(|| Reply::new(501, "5.5.4", "Error: Bad ORCPT parameter syntax"))?;
                let a = xtext_decode(addr)
                    .filter(|a| !a.is_empty() && a.len() <= MAX_ADDRESS)
                    .ok_or_else(|| Reply::new(501, "5.5.4", "Error: Bad ORCPT parameter syntax"))?;
                r.orcpt = Some(format!("{ty};{a}"));
            }
            _ => return Err(unsupported(p)),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> String {
        parse(line).unwrap_err().log_form()
    }

    /// The address of a MAIL command, or its error reply.
    fn sender(line: &str, strict: bool) -> Result<String, String> {
        match parse_with(line, strict) {
            Ok(Command::Mail(a, _)) => Ok(a),
            Ok(c) => panic!("not MAIL: {c:?}"),
            Err(r) => Err(r.log_form()),
        }
    }

    #[test]
    fn brackets_as_postfix_takes_them_and_strict_rfc821_envelopes() {
        // Checked against Postfix 3.7's smtpd, both settings.
        for strict in [false, true] {
            for ok in [
                "MAIL FROM:<a@example.com>",
                "MAIL FROM: <a@example.com>",
                "MAIL FROM:<<a@example.com>>",
                "MAIL FROM:<a@example.com>>",
                "MAIL FROM:<a@example.com>\tSIZE=10",
                "MAIL FROM:<@x.com:a@example.com>",
            ] {
                assert_eq!(sender(ok, strict).as_deref(), Ok("a@example.com"), "{ok}");
            }
            assert_eq!(sender("MAIL FROM:<>", strict).as_deref(), Ok(""));
            for bad in ["MAIL FROM:<<a@example.com>", "MAIL FROM:<a@example.com>x"] {
                assert_eq!(
                    sender(bad, strict),
                    Err("501 5.1.7 Bad sender address syntax".to_string()),
                    "{bad}"
                );
            }
        }
        assert_eq!(sender("MAIL FROM:a@b SIZE=10", false).as_deref(), Ok("a@b"));
        assert_eq!(
            sender("MAIL FROM:a@b SIZE=10", true),
            Err("501 5.1.7 Bad sender address syntax".to_string())
        );
        assert_eq!(
            parse_with("RCPT TO:b@example.com", true)
                .unwrap_err()
                .log_form(),
            "501 5.1.3 Bad recipient address syntax"
        );
        assert_eq!(
            parse_with("RCPT TO:<<b@example.com>>", true).unwrap(),
            Command::Rcpt("b@example.com".into(), RcptParams::default())
        );
    }

    #[test]
    fn verbs_are_case_insensitive_and_help_is_unknown() {
        assert_eq!(
            parse("ehlo client.example").unwrap(),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(parse("QuIt").unwrap(), Command::Quit);
        assert_eq!(parse("HELP").unwrap(), Command::Unknown("HELP".into()));
        assert_eq!(parse("NOOP whatever").unwrap(), Command::Noop);
        assert_eq!(err("HELO"), "501 Syntax: HELO hostname");
        assert_eq!(err("EHLO "), "501 Syntax: EHLO hostname");
    }

    #[test]
    fn mail_from_forms() {
        let m = |l: &str| match parse(l).unwrap() {
            Command::Mail(a, p) => (a, p),
            other => panic!("{other:?}"),
        };
        assert_eq!(m("MAIL FROM:<a@b.example>").0, "a@b.example");
        assert_eq!(m("mail from: <a@b.example>").0, "a@b.example");
        assert_eq!(m("MAIL FROM:a@b.example").0, "a@b.example");
        assert_eq!(m("MAIL FROM:<>").0, "");
        assert_eq!(
            m("MAIL FROM:<@relay1,@relay2:a@b.example>").0,
            "a@b.example"
        );
        assert_eq!(
            m("MAIL FROM:<\"x y>z\"@b.example>").0,
            "\"x y>z\"@b.example"
        );
        let (_, p) = m("MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=abc+2Bdef SMTPUTF8");
        assert_eq!(
            p,
            MailParams {
                size: Some(1000),
                body: Some(Body::EightBitMime),
                ret: 2,
                envid: Some("abc+def".into()),
                auth: None,
                smtputf8: true
            }
        );
    }

    #[test]
    fn mail_and_rcpt_errors_are_postfix_replies() {
        assert_eq!(err("MAIL"), "501 5.5.4 Syntax: MAIL FROM:<address>");
        assert_eq!(
            err("MAIL TO:<a@b>"),
            "501 5.5.4 Syntax: MAIL FROM:<address>"
        );
        assert_eq!(err("MAIL FROM:<a@b"), "501 5.1.7 Bad sender address syntax");
        assert_eq!(
            err("RCPT TO:<a\u{1}b@c>"),
            "501 5.1.3 Bad recipient address syntax"
        );
        assert_eq!(err("RCPT TO:<>"), "501 5.1.3 Bad recipient address syntax");
        assert_eq!(err("RCPT"), "501 5.5.4 Syntax: RCPT TO:<address>");
        assert_eq!(
            err("MAIL FROM:<a@b> FOO=1"),
            "555 5.5.4 Unsupported option: FOO=1"
        );
        assert_eq!(
            err("MAIL FROM:<a@b> SIZE=x"),
            "501 5.5.4 Bad message size syntax"
        );
        assert_eq!(
            err("MAIL FROM:<a@b> RET=FULL RET=HDRS"),
            "501 5.5.4 Duplicate RET parameter"
        );
        assert_eq!(err("DATA x"), "501 5.5.4 Syntax: DATA");
    }

    #[test]
    fn rcpt_dsn_parameters() {
        assert_eq!(xtext_encode("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
        assert_eq!(
            xtext_decode(&xtext_encode("x+y=z")).as_deref(),
            Some("x+y=z")
        );
        match parse("RCPT TO:<u@d> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;u+40d").unwrap() {
            Command::Rcpt(a, p) => {
                assert_eq!(a, "u@d");
                assert_eq!(p.notify, 2 | 8);
                assert_eq!(p.orcpt.as_deref(), Some("rfc822;u@d"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err("RCPT TO:<u@d> NOTIFY=NEVER,SUCCESS"),
            "501 5.5.4 Error: Bad NOTIFY parameter syntax"
        );
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(parse("BDAT 100 LAST").unwrap(), Command::Bdat(100, true));
        assert_eq!(parse("bdat 0").unwrap(), Command::Bdat(0, false));
        assert!(parse("BDAT -1").is_err());
        assert!(parse("BDAT 1 LAST x").is_err());
        assert_eq!(
            parse("AUTH plain dGVzdA==").unwrap(),
            Command::Auth("PLAIN".into(), Some("dGVzdA==".into()))
        );
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode("a+2Bb").as_deref(), Some("a+b"));
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a=b"), None);
    }

    #[test]
    fn long_addresses_are_refused() {
        let long = format!("MAIL FROM:<{}@b>", "a".repeat(MAX_ADDRESS));
        assert_eq!(err(&long), "501 5.1.7 Bad sender address syntax");
    }
}
