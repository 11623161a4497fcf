//! postconf(1): show and edit the configuration, with Postfix's flags and
//! output.
//!
//! Parameter mode (the default) prints `name = value` lines for every
//! parameter (bare), the named ones, or those set in main.cf (`-n`); `-d`
//! shows defaults, `-h`/`-H` values or names only, `-x` expands `$name`,
//! `-f` folds long lines. `-e name=value`, `-X name` and `-# name` edit
//! main.cf in place. `-M`, `-F` and `-P` work on master.cf (see
//! [`master`]). `-m`, `-a`, `-A`, `-l` list supported table types, SASL
//! types and lock methods.
//!
//! Like Postfix, every run warns about `unused parameter` (set in main.cf
//! but known to nothing) and `undefined parameter` (`$name` that nothing
//! defines): these warnings are how typos get noticed.

pub mod master;

use std::io::{self, Write};

use libmail::cli::{getopt, Parsed};
use libmail::config::edit::{self, Edit};
use libmail::config::lines::normalize_whitespace;
use libmail::config::maincf::{read_config_file, split_name_value, MainCf};
use libmail::config::mastercf;
use libmail::config::params::{references, Params};
use libmail::config::{self, registry, Severity};

const USAGE: &str = "usage: postconf [-c config_dir] [-C class] [-dfhHnx] [-o name=value] [name...]
       postconf [-c config_dir] -e name=value...    (edit main.cf)
       postconf [-c config_dir] -X name...          (delete from main.cf)
       postconf [-c config_dir] -# name...          (comment out in main.cf)
       postconf [-c config_dir] -M [-fx] [service[/type]...]
       postconf [-c config_dir] -F [-fx] [service/type/field...]
       postconf [-c config_dir] -P [-fx] [service/type/parameter...]
       postconf [-c config_dir] -M service/type='entry', -MX, -M# (edit master.cf)
       postconf -m | -a | -A | -l
See postconf(1) in docs/man/postconf.1.md.";

/// Options accepted, getopt style. `-v` is accepted and ignored.
const SPEC: &str = "aAbc:C:deEfhHlmMno:pPtTvxX#F";

/// Print `postconf: LEVEL: message` on stderr.
fn say(level: &str, msg: &str) {
    eprintln!("postconf: {level}: {msg}");
}

fn fatal(msg: &str) -> i32 {
    say("fatal", msg);
    1
}

pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let opts = match getopt(&args, SPEC) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("postconf: {e}\n{USAGE}");
            return 1;
        }
    };
    let explicit_dir = opts
        .arg('c')
        .map(|s| s.to_string())
        .or_else(|| std::env::var("MAIL_CONFIG").ok().filter(|s| !s.is_empty()));
    let config_dir = config::config_directory(explicit_dir.as_deref());

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    // master.cf modes first: their option check also refuses `-Mm` and
    // friends with Postfix's "specify one of" message.
    let rc = if opts.has('M') || opts.has('F') || opts.has('P') {
        master::dispatch(&opts, &config_dir, &mut out)
    } else if opts.has('m') {
        list(&mut out, libmail::table::TYPES)
    } else if opts.has('a') {
        list(&mut out, &["dovecot"])
    } else if opts.has('A') {
        // The SMTP client's SASL (PLAIN, LOGIN) is built in; Postfix names
        // its client implementation "cyrus". Facteur has one built-in
        // client, shown under that name so scripts that test for it work.
        list(&mut out, &["cyrus"])
    } else if opts.has('l') {
        list(&mut out, &["flock", "fcntl", "dotlock"])
    } else if opts.has('e')
        || opts.has('X')
        || opts.has('#')
        || opts.operands.iter().any(|a| a.contains('='))
    {
        edit_main(&opts, &config_dir)
    } else {
        show_parameters(&opts, &config_dir, explicit_dir.as_deref(), &mut out)
    };
    if out.flush().is_err() {
        // A closed pipe (postconf | head) is not an error worth a message.
        return rc;
    }
    rc
}

fn list(out: &mut dyn Write, items: &[&str]) -> i32 {
    for i in items {
        let _ = writeln!(out, "{i}");
    }
    0
}

/// Load main.cf and master.cf into a [`Params`] the way postconf does,
/// printing the warnings Postfix prints. `Err(rc)` after a fatal error.
pub fn load_params(
    config_dir: &str,
    explicit_dir: Option<&str>,
    defaults_only: bool,
    overrides: &[&str],
) -> Result<Params, i32> {
    let main_path = format!("{config_dir}/main.cf");
    // `-d` never reads main.cf (a broken main.cf does not hide defaults).
    let (mut main, diags) = if defaults_only {
        (MainCf::default(), Vec::new())
    } else {
        let text = match read_config_file(&main_path) {
            Ok(t) => t,
            Err(e) => return Err(fatal(&format!("open {main_path}: {e}"))),
        };
        MainCf::parse(&text, &main_path)
    };
    for d in &diags {
        if d.severity == Severity::Error {
            return Err(fatal(&d.postfix_located()));
        }
    }
    for d in &diags {
        say(d.level_word(), &d.postfix_located());
    }
    if let Some(dir) = explicit_dir {
        // Postfix records -c / MAIL_CONFIG as if main.cf set it.
        main.set("config_directory", dir);
    }
    let master_path = format!("{config_dir}/master.cf");
    let master = match read_config_file(&master_path) {
        Ok(t) => Some(mastercf::parse(&t, &master_path).0),
        Err(_) => None,
    };
    let mut params = if defaults_only {
        let mut p = Params::defaults(config_dir);
        p.main = main;
        p
    } else {
        Params::new(config_dir, main)
    };
    for o in overrides {
        match split_name_value(o) {
            Ok((n, v)) => params.set_override(n, v),
            Err(e) => return Err(fatal(&e)),
        }
    }
    if let Some(m) = &master {
        params.add_master(m);
    }
    if !defaults_only {
        for name in params.undefined_references() {
            say(
                "warning",
                &format!("{main_path}: undefined parameter: {name}"),
            );
        }
        if let Some(m) = &master {
            let mut seen: Vec<String> = Vec::new();
            for (_, value) in m.services.iter().flat_map(|s| s.overrides.iter()) {
                for name in references(value) {
                    if params.raw(&name).is_none() && !seen.contains(&name) {
                        say(
                            "warning",
                            &format!("{master_path}: undefined parameter: {name}"),
                        );
                        seen.push(name);
                    }
                }
            }
        }
        for (name, value) in params.unused() {
            say(
                "warning",
                &format!("{main_path}: unused parameter: {name}={value}"),
            );
        }
        if let Some(m) = &master {
            for s in &m.services {
                for (name, value) in &s.overrides {
                    if params.class_of(name).is_none() && params.explicit(name).is_none() {
                        say(
                            "warning",
                            &format!("{master_path}: unused parameter: {name}={value}"),
                        );
                    }
                }
            }
        }
    }
    if !defaults_only {
        // Postfix expands every value when it loads them, so a broken
        // expansion or a bad host-dependent setting stops every mode.
        for e in params.main.effective() {
            let expandable = params.class_of(&e.name).is_some()
                && !registry::lookup(&e.name).is_some_and(|p| p.raw);
            if expandable {
                if let Err(err) = params.value(&e.name) {
                    say("warning", &err.to_string());
                    return Err(fatal("macro processing error"));
                }
            }
        }
        if params.explicit("mynetworks").is_none() {
            let _ = params.value("mynetworks");
        }
        if let Some(problem) = params.problems().first() {
            return Err(fatal(problem));
        }
    }
    Ok(params)
}

/// Fold `name = value` at 80 columns, continuation lines indented by four
/// spaces, as `postconf -f` does.
pub fn fold_line(line: &str) -> String {
    const LIMIT: usize = 80;
    let mut out = String::with_capacity(line.len() + 8);
    let mut col = 0;
    for (k, word) in line.split(' ').enumerate() {
        if k == 0 {
            out.push_str(word);
            col = word.len();
        } else if k >= 2 && col + 1 + word.len() > LIMIT {
            out.push_str("\n    ");
            out.push_str(word);
            col = 4 + word.len();
        } else {
            out.push(' ');
            out.push_str(word);
            col += 1 + word.len();
        }
    }
    out
}

fn show_parameters(
    opts: &Parsed,
    config_dir: &str,
    explicit_dir: Option<&str>,
    out: &mut dyn Write,
) -> i32 {
    let defaults = opts.has('d');
    let set_only = opts.has('n');
    if defaults && set_only {
        return fatal("specify one of -d -n");
    }
    let overrides = opts.args('o');
    let params = match load_params(config_dir, explicit_dir, defaults, &overrides) {
        Ok(p) => p,
        Err(rc) => return rc,
    };

    let names: Vec<String> = if !opts.operands.is_empty() {
        let mut v = Vec::new();
        for n in &opts.operands {
            if params.class_of(n).is_some() {
                v.push(n.clone());
            } else {
                say("warning", &format!("{n}: unknown parameter"));
            }
        }
        v
    } else if set_only {
        let mut v: Vec<String> = params
            .main
            .effective()
            .filter(|e| params.class_of(&e.name).is_some())
            .map(|e| e.name.clone())
            .collect();
        v.sort();
        v
    } else {
        let mut v: Vec<String> = registry::all().iter().map(|p| p.name.to_string()).collect();
        v.extend(params.service_names().map(|s| s.to_string()));
        v.extend(params.user_defined().iter().cloned());
        v.sort();
        v.dedup();
        v
    };

    for name in &names {
        let raw_value = if defaults {
            params.default_raw(name).unwrap_or_default()
        } else {
            params.raw(name).unwrap_or_default()
        };
        let is_raw = registry::lookup(name).is_some_and(|p| p.raw);
        let value = if opts.has('x') && !is_raw {
            match params.expand_text(&raw_value) {
                Ok((v, _)) => v,
                Err(e) => {
                    say("warning", &e.to_string());
                    return fatal("macro processing error");
                }
            }
        } else {
            raw_value
        };
        let value = normalize_whitespace(&value);
        let line = if opts.has('H') {
            name.clone()
        } else if opts.has('h') {
            value
        } else if value.is_empty() {
            format!("{name} =")
        } else {
            format!("{name} = {value}")
        };
        let line = if opts.has('f') && !opts.has('h') && !opts.has('H') {
            fold_line(&line)
        } else {
            line
        };
        if writeln!(out, "{line}").is_err() {
            return 0;
        }
    }
    for p in params.problems() {
        say("warning", &p);
    }
    0
}

/// `-e name=value...`, `-X name...`, `-# name...`.
fn edit_main(opts: &Parsed, config_dir: &str) -> i32 {
    let path = format!("{config_dir}/main.cf");
    let mut edits = Vec::new();
    for arg in &opts.operands {
        if opts.has('X') || opts.has('#') {
            let name = arg.trim().to_string();
            edits.push(if opts.has('X') {
                Edit::Delete { name }
            } else {
                Edit::CommentOut { name }
            });
        } else {
            match split_name_value(arg) {
                Ok((n, v)) => edits.push(Edit::Set {
                    name: n.to_string(),
                    value: v.to_string(),
                }),
                Err(e) => return fatal(&e),
            }
        }
    }
    let text = match read_config_file(&path) {
        Ok(t) => t,
        Err(e) => return fatal(&format!("open {path}: {e}")),
    };
    let (new_text, multiple) = edit::apply(&text, &edits);
    for n in multiple {
        say("warning", &format!("{path}: multiple entries for \"{n}\""));
    }
    if let Err(e) = edit::write_atomically(std::path::Path::new(&path), &new_text) {
        return fatal(&format!("write {path}: {e}"));
    }
    0
}
