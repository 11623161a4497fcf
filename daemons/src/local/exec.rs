//! How local(8) acts on a target: as whom (user database, privileges),
//! how (as root: the delivering thread alone switches its effective IDs
//! with raw system calls, so the threads serving other connections stay
//! root; the spool mailbox, whose writer needs root and the user in turn,
//! in a forked child), and the `|command` runner with its environment,
//! output capture and time limit.

use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libmail::mailbox::{copy_message, CopyOptions, MailboxError, Source};

/// Most bytes of a command's output kept for the bounce reason.
const MAX_OUTPUT: usize = 1024;

/// A user account (from getpwnam/getpwuid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

fn passwd_from(pw: &libc::passwd) -> Passwd {
    // SAFETY: getpw*_r filled these with valid C strings (or null).
    let s = |p: *const libc::c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    Passwd {
        name: s(pw.pw_name),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: s(pw.pw_dir),
        shell: s(pw.pw_shell),
    }
}

/// getpwnam(3), thread-safe form. `Err` for a lookup error (not "no such user").
pub fn getpwnam(name: &str) -> io::Result<Option<Passwd>> {
    if name.is_empty() || name.len() > 256 || name.contains('\0') || name.contains('/') {
        return Ok(None);
    }
    let c = CString::new(name).map_err(|_| io::Error::other("bad user name"))?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: a zeroed passwd is valid storage; buffers are ours.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if res.is_null() {
        return match r {
            0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    Ok(Some(passwd_from(&pw)))
}

/// getpwuid(3), thread-safe form.
pub fn getpwuid(uid: u32) -> Option<Passwd> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: as in getpwnam.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if res.is_null() {
        None
    } else {
        Some(passwd_from(&pw))
    }
}

/// Whether this process can switch users (runs as root).
pub fn privileged() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The calling thread's effective user and groups, switched to another
/// user until dropped. Linux keeps credentials per thread; glibc's
/// `seteuid` and friends change every thread of the process (they signal
/// each one), the raw system calls change only the caller. So one
/// delivery thread writes as the recipient while the others go on as
/// root — what Postfix's single-threaded local gets from `seteuid`,
/// without a process per delivery. The saved user ID stays 0, which is
/// what lets the guard switch back.
struct ThreadCreds {
    groups: Vec<libc::gid_t>,
}

fn raw(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const KEEP: libc::c_long = libc::uid_t::MAX as libc::c_long;

impl ThreadCreds {
    fn switch(uid: u32, gid: u32) -> io::Result<ThreadCreds> {
        // SAFETY: getgroups into a buffer of the size it reports.
        let groups = unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut());
            let mut g = vec![0 as libc::gid_t; n.max(0) as usize];
            let n = libc::getgroups(g.len() as libc::c_int, g.as_mut_ptr());
            g.truncate(n.max(0) as usize);
            g
        };
        let saved = ThreadCreds { groups };
        let gids = [gid as libc::gid_t];
        // SAFETY: raw per-thread credential calls with valid arguments;
        // on any failure the guard (dropped on return) restores root.
        unsafe {
            raw(libc::syscall(
                libc::SYS_setgroups,
                1 as libc::c_long,
                gids.as_ptr(),
            ))?;
            raw(libc::syscall(
                libc::SYS_setresgid,
                KEEP,
                gid as libc::c_long,
                KEEP,
            ))?;
            raw(libc::syscall(
                libc::SYS_setresuid,
                KEEP,
                uid as libc::c_long,
                KEEP,
            ))?;
        }
        Ok(saved)
    }
}

impl Drop for ThreadCreds {
    fn drop(&mut self) {
        // SAFETY: back to root (the saved set-user-ID is 0), then the
        // groups; a failure here would leave this thread unprivileged,
        // which fails later deliveries safely rather than wrongly.
        unsafe {
            let _ = libc::syscall(libc::SYS_setresuid, KEEP, 0 as libc::c_long, KEEP);
            let _ = libc::syscall(libc::SYS_setresgid, KEEP, 0 as libc::c_long, KEEP);
            let _ = libc::syscall(
                libc::SYS_setgroups,
                self.groups.len() as libc::c_long,
                self.groups.as_ptr(),
            );
        }
    }
}

/// Runs `f` as user `who` and returns its result. As root: on this
/// thread with its effective IDs switched (see [`ThreadCreds`]); with
/// `keep_root` (the spool mailbox, whose writer switches IDs itself with
/// glibc calls that would touch every thread) in a forked child instead.
/// Unprivileged: right here.
pub fn as_user<F>(who: Option<(u32, u32)>, keep_root: bool, f: F) -> Result<String, MailboxError>
where
    F: FnOnce() -> Result<String, MailboxError>,
{
    let Some((uid, gid)) = who.filter(|_| privileged()) else {
        return f();
    };
    if !keep_root {
        let _creds = ThreadCreds::switch(uid, gid)
            .map_err(|e| MailboxError::new("4.3.0", format!("cannot change user ID: {e}")))?;
        return f();
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        let e = io::Error::last_os_error();
        return Err(MailboxError::new(
            "4.3.0",
            format!("cannot create pipe: {e}"),
        ));
    }
    // SAFETY: both descriptors are new and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only runs `f` and exits with _exit; see the module doc.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err(MailboxError::new("4.3.0", format!("cannot fork: {e}")));
    }
    if pid == 0 {
        drop(rd);
        let result = (|| {
            // SAFETY: plain system calls in the single-threaded child.
            unsafe {
                let gids = [gid];
                if libc::setgroups(1, gids.as_ptr()) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if !keep_root && (libc::setgid(gid) < 0 || libc::setuid(uid) < 0) {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })()
        .map_err(|e| MailboxError::new("4.3.0", format!("cannot change user ID: {e}")))
        .and_then(|_| f());
        let msg = match result {
            Ok(s) => format!("ok\t{s}"),
            Err(e) => format!("{}\t{}", e.dsn, e.text),
        };
        let mut w = std::fs::File::from(wr);
        let _ = w.write_all(msg.as_bytes());
        drop(w);
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(0) }
    }
    drop(wr);
    let mut msg = Vec::new();
    let _ = std::fs::File::from(rd)
        .take(64 * 1024)
        .read_to_end(&mut msg);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let msg = String::from_utf8_lossy(&msg);
    match msg.split_once('\t') {
        Some(("ok", s)) => Ok(s.to_string()),
        Some((dsn, text)) if dsn.len() <= 9 && (dsn.starts_with('4') || dsn.starts_with('5')) => {
            Err(MailboxError::new(dsn, text))
        }
        _ => Err(MailboxError::new(
            "4.3.0",
            format!("delivery process ended abnormally (wait status {status})"),
        )),
    }
}

/// What running a command gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// Exit status 0.
    Ok,
    /// A failure, with its enhanced status code and reason.
    Failed(MailboxError),
}

/// How to run one command.
pub struct CommandSpec<'a> {
    pub command: &'a str,
    /// (uid, gid) to run as when privileged.
    pub who: Option<(u32, u32)>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub time_limit: Duration,
    /// `local_command_shell` in words (the command is appended as one
    /// more argument); empty: `/bin/sh -c`.
    pub shell: &'a [String],
}

fn clean_output(out: &[u8]) -> String {
    let s = String::from_utf8_lossy(out);
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs `/bin/sh -c COMMAND` (or `local_command_shell COMMAND`) with the message (`prefix`, then the
/// content with a `From ` line first, as Postfix hands it to procmail)
/// on standard input, standard output and error captured (the first
/// [`MAX_OUTPUT`] bytes) for the reason text, killed (its whole process
/// group) after the time limit.
pub fn run_command(
    spec: &CommandSpec<'_>,
    prefix: &[u8],
    src: &mut (dyn Source + Send),
) -> CommandResult {
    let fail = |dsn: &str, text: String| CommandResult::Failed(MailboxError::new(dsn, text));
    let mut fds = [0; 2];
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return fail(
            "4.3.0",
            format!("cannot create pipe: {}", io::Error::last_os_error()),
        );
    }
    // SAFETY: new descriptors, ours.
    let (out_rd, out_wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let out_wr2 = match out_wr.try_clone() {
        Ok(f) => f,
        Err(e) => return fail("4.3.0", format!("cannot duplicate descriptor: {e}")),
    };
    let mut cmd = match spec.shell.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c");
            c
        }
    };
    cmd.arg(spec.command)
        .env_clear()
        .envs(spec.env.iter().map(|(a, b)| (a.as_str(), b.as_str())))
        .current_dir(&spec.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out_wr))
        .stderr(Stdio::from(out_wr2))
        .process_group(0);
    if let Some((uid, gid)) = spec.who.filter(|_| privileged()) {
        cmd.uid(uid).gid(gid);
    }
    let spawned = cmd.spawn();
    drop(cmd); // closes our copies of the output pipe's write end
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail("4.3.0", format!("cannot run command: {e}")),
    };
    let pid = child.id() as libc::pid_t;
    let stdin = child.stdin.take();
    let deadline = Instant::now() + spec.time_limit;
    let mut output = Vec::new();
    let mut timed_out = false;
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(stdin) = stdin {
                let mut w = io::BufWriter::new(stdin);
                let opts = CopyOptions::default();
                if copy_message(&mut w, prefix, src, opts).is_ok() {
                    let _ = w.flush();
                }
            }
        });
        let mut rd = std::fs::File::from(out_rd);
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                break;
            }
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&rd),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(1000) as libc::c_int;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            if r < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if r == 0 {
                continue;
            }
            match rd.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(output.len());
                    output.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if timed_out {
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    });
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return fail("4.3.0", format!("cannot wait for command: {e}")),
    };
    let out = clean_output(&output);
    let with_output = |t: String| {
        if out.is_empty() {
            t
        } else {
            format!("{t}. Command output: {out}")
        }
    };
    if timed_out {
        return fail(
            "5.3.0",
            format!("Command time limit exceeded: \"{}\"", spec.command),
        );
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => CommandResult::Ok,
        (Some(75), _) => fail("4.3.0", with_output("temporary failure".into())),
        (Some(67), _) => fail("5.1.1", with_output("user unknown".into())),
        (Some(c), _) => fail(
            "5.3.0",
            with_output(format!(
                "Command died with status {c}: \"{}\"",
                spec.command
            )),
        ),
        (None, Some(sig)) => fail(
            "4.3.0",
            with_output(format!(
                "Command died with signal {sig}: \"{}\"",
                spec.command
            )),
        ),
        _ => fail("4.3.0", "Command ended abnormally".into()),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_thread_writes_as_the_user_while_the_others_stay_root() {
        if !privileged() {
            eprintln!("SKIPPED: needs root (CI runs as root)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let file = dir.join("as-nobody");
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let f2 = file.clone();
        let t = std::thread::spawn(move || {
            let r = as_user(Some((65534, 65534)), false, || {
                std::fs::write(&f2, "x").map_err(|e| MailboxError::new("4.3.0", e.to_string()))?;
                // SAFETY: geteuid cannot fail.
                let inside = unsafe { libc::geteuid() };
                tx.send(inside).unwrap();
                go_rx.recv().unwrap();
                Ok(String::new())
            });
            r.unwrap();
            // SAFETY: geteuid cannot fail.
            unsafe { libc::geteuid() }
        });
        assert_eq!(
            rx.recv().unwrap(),
            65534,
            "the delivering thread is the user"
        );
        // SAFETY: geteuid cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the other threads stay root");
        go_tx.send(()).unwrap();
        assert_eq!(t.join().unwrap(), 0, "back to root after the delivery");
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), 65534);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;
    use libmail::mailbox::SliceSource;

    fn spec(c: &str, limit: Duration) -> CommandSpec<'_> {
        CommandSpec {
            command: c,
            who: None,
            env: vec![("FOO".into(), "bar".into())],
            cwd: "/".into(),
            time_limit: limit,
            shell: &[],
        }
    }

    #[test]
    fn local_command_shell_runs_the_command() {
        let dir = std::env::temp_dir().join(format!("facteur-local-shell-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        // A "shell" that marks what it runs, then runs it with sh.
        let shell: Vec<String> = ["/usr/bin/env", "SHELLED=yes", "/bin/sh", "-c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let c = format!(
            "cat > {}; echo $SHELLED >> {}",
            out.display(),
            out.display()
        );
        let mut s = spec(&c, Duration::from_secs(30));
        s.shell = &shell;
        let r = run_command(&s, b"", &mut SliceSource::new(b"body\n"));
        assert_eq!(r, CommandResult::Ok);
        assert_eq!(std::fs::read(&out).unwrap(), b"body\nyes\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn commands_get_the_message_and_exit_codes_map() {
        let dir = std::env::temp_dir().join(format!("facteur-local-cmd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let c = format!("cat > {}; echo $FOO >> {}", out.display(), out.display());
        let r = run_command(
            &spec(&c, Duration::from_secs(30)),
            b"P: 1\n",
            &mut SliceSource::new(b"S: x\n\nbody\n"),
        );
        assert_eq!(r, CommandResult::Ok);
        assert_eq!(std::fs::read(&out).unwrap(), b"P: 1\nS: x\n\nbody\nbar\n");

        let r = run_command(
            &spec("echo oops; exit 3", Duration::from_secs(30)),
            b"",
            &mut SliceSource::new(b""),
        );
        match r {
            CommandResult::Failed(e) => {
                assert_eq!(e.dsn, "5.3.0");
                assert_eq!(
                    e.text,
                    "Command died with status 3: \"echo oops; exit 3\". Command output: oops"
                );
            }
            other => panic!("{other:?}"),
        }
        let r = run_command(
            &spec("exit 75", Duration::from_secs(30)),
            b"",
            &mut SliceSource::new(b""),
        );
        assert!(matches!(r, CommandResult::Failed(e) if e.dsn == "4.3.0"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn commands_are_killed_at_the_time_limit() {
        let t = Instant::now();
        let r = run_command(
            &spec("sleep 30", Duration::from_millis(300)),
            b"",
            &mut SliceSource::new(b""),
        );
        assert!(t.elapsed() < Duration::from_secs(20));
        match r {
            CommandResult::Failed(e) => assert!(e.text.contains("time limit"), "{}", e.text),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn user_lookup() {
        // SAFETY: getuid cannot fail.
        let me = getpwuid(unsafe { libc::getuid() }).unwrap();
        assert_eq!(getpwnam(&me.name).unwrap().unwrap().uid, me.uid);
        assert_eq!(getpwnam("no-such-user-facteur-xyz").unwrap(), None);
        assert_eq!(getpwnam("../etc").unwrap(), None);
    }
}
