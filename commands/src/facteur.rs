//! facteur(1): the control command, Postfix's `postfix(1)`.
//!
//! `facteur [-c DIR] [-v] COMMAND`, with Postfix's commands: `check`,
//! `start`, `start-fg`, `stop`, `abort`, `reload`, `status`, `flush`,
//! `set-permissions`.
//!
//! `check` validates main.cf and master.cf and reports every problem with
//! file and line, exiting non-zero when any is an error. `status` reads the
//! master's pid file. `set-permissions` creates or repairs the queue
//! directory. The commands that need the master daemon say so plainly
//! until it exists (see docs/compatibility.md).

use libmail::cli::getopt;
use libmail::config::check::check_config;
use libmail::config::maincf::{read_config_file, MainCf};
use libmail::config::mastercf;
use libmail::config::params::Params;
use libmail::config::{self, Diagnostic, Severity};

const USAGE: &str = "usage: facteur [-c config_dir] [-v] command
commands:
  check            validate main.cf and master.cf (file and line for each problem)
  status           tell whether the mail system is running
  start, start-fg  start the mail system (in the background / foreground)
  stop, abort      stop the mail system (gracefully / at once)
  reload           re-read the configuration
  flush            retry delivery of all queued mail
  set-permissions  create or repair the queue directory
See docs/man/facteur.1.md.";

pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return 0;
    }
    if args.iter().any(|a| a == "--version") {
        println!(
            "facteur {} (follows Postfix {})",
            env!("CARGO_PKG_VERSION"),
            libmail::config::registry::lookup("mail_version").map_or("", |p| p.default)
        );
        return 0;
    }
    let opts = match getopt(&args, "c:vD") {
        Ok(o) => o,
        Err(e) => {
            eprintln!("facteur: {e}\n{USAGE}");
            return 1;
        }
    };
    let config_dir = config::config_directory(opts.arg('c'));
    let Some(command) = opts.operands.first() else {
        eprintln!("{USAGE}");
        return 1;
    };
    match command.as_str() {
        "check" => check(&config_dir, opts.has('v')),
        "status" => status(&config_dir),
        "set-permissions" => set_permissions(&config_dir),
        "start" | "start-fg" | "stop" | "abort" | "reload" | "flush" => {
            eprintln!(
                "facteur: fatal: {command}: the master daemon and the queue are not part of this \
                 build yet; 'facteur check' and 'postconf' work today (see docs/compatibility.md)"
            );
            1
        }
        other => {
            eprintln!("facteur: fatal: unknown command: '{other}'\n{USAGE}");
            1
        }
    }
}

/// Load and check everything; print each problem; 1 if any is an error.
pub fn check(config_dir: &str, verbose: bool) -> i32 {
    let diags = check_diagnostics(config_dir);
    let mut errors = 0;
    let mut warnings = 0;
    for d in &diags {
        match d.severity {
            Severity::Error => errors += 1,
            Severity::Warning => warnings += 1,
            Severity::Info if !verbose && d.message.contains("accepts but does not act on") => {
                continue
            }
            Severity::Info => {}
        }
        eprintln!("facteur: {}: {}", level(d), d.located());
    }
    if errors > 0 {
        eprintln!(
            "facteur: fatal: {config_dir}: {errors} error(s), {warnings} warning(s); fix the errors above and run 'facteur check' again"
        );
        1
    } else {
        0
    }
}

fn level(d: &Diagnostic) -> &'static str {
    match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// Every problem in `config_dir`'s main.cf and master.cf.
pub fn check_diagnostics(config_dir: &str) -> Vec<Diagnostic> {
    let (main, mut diags) = MainCf::load(config_dir);
    let master_path = format!("{config_dir}/master.cf");
    let master = match read_config_file(&master_path) {
        Ok(text) => {
            let (m, d) = mastercf::parse(&text, &master_path);
            diags.extend(d);
            Some(m)
        }
        Err(e) => {
            diags.push(Diagnostic::new(
                Severity::Error,
                &master_path,
                None,
                format!("open {master_path}: {e}"),
            ));
            None
        }
    };
    let mut params = Params::new(config_dir, main);
    if let Some(m) = &master {
        params.add_master(m);
    }
    diags.extend(check_config(&params, master.as_ref()));
    diags
}

/// `set-permissions`: create the queue directory and its subdirectories
/// where missing and repair their modes (and, as root, their owners:
/// `mail_owner`, with `setgid_group` on maildrop and public). Each change
/// is reported on its own line.
fn set_permissions(config_dir: &str) -> i32 {
    let params = match Params::load(config_dir) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("facteur: fatal: {}", d.located());
            return 1;
        }
    };
    let layout = match libmail::queue::dirs::QueueLayout::from_params(&params) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("facteur: fatal: {e}");
            return 1;
        }
    };
    // SAFETY: geteuid has no preconditions.
    let ownership = if unsafe { libc::geteuid() } == 0 {
        let value = |n: &str| params.value(n).unwrap_or_default();
        match (
            user_id(&value("mail_owner")),
            group_id(&value("setgid_group")),
        ) {
            (Some(mail_owner), Some(setgid_group)) => libmail::queue::dirs::Ownership::System {
                mail_owner,
                setgid_group,
            },
            (None, _) => {
                eprintln!(
                    "facteur: fatal: mail_owner {}: no such user; create it or set mail_owner in main.cf",
                    value("mail_owner")
                );
                return 1;
            }
            (_, None) => {
                eprintln!(
                    "facteur: fatal: setgid_group {}: no such group; create it or set setgid_group in main.cf",
                    value("setgid_group")
                );
                return 1;
            }
        }
    } else {
        libmail::queue::dirs::Ownership::CurrentUser
    };
    match layout.create_or_repair(&ownership) {
        Ok(changes) => {
            for c in changes {
                eprintln!("facteur: {c}");
            }
            0
        }
        Err(e) => {
            eprintln!(
                "facteur: fatal: {}: {e}",
                params.value("queue_directory").unwrap_or_default()
            );
            1
        }
    }
}

fn user_id(name: &str) -> Option<u32> {
    let table =
        libmail::table::unix::UnixTable::open("unix:passwd.byname", "passwd.byname").ok()?;
    let line = libmail::table::Table::lookup(&table, name).ok()??;
    line.split(':').nth(2)?.parse().ok()
}

fn group_id(name: &str) -> Option<u32> {
    let table = libmail::table::unix::UnixTable::open("unix:group.byname", "group.byname").ok()?;
    let line = libmail::table::Table::lookup(&table, name).ok()??;
    line.split(':').nth(2)?.parse().ok()
}

/// `status`: running when `$queue_directory/pid/master.pid` names a live
/// process.
fn status(config_dir: &str) -> i32 {
    let params = match Params::load(config_dir) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("facteur: fatal: {}", d.located());
            return 1;
        }
    };
    let name = params
        .value("mail_name")
        .unwrap_or_else(|_| "Postfix".into());
    let queue = params.value("queue_directory").unwrap_or_default();
    let pid_file = format!("{queue}/pid/master.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&p| p > 0);
    // SAFETY: kill with signal 0 only checks that the process exists.
    match pid {
        Some(p) if unsafe { libc::kill(p, 0) } == 0 => {
            eprintln!("facteur: the {name} mail system is running: PID: {p}");
            0
        }
        _ => {
            eprintln!("facteur: the {name} mail system is not running");
            1
        }
    }
}
