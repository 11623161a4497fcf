//! facteur(1): the control command, Postfix's `postfix(1)`.
//!
//! `facteur [-c DIR] [-v] COMMAND`, with Postfix's commands: `check`,
//! `start`, `start-fg`, `stop`, `abort`, `reload`, `status`, `flush`,
//! `set-permissions`.
//!
//! `check` validates main.cf and master.cf and reports every problem with
//! file and line, exiting non-zero when any is an error. `set-permissions`
//! creates or repairs the queue directory.
//!
//! The control commands talk to master(8) as Postfix's postfix-script
//! does, with its messages: printed to standard error as
//! `postfix/postfix-script: MESSAGE` and logged with the program name
//! `postfix-script`. Whether master runs is decided by its lock,
//! `$data_directory/master.lock` (fcntl write lock; F_GETLK names the
//! holder's pid), falling back to `$queue_directory/pid/master.pid` and a
//! signal 0 when the lock file cannot be read. `start` runs
//! `$daemon_directory/master -w`, `start-fg` execs `master -d`; `stop`
//! sends SIGTERM and waits up to [`STOP_WAIT`] for the lock to be
//! released, then kills with force; `abort` and `reload` send SIGTERM and
//! SIGHUP; `flush` sends triggers to qmgr and pickup.

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
        "set-permissions" => set_permissions(&config_dir),
        "status" | "start" | "start-fg" | "stop" | "abort" | "reload" | "flush" => {
            control(command, &config_dir, opts.has('v'))
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

/// A user's uid, from the passwd database.
pub(crate) fn user_id(name: &str) -> Option<u32> {
    passwd_field(name, 2)
}

/// A user's primary gid, from the passwd database.
pub(crate) fn primary_group(name: &str) -> Option<u32> {
    passwd_field(name, 3)
}

fn passwd_field(name: &str, n: usize) -> Option<u32> {
    let table =
        libmail::table::unix::UnixTable::open("unix:passwd.byname", "passwd.byname").ok()?;
    let line = libmail::table::Table::lookup(&table, name).ok()??;
    line.split(':').nth(n)?.parse().ok()
}

fn group_id(name: &str) -> Option<u32> {
    let table = libmail::table::unix::UnixTable::open("unix:group.byname", "group.byname").ok()?;
    let line = libmail::table::Table::lookup(&table, name).ok()??;
    line.split(':').nth(2)?.parse().ok()
}

/// How long `stop` waits for master to exit before killing it.
pub const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// postfix-script's voice: standard error and the log.
struct Script {
    tag: String,
    logging: bool,
    mail_name: String,
}

impl Script {
    fn new(params: &Params) -> Script {
        let syslog_name = params
            .value("syslog_name")
            .unwrap_or_else(|_| "postfix".into());
        Script {
            tag: format!("{syslog_name}/postfix-script"),
            logging: libmail::log::init("postfix-script", params, false).is_ok(),
            mail_name: params
                .value("mail_name")
                .unwrap_or_else(|_| "Postfix".into()),
        }
    }

    fn say(&self, level: libmail::log::Level, text: &str) {
        let prefix = match level {
            libmail::log::Level::Info => "",
            libmail::log::Level::Warning => "warning: ",
            libmail::log::Level::Error => "error: ",
            libmail::log::Level::Fatal | libmail::log::Level::Panic => "fatal: ",
        };
        eprintln!("{}: {prefix}{text}", self.tag);
        if self.logging {
            libmail::log::log(level, text);
        }
    }

    fn info(&self, text: &str) {
        self.say(libmail::log::Level::Info, text);
    }

    /// `fatal:` message; returns the exit status 1.
    fn fatal(&self, text: &str) -> i32 {
        self.say(libmail::log::Level::Fatal, text);
        1
    }

    fn not_running(&self) -> i32 {
        self.fatal(&format!(
            "the {} mail system is not running",
            self.mail_name
        ))
    }
}

/// The pid of the running master of a configuration, if one runs.
pub fn master_pid(params: &Params) -> Option<i32> {
    let data = params.value("data_directory").unwrap_or_default();
    let queue = params.value("queue_directory").unwrap_or_default();
    let from_pid_file = || {
        std::fs::read_to_string(format!("{queue}/pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&p| p > 0)
    };
    let lock = std::path::Path::new(&data).join("master.lock");
    match libmail::service::lock_holder(&lock) {
        Ok(None) => None,
        // 0 when the holder is in another pid namespace.
        Ok(Some(p)) => Some(p)
            .filter(|&p| p > 0)
            .or_else(from_pid_file)
            .or(Some(0)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        // Not allowed to read the lock (not root): the pid file and a
        // signal 0 (EPERM still means the process exists).
        Err(_) => from_pid_file().filter(|&p| {
            // SAFETY: signal 0 only checks that the process exists.
            let exists = unsafe { libc::kill(p, 0) } == 0;
            exists || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }),
    }
}

fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    if pid <= 0 {
        return Err(std::io::Error::other("no pid for the running master"));
    }
    // SAFETY: kill(2) on one positive pid.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The control commands (Postfix's postfix-script).
fn control(command: &str, config_dir: &str, verbose: bool) -> i32 {
    let params = match Params::load(config_dir) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("facteur: fatal: {}", d.located());
            return 1;
        }
    };
    let script = Script::new(&params);
    let name = script.mail_name.clone();
    let running = master_pid(&params);
    let master =
        std::path::Path::new(&params.value("daemon_directory").unwrap_or_default()).join("master");
    let master_cmd = |flag: &str| {
        let mut c = std::process::Command::new(&master);
        c.arg(flag).arg("-c").arg(config_dir);
        if verbose {
            c.arg("-v");
        }
        c
    };
    match command {
        "status" => match running {
            Some(pid) => {
                script.info(&format!("the {name} mail system is running: PID: {pid}"));
                0
            }
            None => {
                script.info(&format!("the {name} mail system is not running"));
                1
            }
        },
        "start" | "start-fg" => {
            if running.is_some() {
                return script.fatal(&format!("the {name} mail system is already running"));
            }
            if check(config_dir, false) != 0 {
                return 1;
            }
            if !master.is_file() {
                return script.fatal(&format!(
                    "{}: no such program (is daemon_directory right?)",
                    master.display()
                ));
            }
            script.info(&format!("starting the {name} mail system"));
            if let Err(e) = prepare_jail(&params, config_dir) {
                script.say(libmail::log::Level::Warning, &e);
            }
            if command == "start-fg" {
                use std::os::unix::process::CommandExt;
                let e = master_cmd("-d").exec();
                return script.fatal(&format!("exec {}: {e}", master.display()));
            }
            match master_cmd("-w").status() {
                Ok(s) => s.code().unwrap_or(1),
                Err(e) => script.fatal(&format!("{}: {e}", master.display())),
            }
        }
        "stop" => {
            let Some(pid) = running else {
                return script.not_running();
            };
            script.info(&format!("stopping the {name} mail system"));
            if let Err(e) = signal(pid, libc::SIGTERM) {
                return script.fatal(&format!("kill {pid}: {e}"));
            }
            let start = std::time::Instant::now();
            let mut said = 0;
            while start.elapsed() < STOP_WAIT {
                if master_pid(&params).is_none() {
                    return 0;
                }
                let secs = start.elapsed().as_secs();
                if secs >= said {
                    script.info(&format!("waiting for the {name} mail system to terminate"));
                    said = secs + 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if master_pid(&params).is_none() {
                return 0;
            }
            script.say(
                libmail::log::Level::Warning,
                &format!("stopping the {name} mail system with force"),
            );
            // The whole process group when master leads one (it does when
            // started with `start`), as Postfix's kill -9 -PID.
            // SAFETY: getpgid and kill on a positive pid.
            unsafe {
                if libc::getpgid(pid) == pid {
                    libc::kill(-pid, libc::SIGKILL);
                } else {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            0
        }
        "abort" => {
            let Some(pid) = running else {
                return script.not_running();
            };
            script.info(&format!("aborting the {name} mail system"));
            match signal(pid, libc::SIGTERM) {
                Ok(()) => 0,
                Err(e) => script.fatal(&format!("kill {pid}: {e}")),
            }
        }
        "reload" => {
            let Some(pid) = running else {
                return script.not_running();
            };
            script.info(&format!("refreshing the {name} mail system"));
            match signal(pid, libc::SIGHUP) {
                Ok(()) => 0,
                Err(e) => script.fatal(&format!("kill {pid}: {e}")),
            }
        }
        "flush" => {
            if running.is_none() {
                return script.not_running();
            }
            let queue =
                std::path::PathBuf::from(params.value("queue_directory").unwrap_or_default());
            let mut status = 0;
            for (service, bytes) in [("qmgr", &b"FADI"[..]), ("pickup", &b"W"[..])] {
                let path = libmail::ipc::public(&queue, service);
                if let Err(e) = libmail::ipc::trigger(&path, bytes) {
                    script.say(
                        libmail::log::Level::Warning,
                        &format!("trigger {}: {e}", path.display()),
                    );
                    status = 1;
                }
            }
            status
        }
        _ => 1,
    }
}

/// The files of /etc a jailed daemon reads after start-up (the resolver's
/// configuration for smtpd's client name lookups, the services database,
/// the time zone), copied into `$queue_directory/etc` when master.cf runs
/// a service chrooted and we are root — what Debian's Postfix start-up
/// does. A file is replaced only when its contents changed, atomically.
const JAIL_FILES: &[&str] = &[
    "localtime",
    "services",
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
];

fn prepare_jail(params: &libmail::config::params::Params, config_dir: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let path = format!("{config_dir}/master.cf");
    let text =
        libmail::config::maincf::read_config_file(&path).map_err(|e| format!("{path}: {e}"))?;
    let (mcf, _) = libmail::config::mastercf::parse(&text, &path);
    if !mcf.effective().iter().any(|s| s.chroot == Some(true)) {
        return Ok(());
    }
    let queue = params
        .value("queue_directory")
        .map_err(|e| format!("queue_directory: {e}"))?;
    let etc = std::path::Path::new(&queue).join("etc");
    copy_into_jail(std::path::Path::new("/etc"), &etc, JAIL_FILES)
        .map_err(|e| format!("copying /etc files into {}: {e}", etc.display()))
}

/// Largest /etc file copied into the jail.
const MAX_JAIL_FILE: u64 = 16 << 20;

fn copy_into_jail(
    from: &std::path::Path,
    to: &std::path::Path,
    names: &[&str],
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o755).create(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for name in names {
        // Follow symbolic links (/etc/localtime is one): the jail gets
        // the contents, read up to a bound (these are small files).
        let Ok(f) = std::fs::File::open(from.join(name)) else {
            continue;
        };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_JAIL_FILE + 1), &mut data)?;
        if data.len() as u64 > MAX_JAIL_FILE {
            return Err(std::io::Error::other(format!(
                "{}: larger than {MAX_JAIL_FILE} bytes",
                from.join(name).display()
            )));
        }
        let dest = to.join(name);
        if std::fs::read(&dest).is_ok_and(|old| old == data) {
            continue;
        }
        let tmp = to.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &data)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::copy_into_jail;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn jail_gets_copies_of_the_files_that_exist_and_follows_changes() {
        let top = std::env::temp_dir().join(format!("facteur-jail-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let etc = top.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::os::unix::fs::symlink(etc.join("hosts"), etc.join("hosts.link")).unwrap();
        let jail = top.join("queue/etc");
        std::fs::create_dir_all(top.join("queue")).unwrap();
        copy_into_jail(&etc, &jail, &["hosts", "hosts.link", "missing"]).unwrap();
        assert_eq!(
            std::fs::read_to_string(jail.join("hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        // A link in /etc becomes a plain file with the contents.
        let link = std::fs::symlink_metadata(jail.join("hosts.link")).unwrap();
        assert!(link.file_type().is_file());
        assert_eq!(link.permissions().mode() & 0o777, 0o644);
        assert!(!jail.join("missing").exists());
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost other\n").unwrap();
        copy_into_jail(&etc, &jail, &["hosts"]).unwrap();
        assert_eq!(
            std::fs::read_to_string(jail.join("hosts")).unwrap(),
            "127.0.0.1 localhost other\n"
        );
        std::fs::remove_dir_all(&top).unwrap();
    }
}
