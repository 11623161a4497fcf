//! End to end: sendmail → maildrop → pickup → cleanup → incoming → qmgr
//! → active → local / virtual / error / discard, through a real master
//! and real processes, and the log lines Postfix's log readers expect.

mod common;

use common::{user, wait_for, Instance};

fn msg(subject: &str) -> String {
    format!("Subject: {subject}\n\nHello from the test suite.\nFrom here on, a body line.\n")
}

#[test]
fn sendmail_to_maildir_adds_headers_and_logs_like_postfix() {
    let mut i = Instance::new("maildir", "");
    i.start();
    let me = user();
    i.send(&["-f", "alice@example.org", &me], &msg("first"));
    let got = i.wait_maildir(&i.user_maildir(), 1);
    let m = &got[0];
    let rcpt = format!("{me}@mx.example.test");
    assert!(m.starts_with("Return-Path: <alice@example.org>\n"), "{m}");
    assert!(m.contains(&format!("Delivered-To: {rcpt}\n")), "{m}");
    assert!(
        m.contains("Received: by mx.example.test (Postfix, from userid "),
        "{m}"
    );
    assert!(m.contains("\nMessage-Id: <"), "{m}");
    assert!(m.contains("\nDate: "), "{m}");
    let from = m.lines().find(|l| l.starts_with("From: ")).unwrap_or("");
    assert!(from.contains("alice@example.org"), "{m}");
    assert!(m.contains("Subject: first\n"), "{m}");
    assert!(m.ends_with("\nFrom here on, a body line.\n"), "{m}");

    // The log lines, in Postfix's shapes, for one queue ID.
    let pick = i.wait_log(r"postfix/pickup\[\d+\]: [0-9A-F]+: uid=\d+ from=<alice@example.org>$");
    let id = pick.split(": ").nth(1).unwrap().to_string();
    i.wait_log(&format!(
        r"postfix/cleanup\[\d+\]: {id}: message-id=<\d{{14}}\.{id}@mx\.example\.test>$"
    ));
    i.wait_log(&format!(
        r"postfix/qmgr\[\d+\]: {id}: from=<alice@example.org>, size=\d+, nrcpt=1 \(queue active\)$"
    ));
    i.wait_log(&format!(
        r"postfix/local\[\d+\]: {id}: to=<{rcpt}>, orig_to=<{me}>, relay=local, delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent \(delivered to maildir\)$"
    ));
    i.wait_log(&format!(r"postfix/qmgr\[\d+\]: {id}: removed$"));
    // Nothing is left in the queue.
    wait_for(10, "an empty queue", || {
        ["maildrop", "incoming", "active", "deferred"]
            .iter()
            .all(|q| i.queue_files(q).is_empty())
    });
}

#[test]
fn mbox_delivery_when_the_spool_is_not_a_maildir() {
    let mut i = Instance::new("mbox", "");
    // mail_spool_directory without the trailing slash: mbox files.
    let spool = i.mail.display().to_string();
    let main = std::fs::read_to_string(format!("{}/main.cf", i.etc)).unwrap();
    std::fs::write(
        format!("{}/main.cf", i.etc),
        main.replace(
            &format!("mail_spool_directory = {spool}/"),
            &format!("mail_spool_directory = {spool}"),
        ),
    )
    .unwrap();
    i.start();
    let me = user();
    i.send(
        &["-f", "bob@example.org", &me],
        "Subject: one\n\nFrom the start\nline\n",
    );
    i.send(&["-f", "", &me], "Subject: two\n\nsecond\n");
    i.kick();
    let path = i.mail.join(&me);
    wait_for(30, "two messages in the mbox", || {
        std::fs::read_to_string(&path)
            .map(|t| t.matches("\nSubject: ").count() == 2)
            .unwrap_or(false)
    });
    let t = std::fs::read_to_string(&path).unwrap();
    // Either may be delivered first.
    let from_lines: Vec<&str> = t.lines().filter(|l| l.starts_with("From ")).collect();
    assert_eq!(from_lines.len(), 2, "{t}");
    assert!(
        from_lines
            .iter()
            .any(|l| l.starts_with("From bob@example.org ")),
        "{t}"
    );
    assert!(
        from_lines
            .iter()
            .any(|l| l.starts_with("From MAILER-DAEMON ")),
        "{t}"
    );
    assert!(t.contains("\n>From the start\n"), "{t}");
}

#[test]
fn aliases_expand_to_files_commands_includes_and_users() {
    let mut i = Instance::new("aliases", "");
    let me = user();
    let top = i.top.display().to_string();
    i.file("include.list", &format!("{top}/from-include.mbox\n"));
    i.file(
        "aliases",
        &format!(
            "team: {me}, {top}/team.mbox, \"|cat > {top}/piped.txt\", :include:{top}/include.list\n\
             loop1: loop2\nloop2: loop1\n"
        ),
    );
    let main = format!("{}/main.cf", i.etc);
    let text = std::fs::read_to_string(&main)
        .unwrap()
        .replace(
            "alias_maps =\n",
            &format!("alias_maps = hash:{top}/aliases\n"),
        )
        .replace(
            "alias_database =\n",
            &format!(
                "alias_database = hash:{top}/aliases\n\
                 allow_mail_to_files = alias, forward, include\n"
            ),
        );
    std::fs::write(&main, text).unwrap();
    // Built the way a Postfix user builds it.
    let out = std::process::Command::new(common::program("newaliases"))
        .args(["-C", &i.etc])
        .output()
        .unwrap();
    assert!(out.status.success(), "newaliases: {out:?}");
    i.start();
    i.send(&["-f", "carol@example.org", "team"], &msg("to the team"));
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: to the team"), "{}", got[0]);
    for f in ["team.mbox", "from-include.mbox", "piped.txt"] {
        let p = i.top.join(f);
        wait_for(30, f, || {
            std::fs::read_to_string(&p)
                .map(|t| t.contains("Subject: to the team"))
                .unwrap_or(false)
        });
    }
    i.wait_log(r"status=sent \(delivered to command: cat > ");
    i.wait_log(r"status=sent \(delivered to file: ");
}

#[test]
fn virtual_aliases_and_virtual_mailboxes() {
    let mut i = Instance::new("virtual", "");
    let me = user();
    let top = i.top.display().to_string();
    i.file(
        "valias",
        &format!("info@virt.example  {me}, sales@box.example\n"),
    );
    i.file("vmailbox", "sales@box.example  box.example/sales/\n");
    std::fs::create_dir_all(i.top.join("vmail")).unwrap();
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!(
        "virtual_alias_domains = virt.example\nvirtual_alias_maps = texthash:{top}/valias\n\
         virtual_mailbox_domains = box.example\nvirtual_mailbox_maps = texthash:{top}/vmailbox\n\
         virtual_mailbox_base = {top}/vmail\nvirtual_uid_maps = static:{uid}\nvirtual_gid_maps = static:{gid}\n\
         virtual_minimum_uid = 0\n",
        uid = unsafe { libc::getuid() },
        gid = unsafe { libc::getgid() },
    ));
    std::fs::write(&main, text).unwrap();
    i.start();
    i.send(
        &["-f", "dave@example.org", "info@virt.example"],
        &msg("virtual"),
    );
    let local = i.wait_maildir(&i.user_maildir(), 1);
    assert!(local[0].contains("Subject: virtual"));
    let vbox = i.wait_maildir(&i.top.join("vmail/box.example/sales"), 1);
    assert!(vbox[0].contains("Subject: virtual"));
    i.wait_log(r"postfix/virtual\[\d+\]: [0-9A-F]+: to=<sales@box.example>, orig_to=<info@virt.example>, relay=virtual, .*status=sent \(delivered to maildir\)$");
}

#[test]
fn error_discard_and_unavailable_transports() {
    let mut i = Instance::new("transports", "");
    let top = i.top.display().to_string();
    i.file(
        "transport",
        "gone.example  error:5.1.2 this domain is gone\ndrop.example  discard:silently\nlater.example  nosuch:\n",
    );
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!("transport_maps = texthash:{top}/transport\n"));
    std::fs::write(&main, text).unwrap();
    i.start();
    i.send(&["-f", "erin@example.org", "a@gone.example"], &msg("gone"));
    i.send(&["-f", "erin@example.org", "b@drop.example"], &msg("drop"));
    i.send(
        &["-f", "erin@example.org", "c@later.example"],
        &msg("later"),
    );
    i.kick();
    i.wait_log(r"postfix/error\[\d+\]: [0-9A-F]+: to=<a@gone.example>, relay=none, .*dsn=5\.1\.2, status=bounced \(this domain is gone\)$");
    i.wait_log(r"postfix/discard\[\d+\]: [0-9A-F]+: to=<b@drop.example>, relay=none, .*dsn=2\.0\.0, status=sent \(silently\)$");
    i.wait_log(r"postfix/qmgr\[\d+\]: [0-9A-F]+: to=<c@later.example>, relay=none, .*dsn=4\.3\.0, status=deferred \(mail transport unavailable\)$");
    // The deferred message waits in deferred/ with its reason logged in defer/.
    wait_for(20, "the message in deferred/", || {
        i.queue_files("deferred").len() == 1
    });
    wait_for(20, "its defer log", || i.queue_files("defer").len() == 1);
    let reason = std::fs::read_to_string(&i.queue_files("defer")[0]).unwrap();
    assert!(
        reason.contains("reason=mail transport unavailable"),
        "{reason}"
    );
}

#[test]
fn header_checks_reject_and_hold_and_pflogsumm_counts_the_log() {
    let mut i = Instance::new("checks", "");
    let top = i.top.display().to_string();
    i.file(
        "header_checks",
        "/^Subject: hold me/ HOLD\n/^Subject: reject me/ REJECT no thanks\n",
    );
    i.file(
        "transport",
        "gone.example  error:5.1.2 gone\ndrop.example  discard:\n",
    );
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!(
        "header_checks = regexp:{top}/header_checks\ntransport_maps = texthash:{top}/transport\n"
    ));
    std::fs::write(&main, text).unwrap();
    i.start();
    let me = user();
    i.send(&["-f", "f@example.org", &me], &msg("one"));
    i.send(&["-f", "f@example.org", &me], &msg("two"));
    // NOTIFY=NEVER: no notice to the remote sender (tests stay on loopback).
    i.send(
        &["-f", "f@example.org", "-N", "never", "x@gone.example"],
        &msg("three"),
    );
    i.send(&["-f", "f@example.org", "y@drop.example"], &msg("four"));
    i.send(&["-f", "f@example.org", &me], &msg("hold me"));
    // Refused by cleanup: returned to the sender, unless (as here, to
    // stay on loopback) NOTIFY=NEVER.
    i.send(
        &["-f", "f@example.org", "-N", "never", &me],
        &msg("reject me"),
    );
    i.wait_maildir(&i.user_maildir(), 2);
    i.wait_log(r"postfix/cleanup\[\d+\]: [0-9A-F]+: reject: header Subject: reject me from local; from=<f@example.org> to=<\S+>: 5\.7\.1 no thanks$");
    i.wait_log(r"postfix/cleanup\[\d+\]: [0-9A-F]+: hold: header Subject: hold me from local; from=<f@example.org> to=<\S+>");
    i.wait_log(r"status=bounced \(gone\)$");
    i.wait_log(r"postfix/discard\[\d+\]: .*status=sent");
    wait_for(20, "the held message in hold/", || {
        i.queue_files("hold").len() == 1
    });
    // Every message is settled: wait for the last removal lines.
    wait_for(20, "four removals", || {
        i.log_text().matches(": removed").count() >= 4
    });
    assert_eq!(
        i.maildir(&i.user_maildir()).len(),
        2,
        "held and rejected mail is not delivered"
    );

    let out = std::process::Command::new("pflogsumm")
        .args(["--detail", "0"])
        .arg(&i.log)
        .output()
        .expect("pflogsumm (scripts/test.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    let count = |what: &str| -> u64 {
        report
            .lines()
            .find_map(|l| {
                let l = l.trim();
                let (n, rest) = l.split_once(char::is_whitespace)?;
                (rest.trim_start().starts_with(what)).then(|| n.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no '{what}' line in pflogsumm's report:\n{report}"))
    };
    // Six received: the rejected message was received by pickup before
    // cleanup refused it, as Postfix counts it too.
    assert_eq!(count("received"), 6, "{report}");
    assert_eq!(count("delivered"), 3, "{report}");
    // Two bounced: the error transport's, and the rejected message's
    // recipient (logged bounced as it is returned, as Postfix logs it).
    assert_eq!(count("bounced"), 2, "{report}");
    assert_eq!(count("held"), 1, "{report}");
    assert_eq!(count("rejected"), 1, "{report}");
}

#[test]
fn dot_forward_to_a_file_and_back_to_the_mailbox() {
    let mut i = Instance::new("forward", "");
    let me = user();
    let top = i.top.display().to_string();
    std::fs::create_dir_all(i.top.join("fwd")).unwrap();
    i.file(
        &format!("fwd/{me}.forward"),
        &format!("{top}/forwarded.mbox, \\{me}\n"),
    );
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!("forward_path = {top}/fwd/$user.forward\n"));
    std::fs::write(&main, text).unwrap();
    i.start();
    i.send(&["-f", "gina@example.org", &me], &msg("forwarded"));
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: forwarded"));
    let p = i.top.join("forwarded.mbox");
    wait_for(30, "the .forward file delivery", || {
        std::fs::read_to_string(&p)
            .map(|t| t.contains("Subject: forwarded"))
            .unwrap_or(false)
    });
    i.wait_log(r"status=sent \(delivered to file: .*forwarded\.mbox\)$");
}

#[test]
fn mailq_and_postqueue_show_deferred_mail_with_its_reason() {
    let mut i = Instance::new("mailq", "");
    let top = i.top.display().to_string();
    i.file("transport", "later.example  nosuch:\n");
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!("transport_maps = texthash:{top}/transport\n"));
    std::fs::write(&main, text).unwrap();
    let run = |prog: &str, args: &[&str]| -> String {
        let out = std::process::Command::new(common::program(prog))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{prog} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    i.start();
    assert_eq!(run("mailq", &["-C", &i.etc]), "Mail queue is empty\n");
    i.send(
        &["-f", "", "c@later.example", "d@later.example"],
        &msg("later"),
    );
    i.kick();
    wait_for(30, "the message in deferred/", || {
        i.queue_files("deferred").len() == 1
    });
    let listing = run("mailq", &["-C", &i.etc]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines[0],
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    );
    let re = regex::Regex::new(
        r"^[0-9A-F]{10,12} +\d+ [A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d  MAILER-DAEMON$",
    )
    .unwrap();
    assert!(re.is_match(lines[1]), "{listing}");
    assert_eq!(
        lines[2],
        format!("{}(mail transport unavailable)", " ".repeat(76 - 26))
    );
    assert_eq!(lines[3], format!("{}c@later.example", " ".repeat(41)));
    assert_eq!(lines[4], format!("{}d@later.example", " ".repeat(41)));
    assert_eq!(lines[5], "");
    assert_eq!(lines[6], "-- 0 Kbytes in 1 Request.");
    assert_eq!(lines.len(), 7, "{listing}");
    // The same through postqueue -p and sendmail -bp.
    assert_eq!(run("postqueue", &["-c", &i.etc, "-p"]), listing);
    assert_eq!(run("sendmail", &["-C", &i.etc, "-bp"]), listing);
    let json = run("postqueue", &["-c", &i.etc, "-j"]);
    assert!(
        json.starts_with("{\"queue_name\": \"deferred\", \"queue_id\": \""),
        "{json}"
    );
    assert!(json.contains("\"sender\": \"MAILER-DAEMON\", \"recipients\": [{\"address\": \"c@later.example\", \"delay_reason\": \"mail transport unavailable\"}"), "{json}");
}

#[test]
fn chroot_column_jails_the_services_and_drops_to_mail_owner() {
    // Debian's master.cf asks for chroot on most services: as root, each
    // such daemon sets itself up, then jails itself in queue_directory
    // and runs as mail_owner; mail still goes through, over sendmail and
    // SMTP, and a bounce notice is still made.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: chroot applies to root only");
        return;
    }
    let Some(owner) = uid_of("postfix") else {
        eprintln!("skipped: no postfix user to be mail_owner");
        return;
    };
    let mut i = Instance::new("chroot", "");
    i.main_cf("mail_owner = postfix\nsetgid_group = postdrop");
    i.with_bounce();
    let port = i.with_smtpd();
    let mc = std::path::Path::new(&i.etc).join("master.cf");
    let text = std::fs::read_to_string(&mc).unwrap();
    let jailed = [
        "pickup", "cleanup", "qmgr", "bounce", "defer", "error", "smtpd",
    ];
    let mut out = String::new();
    for line in text.lines() {
        let mut f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8 && jailed.contains(&f[7]) {
            f[4] = "y";
        }
        out.push_str(&f.join(" "));
        out.push('\n');
    }
    std::fs::write(&mc, out).unwrap();
    let set = std::process::Command::new(common::program("facteur"))
        .args(["-c", &i.etc, "set-permissions"])
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    i.start();
    let me = user();
    i.send(&["-f", "alice@example.org", &me], &msg("jailed sendmail"));
    let (ok, talk) = common::smtp::swaks(
        port,
        &[
            "--from",
            "bob@example.org",
            "--to",
            &format!("{me}@mx.example.test"),
        ],
    );
    assert!(ok, "{talk}");
    i.wait_maildir(&i.user_maildir(), 2);
    // A bounce (local refuses an unknown user): the bounce daemon and
    // cleanup make the notice, jailed.
    i.send(
        &["-f", &me, "nobody-here@mx.example.test"],
        &msg("to no one"),
    );
    i.wait_maildir(&i.user_maildir(), 3);
    // Each jailed daemon that is still running: its root is the queue
    // directory, and it runs as mail_owner (smtpd, cleanup, qmgr and
    // pickup are long-lived).
    let queue = std::fs::canonicalize(&i.queue).unwrap();
    let master = i.master_pid().unwrap();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if ppid != master || !["smtpd", "cleanup", "qmgr", "pickup"].contains(&comm) {
            continue;
        }
        let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
        assert_eq!(root, queue, "{comm}'s root");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let uids: Vec<u32> = uid_line
            .split_whitespace()
            .skip(1)
            .map(|u| u.parse().unwrap())
            .collect();
        assert_eq!(uids, vec![owner; 4], "{comm}: {uid_line}");
        seen.push(comm.to_string());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["cleanup", "pickup", "qmgr", "smtpd"]);
    // Local delivery (chroot n, unprivileged n) still runs unjailed.
    assert!(!i.log_text().contains("chroot is not supported"));
}

/// The uid of a user name, if it exists.
fn uid_of(name: &str) -> Option<u32> {
    let out = std::process::Command::new("id")
        .args(["-u", name])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[test]
fn active_queue_limits_take_mail_in_turns_and_lose_none() {
    // At most one message or two recipients in memory: twelve messages
    // of two recipients each still all arrive, a few at a time.
    let mut i = Instance::new(
        "active-limits",
        "qmgr_message_active_limit = 1\nqmgr_message_recipient_limit = 2\nrecipient_delimiter = +",
    );
    i.start();
    let me = user();
    let also = format!("{me}+also");
    for n in 0..12 {
        i.send(
            &["-f", "alice@example.org", &me, &also],
            &msg(&format!("m{n}")),
        );
    }
    i.kick();
    let got = i.wait_maildir(&i.user_maildir(), 24);
    assert_eq!(got.len(), 24);
}

/// Seconds since midnight of a log line's `Mmm dd hh:mm:ss` stamp.
fn log_second(line: &str) -> i64 {
    let hms = line.split_whitespace().nth(2).unwrap_or_default();
    let mut it = hms.split(':').map(|p| p.parse::<i64>().unwrap_or(0));
    let (h, m, s) = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    h * 3600 + m * 60 + s
}

#[test]
fn destination_rate_delay_spaces_deliveries_to_one_destination() {
    let mut i = Instance::new("ratedelay", "");
    let top = i.top.display().to_string();
    i.file("transport", "slow.example  discard:paced\n");
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!(
        "transport_maps = texthash:{top}/transport\ndiscard_destination_rate_delay = 1s\n"
    ));
    std::fs::write(&main, text).unwrap();
    i.start();
    for n in 0..3 {
        i.send(
            &["-f", "erin@example.org", &format!("r{n}@slow.example")],
            &msg("paced"),
        );
    }
    i.kick();
    let sent = r"postfix/discard\[\d+\]: [0-9A-F]+: to=<r\d@slow\.example>, relay=none, .*status=sent \(paced\)$";
    // One at a time, a second apart at least: the third ends two seconds
    // or more after the first (without the delay all three go at once).
    assert_paced(&i, sent);
}

/// Waits for three log lines matching `sent` and checks that the third
/// came two seconds or more after the first.
fn assert_paced(i: &Instance, sent: &str) {
    let re = regex::Regex::new(sent).unwrap();
    wait_for(30, "three paced deliveries", || {
        i.log_text().lines().filter(|l| re.is_match(l)).count() == 3
    });
    let text = i.log_text();
    let stamps: Vec<i64> = text
        .lines()
        .filter(|l| re.is_match(l))
        .map(log_second)
        .collect();
    let mut spread = stamps[2] - stamps[0];
    if spread < 0 {
        spread += 86_400; // past midnight
    }
    assert!(spread >= 2, "deliveries at {stamps:?}:\n{text}");
}

#[test]
fn transport_rate_delay_spaces_deliveries_over_all_destinations() {
    // Postfix 3.1's TRANSPORT_transport_rate_delay: one delivery at a
    // time over the transport, whatever the destination (three domains
    // here, which a destination rate delay would let go at once).
    let mut i = Instance::new("transportdelay", "");
    let top = i.top.display().to_string();
    i.file(
        "transport",
        "a.example  discard:paced\nb.example  discard:paced\nc.example  discard:paced\n",
    );
    i.main_cf(&format!(
        "transport_maps = texthash:{top}/transport\ndiscard_transport_rate_delay = 1s\n"
    ));
    i.start();
    for d in ["a", "b", "c"] {
        i.send(
            &["-f", "erin@example.org", &format!("r@{d}.example")],
            &msg("paced"),
        );
    }
    i.kick();
    let sent = r"postfix/discard\[\d+\]: [0-9A-F]+: to=<r@[abc]\.example>, relay=none, .*status=sent \(paced\)$";
    assert_paced(&i, sent);
}

#[test]
fn with_a_recipient_limit_of_one_each_recipient_is_its_own_destination() {
    // Postfix: with TRANSPORT_destination_recipient_limit = 1 a destination
    // is a recipient, so the rate delay (like the concurrency limit)
    // applies per recipient, not to the whole domain.
    let mut i = Instance::new("perrcpt", "");
    let top = i.top.display().to_string();
    i.file("transport", "slow.example  discard:paced\n");
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!(
        "transport_maps = texthash:{top}/transport\n\
         discard_destination_rate_delay = 5s\n\
         discard_destination_recipient_limit = 1\n"
    ));
    std::fs::write(&main, text).unwrap();
    i.start();
    i.send(&["-f", "erin@example.org", "a@slow.example"], &msg("a1"));
    i.send(&["-f", "erin@example.org", "a@slow.example"], &msg("a2"));
    i.kick();
    let to_a = r"postfix/discard\[\d+\]: [0-9A-F]+: to=<a@slow\.example>, relay=none, .*status=sent \(paced\)$";
    i.wait_log(to_a);
    // a's second message now waits out a's pause; b is another
    // destination and goes at once, ahead of it.
    i.send(&["-f", "erin@example.org", "b@slow.example"], &msg("b"));
    i.kick();
    let to_b = r"postfix/discard\[\d+\]: [0-9A-F]+: to=<b@slow\.example>, relay=none, .*status=sent \(paced\)$";
    let (ra, rb) = (
        regex::Regex::new(to_a).unwrap(),
        regex::Regex::new(to_b).unwrap(),
    );
    wait_for(30, "both deliveries to a and the one to b", || {
        let t = i.log_text();
        t.lines().filter(|l| ra.is_match(l)).count() == 2 && t.lines().any(|l| rb.is_match(l))
    });
    let text = i.log_text();
    let lines: Vec<&str> = text.lines().collect();
    let b_at = lines.iter().position(|l| rb.is_match(l)).unwrap();
    let a2_at = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| ra.is_match(l))
        .nth(1)
        .map(|(n, _)| n)
        .unwrap();
    assert!(b_at < a2_at, "b waited behind a's pause:\n{text}");
}

#[test]
fn a_local_submission_cleanup_refuses_goes_back_to_its_sender() {
    let mut i = Instance::new("returned", "");
    let top = i.top.display().to_string();
    i.file("header_checks", "/^Subject: forbidden/ REJECT not here\n");
    let main = format!("{}/main.cf", i.etc);
    let mut text = std::fs::read_to_string(&main).unwrap();
    text.push_str(&format!("header_checks = regexp:{top}/header_checks\n"));
    std::fs::write(&main, text).unwrap();
    i.start();
    let me = user();
    // From the local user to a remote address: the notice comes back to
    // the local user (and the refused message never leaves).
    i.send(&["-f", &me, "far@remote.example"], &msg("forbidden"));
    i.wait_log(r"postfix/cleanup\[\d+\]: [0-9A-F]+: reject: header Subject: forbidden from local; from=<\S+> to=<far@remote\.example>: 5\.7\.1 not here$");
    i.wait_log(r"postfix/pickup\[\d+\]: [0-9A-F]+: to=<far@remote\.example>, relay=none, delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=5\.7\.1, status=bounced \(not here\)$");
    i.wait_log(r"postfix/bounce\[\d+\]: [0-9A-F]+: sender non-delivery notification: [0-9A-F]+$");
    let got = i.wait_maildir(&i.user_maildir(), 1);
    let notice = &got[0];
    assert!(notice.contains("Return-Path: <>"), "{notice}");
    assert!(
        notice.contains("<far@remote.example>: not here"),
        "{notice}"
    );
    assert!(notice.contains("Status: 5.7.1"), "{notice}");
    // The notice itself passed the header checks although it returns the
    // refused message (notices are not inspected, as in Postfix).
    assert!(notice.contains("Subject: forbidden"), "{notice}");
    // Nothing is left in maildrop/ nor in bounce/.
    wait_for(20, "an empty maildrop and bounce/", || {
        i.queue_files("maildrop").is_empty() && i.queue_files("bounce").is_empty()
    });
}

/// A started instance with the alias `list` (a remote member, discarded
/// on delivery) and its `owner-list`, plus `extra` main.cf lines; mail
/// from carol@example.org to `list` is submitted.
fn list_instance(tag: &str, extra: &str) -> Instance {
    let mut i = Instance::new(tag, "");
    let top = i.top.display().to_string();
    i.file(
        "aliases",
        // texthash: postmap's format (no colon after the name).
        "list someone@elsewhere.test\nowner-list listadmin@example.org\n",
    );
    i.main_cf(&format!(
        "alias_maps = texthash:{top}/aliases\n\
         transport_maps = inline:{{elsewhere.test=discard:}}\n\
         {extra}"
    ));
    i.start();
    i.send(&["-f", "carol@example.org", "list"], &msg("to the list"));
    i
}

/// Mail an alias forwards goes out from `owner-ALIAS@$myorigin` when
/// that alias exists, or, with `expand_owner_alias = yes`, from the
/// address `owner-ALIAS` expands to (Postfix's local(8)).
#[test]
fn forwarded_alias_mail_is_sent_from_its_owner() {
    for (tag, expand, want) in [
        ("owner", "no", r"owner-list@[^>]+"),
        ("owner-expanded", "yes", r"listadmin@example\.org"),
    ] {
        let i = list_instance(tag, &format!("expand_owner_alias = {expand}"));
        // The forwarded copy: its own queue ID, from the owner, and
        // delivered (discarded) to the list's member.
        i.wait_log(&format!(
            r"postfix/qmgr\[\d+\]: [0-9A-F]+: from=<{want}>, size=\d+, nrcpt=1 \(queue active\)$"
        ));
        i.wait_log(r"to=<someone@elsewhere\.test>, .*status=sent");
    }
}

/// `owner_request_special = no`: `*-request` and `owner-*` split at a `-`
/// delimiter like any address, and an alias's `owner-ALIAS` is not its
/// sender.
#[test]
fn owner_request_special_off_splits_and_keeps_the_sender() {
    let i = list_instance(
        "ownreq-off",
        "recipient_delimiter = -\nowner_request_special = no",
    );
    let me = user();
    i.send(
        &["-f", "carol@example.org", &format!("{me}-request")],
        &msg("to request"),
    );
    let got = i.wait_maildir(&i.user_maildir(), 1);
    assert!(got[0].contains("Subject: to request"), "{}", got[0]);
    i.wait_log(r"to=<someone@elsewhere\.test>, .*status=sent");
    let log = i.log_text();
    assert!(!log.contains("owner-list"), "{log}");
    assert_eq!(
        log.matches("from=<carol@example.org>, size=").count(),
        3,
        "the list's message, its forwarded copy and the request: {log}"
    );
}
