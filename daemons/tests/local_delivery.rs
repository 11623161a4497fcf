//! The `local` binary end to end: a private instance (config dir, queue,
//! spool, aliases as texthash), the daemon started with a listening
//! socket on fd 3 as master would, queue files written into `active/`,
//! delivery requests sent as qmgr sends them, and the results checked in
//! the reply, the mailboxes and the log.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use libmail::deliver::{outcomes_from_attrs, Outcome, Rcpt, Request, Status};
use libmail::ipc::attr::Conn;
use libmail::queue::{IdStyle, NewRecipient, Ownership, Queue, QueueLayout, Writer};

struct Instance {
    dir: PathBuf,
    layout: QueueLayout,
    child: Child,
    socket: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn me() -> String {
    // SAFETY: getuid cannot fail; getpwuid's result is read at once.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        assert!(!pw.is_null());
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn start(name: &str, extra_main_cf: &str, aliases: &str) -> Instance {
    let dir = std::env::temp_dir().join(format!("facteur-local-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["etc", "queue", "spool", "fwd"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let d = dir.display();
    std::fs::write(
        dir.join("etc/aliases"),
        aliases.replace("$T", &d.to_string()),
    )
    .unwrap();
    let main_cf = format!(
        "queue_directory = {d}/queue\n\
         mail_spool_directory = {d}/spool\n\
         alias_maps = texthash:{d}/etc/aliases\n\
         forward_path = {d}/fwd/$user.forward\n\
         maillog_file = {d}/maillog\nmaillog_file_prefixes = /tmp, /var, /dev/stdout\n\
         myhostname = test.example\n\
         mydomain = example\n\
         mydestination = test.example, localhost\n\
         deliver_lock_attempts = 2\n\
         allow_mail_to_files = alias, forward, include\n\
         {}\n",
        extra_main_cf.replace("$T", &d.to_string())
    );
    std::fs::write(dir.join("etc/main.cf"), main_cf).unwrap();
    // As root, alias deliveries run as default_privs (nobody): let them
    // write in the scratch directory.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let layout = QueueLayout::new(dir.join("queue"), "deferred, defer", 1).unwrap();
    layout.create_or_repair(&Ownership::CurrentUser).unwrap();
    let socket = dir.join("local.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fd = listener.as_raw_fd();
    // The status pipe (fd 4): the daemon writes "R" when it is ready.
    let mut p = [0; 2];
    // SAFETY: pipe with a valid array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (status_rd, status_wr) = (p[0], p[1]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_local"));
    cmd.args([
        "-c",
        &dir.join("etc").display().to_string(),
        "-n",
        "local",
        "-t",
        "unix",
    ])
    .env("MAIL_CONFIG", dir.join("etc"));
    // SAFETY: only dup2/fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move both out of the way first: either may sit on 3 or 4.
            let l = libc::fcntl(fd, libc::F_DUPFD, 10);
            let w = libc::fcntl(status_wr, libc::F_DUPFD, 10);
            if l < 0 || w < 0 || libc::dup2(l, 3) < 0 || libc::dup2(w, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(l);
            libc::close(w);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(listener);
    // SAFETY: our descriptors; wait for "R" (or EOF if the daemon died).
    unsafe {
        libc::close(status_wr);
        let mut b = 0u8;
        let n = libc::read(status_rd, (&mut b as *mut u8).cast(), 1);
        libc::close(status_rd);
        assert_eq!((n, b), (1, b'R'), "local did not start");
    }
    Instance {
        dir,
        layout,
        child,
        socket,
    }
}

impl Instance {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// Queues a message for `rcpts` and asks local to deliver it.
    fn deliver(&self, sender: &str, rcpts: &[&str], message: &str) -> (String, Vec<Outcome>) {
        let mut w = Writer::create(&self.layout, Queue::Active, IdStyle::Short).unwrap();
        w.arrival_time(std::time::SystemTime::now()).unwrap();
        w.sender(sender).unwrap();
        for r in rcpts {
            w.recipient(&NewRecipient::new(r)).unwrap();
        }
        w.start_content().unwrap();
        for line in message.lines() {
            w.content_line(line.as_bytes()).unwrap();
        }
        w.start_extracted().unwrap();
        let id = w.id().as_str().to_string();
        let done = w.finish().unwrap().sync().unwrap();
        drop(done);
        let req = Request {
            queue_name: "active".into(),
            queue_id: id.clone(),
            transport: "local".into(),
            nexthop: "test.example".into(),
            sender: sender.into(),
            arrival: libmail::deliver::now_f64(),
            active_time: libmail::deliver::now_f64(),
            size: message.len() as u64,
            rcpts: rcpts
                .iter()
                .enumerate()
                .map(|(i, r)| Rcpt {
                    address: r.to_string(),
                    offset: 100 + i as u64,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let s = connect(&self.socket);
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut conn = Conn::new(s);
        let hello = conn.expect().unwrap();
        assert_eq!(
            hello,
            libmail::deliver::greeting(),
            "the agent greets first"
        );
        conn.send(&req.to_attrs()).unwrap();
        let reply = conn.expect().unwrap();
        (id, outcomes_from_attrs(&reply).unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("maillog")).unwrap_or_default()
    }
}

fn connect(p: &Path) -> UnixStream {
    UnixStream::connect(p).unwrap()
}

fn one(o: &[Outcome]) -> &Outcome {
    assert_eq!(o.len(), 1, "{o:?}");
    &o[0]
}

/// As root, files an alias writes must belong to default_privs (nobody).
fn give_to_default_privs(p: &Path) {
    // SAFETY: getpwnam's result is read at once; chown of our file.
    unsafe {
        if libc::geteuid() != 0 {
            return;
        }
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null());
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(libc::chown(c.as_ptr(), (*pw).pw_uid, (*pw).pw_gid), 0);
    }
}

const MSG: &str = "Subject: test\nFrom: a@b\n\nhello\nFrom the body\n";

#[test]
fn local_delivers_to_mailboxes_files_commands_and_aliases() {
    let user = me();
    let aliases = format!(
        "two {user}, $T/file.mbox\n\
         cmd \"|cat > $T/cmd.out; echo $RECIPIENT >> $T/cmd.out\"\n\
         fail |echo no such thing; exit 1\n\
         inc :include:$T/inc.list\n\
         loopa loopb\n\
         loopb loopa\n\
         md $T/maildir/\n\
         big $T/big.mbox\n"
    );
    let inst = start("main", "mailbox_size_limit = 2000", &aliases);
    std::fs::write(
        inst.path("inc.list"),
        format!("# list\n{}/inc.mbox\n", inst.dir.display()),
    )
    .unwrap();
    std::fs::write(inst.path("big.mbox"), vec![b'x'; 1990]).unwrap();
    give_to_default_privs(&inst.path("big.mbox"));

    // 1. The user's spool mailbox (mbox).
    let rcpt = format!("{user}@test.example");
    let (id, o) = inst.deliver("sender@remote.example", &[&rcpt], MSG);
    let o = one(&o);
    assert_eq!(
        (o.status, o.dsn.as_str(), o.reason.as_str()),
        (Status::Sent, "2.0.0", "delivered to mailbox")
    );
    assert_eq!(o.offset, 100);
    let mbox = std::fs::read_to_string(inst.path(&format!("spool/{user}"))).unwrap();
    assert!(mbox.starts_with("From sender@remote.example "), "{mbox}");
    let body: Vec<&str> = mbox.lines().skip(1).collect();
    assert_eq!(
        body,
        vec![
            "Return-Path: <sender@remote.example>",
            &format!("X-Original-To: {rcpt}"),
            &format!("Delivered-To: {rcpt}"),
            "Subject: test",
            "From: a@b",
            "",
            "hello",
            ">From the body",
            "",
        ]
    );
    let log = inst.log();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("{id}: to=<{rcpt}>")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(" test postfix/local["), "{line}");
    assert!(
        line.contains(&format!("]: {id}: to=<{rcpt}>, relay=local, delay=")),
        "{line}"
    );
    let delays = line
        .split("delays=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert_eq!(delays.split('/').count(), 4, "{line}");
    assert!(
        line.ends_with(", dsn=2.0.0, status=sent (delivered to mailbox)"),
        "{line}"
    );

    // 2. An alias to two targets: the mailbox and a file.
    let (id, o) = inst.deliver("", &["two@test.example"], MSG);
    assert_eq!(one(&o).status, Status::Sent, "{o:?}");
    let file = std::fs::read_to_string(inst.path("file.mbox")).unwrap();
    assert!(file.starts_with("From MAILER-DAEMON "), "{file}");
    assert!(file.contains("Delivered-To: two@test.example\n"), "{file}");
    let log = inst.log();
    assert!(
        log.contains(&format!(
            "{id}: to=<{rcpt}>, orig_to=<two@test.example>, relay=local"
        )),
        "{log}"
    );
    assert!(log.contains(&format!("{id}: to=<two@test.example>, relay=local, ")));
    assert!(log.contains(&format!(
        "status=sent (delivered to file: {}/file.mbox)",
        inst.dir.display()
    )));
    let mbox = std::fs::read_to_string(inst.path(&format!("spool/{user}"))).unwrap();
    assert_eq!(mbox.matches("\nFrom ").count() + 1, 2, "{mbox}");

    // 3. A command: the message on stdin, the environment set.
    let (_, o) = inst.deliver("s@x.example", &["cmd@test.example"], MSG);
    let o = one(&o);
    assert_eq!(o.status, Status::Sent, "{o:?}");
    assert!(
        o.reason.starts_with("delivered to command: cat > "),
        "{}",
        o.reason
    );
    let out = std::fs::read_to_string(inst.path("cmd.out")).unwrap();
    assert!(out.starts_with("From s@x.example "), "{out}");
    assert!(out.contains("Return-Path: <s@x.example>\n"));
    assert!(out.contains("\nhello\n"));
    assert!(out.ends_with("cmd@test.example\n"), "{out}");

    // 4. A failing command bounces with its output.
    let (_, o) = inst.deliver("s@x.example", &["fail@test.example"], MSG);
    let o = one(&o);
    assert_eq!(
        (o.status, o.dsn.as_str()),
        (Status::Bounced, "5.3.0"),
        "{o:?}"
    );
    assert!(
        o.reason.contains("Command output: no such thing"),
        "{}",
        o.reason
    );

    // 5. :include:
    let (_, o) = inst.deliver("s@x.example", &["inc@test.example"], MSG);
    assert_eq!(one(&o).status, Status::Sent, "{o:?}");
    assert!(std::fs::read_to_string(inst.path("inc.mbox"))
        .unwrap()
        .contains("\nhello\n"));

    // 6. Maildir through a /dir/ item.
    let (_, o) = inst.deliver("s@x.example", &["md@test.example"], MSG);
    assert_eq!(one(&o).status, Status::Sent, "{o:?}");
    let new: Vec<_> = std::fs::read_dir(inst.path("maildir/new"))
        .unwrap()
        .collect();
    assert_eq!(new.len(), 1);
    let m = std::fs::read_to_string(new[0].as_ref().unwrap().path()).unwrap();
    assert!(m.starts_with("Return-Path: <s@x.example>\n"), "{m}");
    assert!(m.ends_with("hello\nFrom the body\n"), "{m}");

    // 7. Unknown user.
    let (id, o) = inst.deliver("s@x.example", &["nobody-here-xyz@test.example"], MSG);
    let o = one(&o);
    assert_eq!((o.status, o.dsn.as_str()), (Status::Bounced, "5.1.1"));
    assert_eq!(o.reason, "unknown user: \"nobody-here-xyz\"");
    assert!(inst.log().contains(&format!(
        "{id}: to=<nobody-here-xyz@test.example>, relay=local"
    )));

    // 8. An alias loop ends (at an unknown user), it does not spin.
    let (_, o) = inst.deliver("s@x.example", &["loopa@test.example"], MSG);
    let o = one(&o);
    assert_eq!(o.status, Status::Bounced, "{o:?}");
    assert_eq!(o.reason, "unknown user: \"loopa\"");

    // 9. Delivered-To loop.
    let looped = format!("Delivered-To: {rcpt}\nSubject: x\n\nbody\n");
    let (_, o) = inst.deliver("s@x.example", &[&rcpt], &looped);
    let o = one(&o);
    assert_eq!((o.status, o.dsn.as_str()), (Status::Bounced, "5.4.6"));
    assert_eq!(o.reason, format!("mail forwarding loop for {rcpt}"));

    // 10. mailbox_size_limit: bounced, the file left as it was.
    let (_, o) = inst.deliver("s@x.example", &["big@test.example"], MSG);
    let o = one(&o);
    assert_eq!(
        (o.status, o.dsn.as_str()),
        (Status::Bounced, "5.2.2"),
        "{o:?}"
    );
    assert!(o.reason.contains("File too large"), "{}", o.reason);
    assert_eq!(
        std::fs::read(inst.path("big.mbox")).unwrap(),
        vec![b'x'; 1990]
    );

    // 11. Two recipients in one request, answered in order.
    let (_, o) = inst.deliver("s@x.example", &["nobody-here-xyz@test.example", &rcpt], MSG);
    assert_eq!(o.len(), 2);
    assert_eq!((o[0].offset, o[0].status), (100, Status::Bounced));
    assert_eq!((o[1].offset, o[1].status), (101, Status::Sent));
}

#[test]
fn local_follows_dot_forward_and_home_maildir() {
    let user = me();
    let inst = start(
        "fwd",
        "home_mailbox = ../../../../../../../../..$T/home-md/",
        "",
    );
    // .forward: a file and the user's own mailbox (backslash form).
    std::fs::write(
        inst.path(&format!("fwd/{user}.forward")),
        format!("{}/fwd.mbox, \\{user}\n", inst.dir.display()),
    )
    .unwrap();
    let rcpt = format!("{user}@test.example");
    let (_, o) = inst.deliver("s@x.example", &[&rcpt], MSG);
    assert_eq!(one(&o).status, Status::Sent, "{o:?}");
    assert!(std::fs::read_to_string(inst.path("fwd.mbox"))
        .unwrap()
        .contains("\nhello\n"));
    let log = inst.log();
    assert!(log.contains("status=sent (delivered to maildir)"), "{log}");
}

/// `mailbox_command` delivers the mailbox through a command (shell syntax
/// untouched: `$EXTENSION` is the shell's, from the environment), and
/// `mailbox_command_maps` gives one user a command of its own.
#[test]
fn mailbox_command_and_its_maps() {
    let me = me();
    let inst = start(
        "mbxcmd",
        "recipient_delimiter = +\n\
         mailbox_command = /bin/sh -c 'cat > $T/cmd-out.$EXTENSION'\n\
         mailbox_command_maps = inline:{ {nosuchuser=/bin/false} }\n",
        "",
    );
    let (_, o) = inst.deliver("s@x", &[&format!("{me}+tag@test.example")], MSG);
    assert_eq!(one(&o).status, Status::Sent, "{o:?}\n{}", inst.log());
    let out = std::fs::read_to_string(inst.path("cmd-out.tag")).unwrap();
    assert!(out.contains("Subject: test"), "{out}");
    assert!(
        inst.log()
            .contains("status=sent (delivered to command: /bin/sh -c 'cat > "),
        "{}",
        inst.log()
    );
    drop(inst);
    // The map's command for this user wins over mailbox_command.
    let inst = start(
        "mbxcmdmap",
        &format!(
            "mailbox_command = /bin/false\n\
             mailbox_command_maps = inline:{{ {{{me}=/bin/sh -c 'cat > $T/map-out'}} }}\n"
        ),
        "",
    );
    let (_, o) = inst.deliver("s@x", &[&format!("{me}@test.example")], MSG);
    assert_eq!(one(&o).status, Status::Sent, "{o:?}\n{}", inst.log());
    assert!(std::fs::read_to_string(inst.path("map-out"))
        .unwrap()
        .contains("hello"));
}

/// `command_execution_directory`, expanded for the recipient, is where
/// delivery commands run; one that cannot be entered defers.
#[test]
fn commands_run_in_command_execution_directory() {
    let me = me();
    let inst = start(
        "cmddir",
        "mailbox_command = /bin/sh -c 'pwd > $T/pwd-out'\n\
         command_execution_directory = $T/work/$user\n",
        "",
    );
    let work = inst.path(&format!("work/{me}"));
    std::fs::create_dir_all(&work).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(inst.path("work"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_, o) = inst.deliver("s@x", &[&format!("{me}@test.example")], MSG);
    assert_eq!(one(&o).status, Status::Sent, "{o:?}\n{}", inst.log());
    let pwd = std::fs::read_to_string(inst.path("pwd-out")).unwrap();
    assert_eq!(
        pwd.trim(),
        work.canonicalize().unwrap().display().to_string()
    );
    // A directory that does not exist: deferred, as in Postfix.
    std::fs::remove_dir(&work).unwrap();
    let (_, o) = inst.deliver("s@x", &[&format!("{me}@test.example")], MSG);
    assert_eq!(one(&o).status, Status::Deferred, "{o:?}\n{}", inst.log());
}
