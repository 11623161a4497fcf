//! Validation of parameter values: the typed parsers every program uses,
//! and the whole-configuration check behind `facteur check`.
//!
//! The parsers accept exactly what Postfix accepts: booleans are `yes` or
//! `no` in any case; numbers are decimal; times are a number with an
//! optional unit letter (`s`, `m`, `h`, `d`, `w`) whose absence means the
//! parameter's own default unit.
//!
//! [`check_config`] reports every problem at once, each with file and line:
//! syntax errors, expansion loops, bad values, unknown names, undefined
//! `$name` references, and table files that do not exist (with the
//! `postmap` command that builds them).

use super::mastercf::MasterCf;
use super::params::{split_list, Params};
use super::registry::{self, ParamType, TimeUnit};
use super::{Diagnostic, Severity};

/// `yes`/`no`, any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("yes") {
        Some(true)
    } else if v.eq_ignore_ascii_case("no") {
        Some(false)
    } else {
        None
    }
}

/// A decimal integer (optional sign), no unit.
pub fn parse_number(v: &str) -> Option<i64> {
    let t = v.trim();
    if t.is_empty() {
        return None;
    }
    t.parse::<i64>().ok()
}

/// A time value in seconds: digits and an optional unit letter.
pub fn parse_time(v: &str, default_unit: TimeUnit) -> Option<u64> {
    let t = v.trim();
    let digits = t.bytes().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = t[..digits].parse().ok()?;
    let rest = &t[digits..];
    let unit = match rest.len() {
        0 => default_unit,
        1 => TimeUnit::from_char(rest.chars().next()?.to_ascii_lowercase())?,
        _ => return None,
    };
    n.checked_mul(unit.seconds())
}

/// Check one expanded value against its type; the message names the
/// parameter like Postfix's fatal errors do.
pub fn check_value(name: &str, kind: ParamType, value: &str) -> Result<(), String> {
    match kind {
        ParamType::Bool => parse_bool(value)
            .map(|_| ())
            .ok_or_else(|| format!("bad boolean configuration: {name} = {value} (use yes or no)")),
        ParamType::Int { min, max } | ParamType::Long { min, max } => {
            let n = parse_number(value)
                .ok_or_else(|| format!("bad numerical configuration: {name} = {value}"))?;
            let (lo, hi) = match kind {
                ParamType::Int { .. } => (min.max(i32::MIN as i64), max.min(i32::MAX as i64)),
                _ => (min, max),
            };
            if n < lo {
                Err(format!("invalid {name} parameter value {n} < {lo}"))
            } else if n > hi {
                Err(format!("invalid {name} parameter value {n} > {hi}"))
            } else {
                Ok(())
            }
        }
        ParamType::Time { unit, min } => {
            let secs = parse_time(value, unit).ok_or_else(|| {
                format!(
                    "bad time configuration: {name} = {value} (a number with an optional unit s, m, h, d or w)"
                )
            })?;
            if secs < min {
                Err(format!("invalid {name} parameter value {value} < {min}s"))
            } else {
                Ok(())
            }
        }
        ParamType::Str | ParamType::List | ParamType::Maps | ParamType::Raw | ParamType::Unused => {
            Ok(())
        }
    }
}

/// `type:name` references inside a list value (restriction lists carry
/// them too, after `check_*_access`), for the table types Facteur opens.
/// Other `word:text` items (`inet:host:port` of a policy service) are not
/// tables and are left alone.
fn table_references(value: &str) -> Vec<&str> {
    split_list(value)
        .into_iter()
        .filter(|item| {
            item.split_once(':')
                .is_some_and(|(t, _)| crate::table::TYPES.contains(&t))
        })
        .collect()
}

/// Open every table `value` names, as a daemon would: a table that cannot
/// be opened is an error (a missing `.db` names the postmap command to
/// run), and what the table reported while reading (skipped rules,
/// duplicates) are warnings with the table file's own line numbers.
fn check_tables(value: &str) -> Vec<(Severity, String)> {
    let mut out = Vec::new();
    for spec in table_references(value) {
        match crate::table::open(spec, &crate::table::OpenOptions::default()) {
            Ok(t) => {
                for w in t.warnings() {
                    out.push((Severity::Warning, format!("table {spec}: {}", w.located())));
                }
            }
            Err(e) => out.push((Severity::Error, format!("table {spec}: {e}"))),
        }
    }
    out
}

/// Check the whole configuration: main.cf (already parsed into `params`,
/// with its parse problems in `parse_diags`) and master.cf.
pub fn check_config(params: &Params, master: Option<&MasterCf>) -> Vec<Diagnostic> {
    let path = params.main.path.clone();
    let mut out = Vec::new();
    // Each expansion loop is reported once, at the first entry that meets
    // it, not again for every entry that leads into it.
    let mut loops_seen: Vec<Vec<String>> = Vec::new();
    for e in params.main.effective() {
        let line = Some(e.line);
        let reg = registry::lookup(&e.name);
        let class = params.class_of(&e.name);
        if class.is_none() {
            out.push(Diagnostic::new(
                Severity::Warning,
                &path,
                line,
                format!(
                    "unused parameter: {}={} (not a Postfix parameter, nor used by one; a typo?)",
                    e.name, e.value
                ),
            ));
            continue;
        }
        if let Some(p) = reg {
            if !p.supported() {
                out.push(Diagnostic::new(
                    Severity::Info,
                    &path,
                    line,
                    format!(
                        "{} is a Postfix parameter that Facteur accepts but does not act on yet",
                        e.name
                    ),
                ));
                continue;
            }
        }
        let kind = reg.map(|p| p.kind).unwrap_or(ParamType::Str);
        let raw = reg.is_some_and(|p| p.raw);
        let value = if raw {
            e.value.clone()
        } else {
            match params.value(&e.name) {
                Ok(v) => v,
                Err(err) => {
                    if let super::expand::ExpandError::Loop { chain } = &err {
                        let mut cycle = chain.clone();
                        cycle.sort();
                        cycle.dedup();
                        if loops_seen.contains(&cycle) {
                            continue;
                        }
                        loops_seen.push(cycle);
                    }
                    out.push(Diagnostic::new(
                        Severity::Error,
                        &path,
                        line,
                        format!("{}: {}", e.name, err),
                    ));
                    continue;
                }
            }
        };
        if let Err(msg) = check_value(&e.name, kind, value.trim()) {
            out.push(Diagnostic::new(Severity::Error, &path, line, msg));
        }
        if matches!(kind, ParamType::Maps | ParamType::List) {
            for (sev, msg) in check_tables(&value) {
                out.push(Diagnostic::new(
                    sev,
                    &path,
                    line,
                    format!("{}: {}", e.name, msg),
                ));
            }
        }
    }
    for name in params.undefined_references() {
        let line = params
            .main
            .effective()
            .find(|e| super::params::references(&e.value).contains(&name))
            .map(|e| e.line);
        out.push(Diagnostic::new(
            Severity::Warning,
            &path,
            line,
            format!("undefined parameter: {name} (it expands to nothing)"),
        ));
    }
    for problem in params.problems() {
        out.push(Diagnostic::new(Severity::Error, &path, None, problem));
    }
    if let Some(m) = master {
        out.extend(check_master_overrides(params, m));
    }
    out
}

/// `-o name=value` in master.cf: the name must be known and the value
/// valid for its type.
fn check_master_overrides(params: &Params, master: &MasterCf) -> Vec<Diagnostic> {
    let path = format!("{}/master.cf", params.config_dir);
    let mut out = Vec::new();
    for svc in &master.services {
        for (name, value) in &svc.overrides {
            let line = Some(svc.line);
            let Some(p) = registry::lookup(name) else {
                if params.class_of(name).is_none() && params.explicit(name).is_none() {
                    out.push(Diagnostic::new(
                        Severity::Warning,
                        &path,
                        line,
                        format!(
                            "service {}/{}: unused parameter: {}={}",
                            svc.name,
                            svc.kind.as_str(),
                            name,
                            value
                        ),
                    ));
                }
                continue;
            };
            if p.raw || !p.supported() || value.contains('$') {
                continue;
            }
            if let Err(msg) = check_value(name, p.kind, value.trim()) {
                out.push(Diagnostic::new(
                    Severity::Error,
                    &path,
                    line,
                    format!("service {}/{}: {}", svc.name, svc.kind.as_str(), msg),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::maincf::MainCf;

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("YES"), Some(true));
        assert_eq!(parse_bool("no"), Some(false));
        assert_eq!(parse_bool("true"), None);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("300", TimeUnit::Second), Some(300));
        assert_eq!(parse_time("5d", TimeUnit::Second), Some(432000));
        assert_eq!(parse_time("2", TimeUnit::Hour), Some(7200));
        assert_eq!(parse_time("1W", TimeUnit::Second), Some(604800));
        assert_eq!(parse_time("10x", TimeUnit::Second), None);
        assert_eq!(parse_time("s", TimeUnit::Second), None);
        assert_eq!(parse_time("10ss", TimeUnit::Second), None);
    }

    #[test]
    fn values_by_type() {
        let int = ParamType::Int { min: 1, max: 100 };
        assert!(check_value("x", int, "5").is_ok());
        assert_eq!(
            check_value("x", int, "0").unwrap_err(),
            "invalid x parameter value 0 < 1"
        );
        assert_eq!(
            check_value("x", int, "5k").unwrap_err(),
            "bad numerical configuration: x = 5k"
        );
        assert!(check_value("b", ParamType::Bool, "maybe").is_err());
    }

    fn run(text: &str) -> Vec<String> {
        let (cf, mut d) = MainCf::parse(text, "/cf/main.cf");
        let p = Params::new("/cf", cf).with_system_hostname("mx.example.com");
        d.extend(check_config(&p, None));
        d.iter()
            .filter(|d| d.severity != Severity::Info)
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn whole_config_reports_each_problem_with_its_line() {
        let got = run("biff = no\n\
             smtpd_helo_required = maybe\n\
             smtpd_recipient_limit = lots\n\
             a = $b\nb = $a\nsmtpd_client_restrictions = $a\n\
             maximal_queue_lifetime = 5x\n\
             relyhost = [typo]\n\
             alias_maps = hash:/nonexistent/aliases\n");
        assert_eq!(
            got,
            vec![
                "fatal: /cf/main.cf, line 2: bad boolean configuration: smtpd_helo_required = maybe (use yes or no)",
                "fatal: /cf/main.cf, line 3: bad numerical configuration: smtpd_recipient_limit = lots",
                "fatal: /cf/main.cf, line 4: a: expansion loop: $a -> $b -> $a",
                "fatal: /cf/main.cf, line 7: bad time configuration: maximal_queue_lifetime = 5x (a number with an optional unit s, m, h, d or w)",
                "warning: /cf/main.cf, line 8: unused parameter: relyhost=[typo] (not a Postfix parameter, nor used by one; a typo?)",
                "fatal: /cf/main.cf, line 9: alias_maps: table hash:/nonexistent/aliases: open database /nonexistent/aliases.db: No such file or directory; run \"postmap hash:/nonexistent/aliases\" to build it",
            ]
        );
    }

    #[test]
    fn tables_are_opened_and_their_warnings_reported() {
        let dir = std::env::temp_dir().join(format!("facteur-check-tables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let re = dir.join("header_checks");
        std::fs::write(&re, "/^Subject: ok/ WARN fine\n/unclosed( REJECT\n").unwrap();
        let text = format!(
            "header_checks = regexp:{}\n\
             smtpd_client_restrictions = check_policy_service inet:127.0.0.1:10023, \
             check_client_access inline:{{ 1.2.3.4=REJECT }}\n",
            re.display()
        );
        let got = run(&text);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0].starts_with(&format!(
                "warning: /cf/main.cf, line 1: header_checks: table regexp:{}: regexp map {}, line 2: ",
                re.display(),
                re.display()
            )),
            "{got:#?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_clean_config_has_no_problems() {
        assert!(run("myhostname = mx.example.com\nrelayhost = [smtp.example.net]:587\nsmtpd_helo_required = yes\n").is_empty());
    }
}
