//! postsuper(1): queue maintenance — delete, hold, release, requeue and
//! expire messages, repair queue file names, purge leftovers. See
//! `docs/man/postsuper.1.md`.
//!
//! ```text
//! postsuper [-psSv] [-c config_dir] [-d queue_id] [-e queue_id] [-f queue_id]
//!           [-h queue_id] [-H queue_id] [-r queue_id] [queue...]
//! ```
//!
//! Safe while the mail system runs. Every move or removal of a message
//! happens under an exclusive lock on its queue file
//! ([`libmail::queue::lock`]): delivery agents hold a shared lock while
//! they deliver, so postsuper waits for a delivery in progress to write
//! its done marks before it pulls the file away, and an agent that comes
//! later finds the file gone and delivers nothing. Renames race only with
//! qmgr's own renames (incoming → active → deferred); whoever renames
//! first wins and postsuper looks for the file again. Directories touched
//! are fsynced before postsuper exits, so what it reports done survives a
//! crash.
//!
//! As in Postfix, messages are reported on standard error and in the log
//! (`ID: removed`, `Deleted: 3 messages`). Reserved to root — and, for an
//! unprivileged instance, to the owner of the queue directory. As root it
//! works as `mail_owner`, so that the subdirectories it creates belong to
//! the daemons.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use libmail::cli::{getopt, Opt};
use libmail::config;
use libmail::config::params::Params;
use libmail::queue::dirs::{sync_directory, Found};
use libmail::queue::lock::{self, AdminLock, Locked};
use libmail::queue::statuslog;
use libmail::queue::{Queue, QueueId, QueueLayout};
use libmail::{info, warning};

const USAGE: &str = "usage: postsuper [-c config_dir] [-d queue_id (delete)] \
[-e queue_id (expire)] [-f queue_id (expire and/or un-hold)] [-h queue_id (hold)] \
[-H queue_id (un-hold)] [-p (purge temporary files)] [-r queue_id (requeue)] \
[-s (structure fix)] [-S (redundant structure fix)][-v (verbose)] [queue...]";

/// How long postsuper waits for the deliveries in progress of one
/// message before it gives up on that message.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How often one message is looked for again after it moved under our
/// feet (qmgr renamed it first).
const ATTEMPTS: usize = 5;
/// Temporary and incomplete files younger than this may still be
/// written (a slow `sendmail` reading its input, cleanup receiving a
/// large message); `-p` leaves them alone.
const PURGE_AGE: Duration = Duration::from_secs(24 * 3600);

/// The queues that hold messages, in the order `-s` and `-p` visit them.
const MAIL_QUEUES: [Queue; 6] = [
    Queue::Maildrop,
    Queue::Incoming,
    Queue::Active,
    Queue::Deferred,
    Queue::Hold,
    Queue::Corrupt,
];

/// The per-message operations, in the order postsuper carries them out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Delete,
    Hold,
    Release,
    Requeue,
    /// `-e`; `-f` is `Expire` with `release` set.
    Expire {
        release: bool,
    },
}

impl Op {
    fn default_queues(self) -> &'static [Queue] {
        match self {
            Op::Hold => &[Queue::Incoming, Queue::Active, Queue::Deferred],
            Op::Release => &[Queue::Hold],
            Op::Delete | Op::Requeue | Op::Expire { .. } => {
                &[Queue::Hold, Queue::Incoming, Queue::Active, Queue::Deferred]
            }
        }
    }

    /// The queues this operation may take a message from.
    fn applies_to(self, q: Queue) -> bool {
        match self {
            // Mail not yet through cleanup cannot be held (Postfix's rule).
            Op::Hold => !matches!(q, Queue::Hold | Queue::Maildrop),
            Op::Release => q == Queue::Hold,
            Op::Delete => true,
            Op::Requeue | Op::Expire { .. } => q != Queue::Maildrop,
        }
    }

    /// The summary line's words.
    fn summary(self) -> &'static str {
        match self {
            Op::Delete => "Deleted",
            Op::Hold => "Placed on hold",
            Op::Release => "Released from hold",
            Op::Requeue => "Requeued",
            Op::Expire { .. } => "Force-expired",
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Says `text` as postsuper does: standard error and the log.
fn say(text: &str) {
    info!("{text}");
}

/// What a run did, for the summaries and the final syncs and triggers.
#[derive(Default)]
struct Run {
    dirs: BTreeSet<PathBuf>,
    released: usize,
    requeued: usize,
}

pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let parsed = match getopt(&args, "c:d:e:f:h:H:pr:sSv") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("postsuper: {e}");
            eprintln!("postsuper: fatal: {USAGE}");
            return 1;
        }
    };
    // Before logging is set up, fatal errors go to standard error only.
    let fatal = |text: &str| -> i32 {
        eprintln!("postsuper: fatal: {text}");
        1
    };
    let mut queues = Vec::new();
    for name in &parsed.operands {
        match Queue::from_name(name).filter(|q| MAIL_QUEUES.contains(q)) {
            Some(q) => queues.push(q),
            None => return fatal(&format!("invalid directory name: {name}")),
        }
    }
    let dir = config::config_directory(parsed.arg('c'));
    let params = match Params::load(&dir) {
        Ok(p) => p,
        Err(d) => return fatal(&d.postfix_located()),
    };
    let layout = match QueueLayout::from_params(&params) {
        Ok(l) => l,
        Err(e) => return fatal(&e),
    };
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let owner = std::fs::metadata(layout.root()).map(|m| m.uid()).ok();
    if uid != 0 && owner != Some(uid) {
        return fatal("use of this command is reserved for the superuser");
    }
    if let Err(e) = libmail::log::init("postsuper", &params, true) {
        eprintln!("postsuper: warning: {e}");
    }
    if parsed.has('v') {
        libmail::log::set_verbose(true);
    }
    if uid == 0 {
        if let Err(e) = become_mail_owner(&params) {
            libmail::log::log(libmail::log::Level::Fatal, &e);
            return 1;
        }
    }

    let mut ops: Vec<(Op, Vec<String>)> = Vec::new();
    for o in &parsed.opts {
        let (op, arg) = match o {
            Opt::WithArg('d', a) => (Op::Delete, a),
            Opt::WithArg('h', a) => (Op::Hold, a),
            Opt::WithArg('H', a) => (Op::Release, a),
            Opt::WithArg('r', a) => (Op::Requeue, a),
            Opt::WithArg('e', a) => (Op::Expire { release: false }, a),
            Opt::WithArg('f', a) => (Op::Expire { release: true }, a),
            _ => continue,
        };
        match ops.iter_mut().find(|(o, _)| *o == op) {
            Some((_, ids)) => ids.push(arg.clone()),
            None => ops.push((op, vec![arg.clone()])),
        }
    }
    let fix = parsed.has('s') || parsed.has('S');
    let purge = parsed.has('p');
    let bare = ops.is_empty() && !fix && !purge;

    // -p, -s and -S come first; a bare `postsuper` is `-s -p`.
    let mut run = Run::default();
    if fix || bare {
        structure(&layout, parsed.has('S'), &mut run);
    }
    if purge || bare {
        purge_old(&layout);
    }
    let order = [
        Op::Delete,
        Op::Hold,
        Op::Release,
        Op::Requeue,
        Op::Expire { release: false },
        Op::Expire { release: true },
    ];
    for op in order {
        let Some((_, args)) = ops.iter().find(|(o, _)| *o == op) else {
            continue;
        };
        let qs: Vec<Queue> = if queues.is_empty() {
            op.default_queues().to_vec()
        } else {
            queues.clone()
        };
        let released_before = run.released;
        let n = each_id(&layout, op, args, &qs, &mut run);
        say(&format!("{}: {n} message{}", op.summary(), plural(n)));
        if let Op::Expire { release: true } = op {
            let r = run.released - released_before;
            if r > 0 {
                say(&format!("Released from hold: {r} message{}", plural(r)));
            }
        }
    }

    for d in &run.dirs {
        if let Err(e) = sync_directory(d) {
            warning!("fsync {}: {e}", d.display());
        }
    }
    // Released mail is due now, requeued mail waits for pickup: wake
    // them rather than wait for their timers (Postfix waits).
    if run.released > 0 {
        let _ = libmail::ipc::trigger(&libmail::ipc::public(layout.root(), "qmgr"), b"D");
    }
    if run.requeued > 0 {
        let _ = libmail::ipc::trigger(&libmail::ipc::public(layout.root(), "pickup"), b"W");
    }
    0
}

/// Root works as `mail_owner` (effective IDs), like the daemons.
fn become_mail_owner(params: &Params) -> Result<(), String> {
    let name = params.value("mail_owner").unwrap_or_default();
    let Some(uid) = crate::facteur::user_id(&name) else {
        return Err(format!(
            "mail_owner {name}: no such user; create it or set mail_owner in main.cf"
        ));
    };
    let gid = crate::facteur::primary_group(&name).unwrap_or(uid);
    if uid == 0 {
        return Ok(());
    }
    // SAFETY: plain syscalls on integers.
    unsafe {
        if libc::setgroups(1, &gid) != 0 || libc::setegid(gid) != 0 || libc::seteuid(uid) != 0 {
            return Err(format!(
                "cannot become mail_owner {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Expands the arguments of one operation (IDs, `-` for standard input,
/// `ALL`) and applies it; returns how many messages it changed.
fn each_id(layout: &QueueLayout, op: Op, args: &[String], qs: &[Queue], run: &mut Run) -> usize {
    let mut n = 0;
    let one = |text: &str, run: &mut Run| -> bool {
        let text = text.trim();
        if text.is_empty() {
            return false;
        }
        match QueueId::parse(text) {
            Ok(id) => {
                let allowed: Vec<Queue> =
                    qs.iter().copied().filter(|q| op.applies_to(*q)).collect();
                act(layout, op, &id, &allowed, true, run)
            }
            Err(_) => {
                warning!("invalid mail queue id: {text}");
                false
            }
        }
    };
    for a in args {
        match a.as_str() {
            "-" => {
                // One ID per line; a line is bounded so that a stray
                // binary on standard input cannot exhaust memory.
                let stdin = std::io::stdin();
                let mut lock = stdin.lock();
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match std::io::Read::take(&mut lock, 4096).read_until(b'\n', &mut line) {
                        Ok(0) => break,
                        Ok(_) => n += usize::from(one(&String::from_utf8_lossy(&line), run)),
                        Err(e) => {
                            warning!("read standard input: {e}");
                            break;
                        }
                    }
                }
            }
            "ALL" => {
                for &q in qs.iter().filter(|q| op.applies_to(**q)) {
                    let ids: Vec<QueueId> = layout
                        .scan(q)
                        .filter_map(|r| r.ok())
                        .map(|(id, _)| id)
                        .collect();
                    for id in ids {
                        if act(layout, op, &id, &[q], false, run) {
                            n += 1;
                        }
                    }
                }
            }
            id => n += usize::from(one(id, run)),
        }
    }
    n
}

/// Applies `op` to message `id`, looked for in `qs`. True when done.
/// `each`: say a line for this message (Postfix does for IDs named on the
/// command line or standard input, not for `ALL`).
fn act(
    layout: &QueueLayout,
    op: Op,
    id: &QueueId,
    qs: &[Queue],
    each: bool,
    run: &mut Run,
) -> bool {
    for _ in 0..ATTEMPTS {
        let Some((q, path)) = layout.find(id, qs) else {
            return false;
        };
        let held = match lock::for_admin(&path, LOCK_WAIT) {
            Ok(AdminLock::Held(h)) => h,
            Ok(AdminLock::Gone) => continue,
            Ok(AdminLock::Busy) => {
                warning!("{id}: delivery in progress for more than {LOCK_WAIT:?}; not changed, try again");
                return false;
            }
            Err(e) => {
                warning!("{id}: open {}: {e}", path.display());
                return false;
            }
        };
        let mode = match held.file().metadata() {
            Ok(m) => m.mode(),
            Err(e) => {
                warning!("{id}: fstat: {e}");
                return false;
            }
        };
        if mode & 0o100 == 0 {
            // Still being written: not a message yet.
            return false;
        }
        match apply(layout, op, id, q, &path, &held, mode, run) {
            Ok(line) => {
                if each {
                    say(&format!("{id}: {line}"));
                }
                return true;
            }
            // qmgr renamed it first: look again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                warning!("{id}: {e}");
                return false;
            }
        }
    }
    false
}

/// Records the directories of a move, to be fsynced at the end.
fn touched(run: &mut Run, from: &Path, to: &Path) {
    for p in [from, to] {
        if let Some(d) = p.parent() {
            run.dirs.insert(d.to_path_buf());
        }
    }
}

fn due_now(held: &Locked) -> std::io::Result<()> {
    libmail::queue::dirs::make_due(held.file())
}

fn remove_logs(layout: &QueueLayout, id: &QueueId) {
    for q in [Queue::Defer, Queue::Bounce, Queue::Trace] {
        if let Err(e) = statuslog::remove(layout, q, id) {
            warning!("{id}: remove {} log: {e}", q.name());
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    layout: &QueueLayout,
    op: Op,
    id: &QueueId,
    q: Queue,
    path: &Path,
    held: &Locked,
    mode: u32,
    run: &mut Run,
) -> std::io::Result<&'static str> {
    let line = match op {
        Op::Delete => {
            std::fs::remove_file(path)?;
            touched(run, path, path);
            remove_logs(layout, id);
            "removed"
        }
        Op::Hold => {
            let to = layout.move_path(path, id, Queue::Hold, false)?;
            touched(run, path, &to);
            "placed on hold"
        }
        Op::Release => {
            let to = layout.move_path(path, id, Queue::Deferred, false)?;
            touched(run, path, &to);
            due_now(held)?;
            run.released += 1;
            "released from hold"
        }
        Op::Requeue => {
            let to = layout.move_path(path, id, Queue::Maildrop, false)?;
            touched(run, path, &to);
            due_now(held)?;
            remove_logs(layout, id);
            run.requeued += 1;
            "requeued"
        }
        Op::Expire { release } => {
            held.file()
                .set_permissions(std::fs::Permissions::from_mode(
                    (mode & 0o7777) | lock::FORCED_EXPIRE,
                ))?;
            if release && q == Queue::Hold {
                let to = layout.move_path(path, id, Queue::Deferred, false)?;
                touched(run, path, &to);
                due_now(held)?;
                run.released += 1;
            }
            "expired"
        }
    };
    Ok(line)
}

/// The path of `p` under the queue directory, as messages show it.
fn relative<'a>(layout: &QueueLayout, p: &'a Path) -> std::borrow::Cow<'a, str> {
    p.strip_prefix(layout.root()).unwrap_or(p).to_string_lossy()
}

/// Whether a qmgr is running on this queue (it holds a lock on the
/// `active/` directory itself).
fn qmgr_running(layout: &QueueLayout) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(d) = std::fs::File::open(layout.dir(Queue::Active)) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `d` closes.
    unsafe { libc::flock(d.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// `-s` / `-S`: queue files named after another inode (a queue restored
/// from a backup) get the name of their own inode; files at the wrong
/// hash depth move to the right one; foreign names are reported. Short
/// names are always checked, long ones only with `-S`. The active queue
/// is left alone while a qmgr works on it.
fn structure(layout: &QueueLayout, strict: bool, run: &mut Run) {
    let mut renamed = 0usize;
    let skip_active = qmgr_running(layout);
    for q in MAIL_QUEUES {
        if q == Queue::Active && skip_active {
            continue;
        }
        let found: Vec<Found> = layout.scan_all(q).filter_map(|r| r.ok()).collect();
        for f in found {
            let (id, path) = match f {
                Found::Complete { id, path } => (id, path),
                // Incomplete files may be being written under their name
                // (Postfix renames them too; Facteur leaves them to -p).
                Found::Incomplete { .. } | Found::Temporary { .. } => continue,
                Found::Other { path } => {
                    warning!("bogus file name: {}", relative(layout, &path));
                    continue;
                }
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let check_inode = id.style() == libmail::queue::IdStyle::Short || strict;
            let want = if check_inode && id.inode() != Some(meta.ino()) {
                id.with_inode(meta.ino())
            } else {
                id
            };
            if want == id && path == layout.path_of(q, &id) {
                continue;
            }
            let Ok(AdminLock::Held(_held)) = lock::for_admin(&path, LOCK_WAIT) else {
                continue;
            };
            match layout.move_path(&path, &want, q, false) {
                Ok(to) => {
                    touched(run, &path, &to);
                    if want != id {
                        renamed += 1;
                        move_logs(layout, &id, &want);
                    }
                }
                Err(e) => warning!("rename {}: {e}", relative(layout, &path)),
            }
        }
    }
    if renamed > 0 {
        say(&format!(
            "Renamed to match inode number: {renamed} message{}",
            plural(renamed)
        ));
        warning!("QUEUE FILE NAMES WERE CHANGED TO MATCH INODE NUMBERS");
    }
}

/// The status logs follow a message that was renamed.
fn move_logs(layout: &QueueLayout, from: &QueueId, to: &QueueId) {
    for q in [Queue::Defer, Queue::Bounce, Queue::Trace] {
        let src = layout.path_of(q, from);
        if src.exists() {
            if let Err(e) = layout.move_path(&src, to, q, false) {
                warning!("{from}: rename {} log: {e}", q.name());
            }
        }
    }
}

/// `-p`: temporary files and files never marked complete, older than
/// [`PURGE_AGE`], are leftovers of a crash: remove them.
fn purge_old(layout: &QueueLayout) {
    let now = SystemTime::now();
    let old = |t: SystemTime| now.duration_since(t).is_ok_and(|age| age > PURGE_AGE);
    let mut n = 0usize;
    for q in MAIL_QUEUES {
        let found: Vec<Found> = layout.scan_all(q).filter_map(|r| r.ok()).collect();
        for f in found {
            let path = match f {
                Found::Temporary { path, mtime } if old(mtime) => path,
                Found::Incomplete { path, mtime, .. } if old(mtime) => path,
                _ => continue,
            };
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    info!("removed old temporary file: {}", relative(layout, &path));
                    n += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warning!("remove {}: {e}", relative(layout, &path)),
            }
        }
    }
    if n > 0 {
        say(&format!("Purged: {n} temporary file{}", plural(n)));
    }
}
