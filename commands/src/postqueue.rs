//! postqueue(1) and mailq(1): the queue listing (`-p`, and `mailq`,
//! `sendmail -bp`), its JSON form (`-j`), and the flush (`-f`), in
//! Postfix's exact formats. See `docs/man/postqueue.1.md`.
//!
//! ```text
//! postqueue [-v] [-c config_dir] -p | -j | -f | -s site | -i queue_id
//! ```
//!
//! Postfix asks its showq daemon for the listing; Facteur has no showq and
//! reads the queue directory itself, as Postfix's postqueue does for root
//! when the mail system is down (without that warning). Queues are listed
//! in showq's order — maildrop, active, incoming, deferred, hold — and
//! within a queue by queue ID. A file that cannot be read is skipped with
//! a warning; the listing goes on.

use std::fmt::Write as _;
use std::io::{self, Write};

use libmail::cli::{getopt, Opt};
use libmail::config;
use libmail::config::params::Params;
use libmail::queue::statuslog;
use libmail::queue::{Access, Limits, Queue, QueueFile, QueueId, QueueLayout};

const USAGE: &str =
    "usage: postqueue -f | postqueue -i queueid | postqueue -j | postqueue -p | postqueue -s site";

/// showq's order.
const QUEUES: [Queue; 5] = [
    Queue::Maildrop,
    Queue::Active,
    Queue::Incoming,
    Queue::Deferred,
    Queue::Hold,
];

/// sysexits(3).
const EX_USAGE: i32 = 64;
const EX_UNAVAILABLE: i32 = 69;
const EX_CONFIG: i32 = 78;

/// One message as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub queue: Queue,
    pub id: String,
    pub arrival: i64,
    pub size: u64,
    pub sender: String,
    /// Pending recipients with their delay reason, if one is known.
    pub recipients: Vec<(String, Option<String>)>,
}

/// Every complete message of the queues showq lists. Files are read on
/// as many threads as there are CPUs (the listing keeps its order): on a
/// large queue the time goes into opening and reading each file.
pub fn collect(layout: &QueueLayout) -> Vec<Listed> {
    let mut found: Vec<(Queue, QueueId, std::path::PathBuf)> = Vec::new();
    for q in QUEUES {
        let mut files: Vec<(QueueId, std::path::PathBuf)> =
            layout.scan(q).filter_map(|r| r.ok()).collect();
        files.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        found.extend(files.into_iter().map(|(id, p)| (q, id, p)));
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let chunk = found.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = found
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|(q, id, p)| read_one(layout, *q, id, p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// One message, or `None` when it is incomplete or unreadable (warned).
fn read_one(
    layout: &QueueLayout,
    q: Queue,
    id: &QueueId,
    path: &std::path::Path,
) -> Option<Listed> {
    let qf = match QueueFile::open(path, Access::ReadOnly, &Limits::default()) {
        Ok(f) => f,
        Err(e) if e.is_incomplete() => return None,
        Err(e) => {
            eprintln!("postqueue: warning: {}: {e}", path.display());
            return None;
        }
    };
    let env = qf.envelope();
    let reasons = statuslog::read(layout, Queue::Defer, id).unwrap_or_default();
    let reason_of = |offset: u64| {
        reasons
            .iter()
            .rev()
            .find(|e| e.offset == offset)
            .map(|e| e.reason.clone())
    };
    Some(Listed {
        queue: q,
        id: id.as_str().to_string(),
        arrival: env.arrival.0 as i64,
        size: env.size.content_size,
        sender: env.sender.clone(),
        recipients: env
            .pending()
            .map(|(_, r)| (r.address.clone(), reason_of(r.offset)))
            .collect(),
    })
}

/// `asctime()` of a time in local time, cut to 20 characters as showq's
/// `%20.20s` cuts it: `Mon Jan  8 12:34:56 ` (with the trailing space).
fn asctime20(t: i64) -> String {
    // SAFETY: localtime_r with valid pointers.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        let tt = t as libc::time_t;
        libc::localtime_r(&tt, &mut tm);
        tm
    };
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} ",
        DAYS[tm.tm_wday.clamp(0, 6) as usize],
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The mark after the queue ID: `*` active, `!` hold, nothing otherwise
/// (the ID then pads to its column on its own, as in showq).
fn status_mark(q: Queue) -> &'static str {
    match q {
        Queue::Active => "*",
        Queue::Hold => "!",
        _ => "",
    }
}

fn shown_sender(s: &str) -> &str {
    if s.is_empty() {
        "MAILER-DAEMON"
    } else {
        s
    }
}

/// The `-p` listing, exactly as Postfix's showq prints it.
pub fn format_listing(msgs: &[Listed]) -> String {
    if msgs.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let long = msgs.iter().any(|m| m.id.len() > 12);
    let mut out = String::new();
    // showq's header, `%-11s %7s %-20s %s` (`%-17s %8s %-19s %s` with
    // long queue IDs), already laid out.
    out.push_str(if long {
        "-Queue ID-        --Size-- ---Arrival Time---- --Sender/Recipient------\n"
    } else {
        "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
    });
    let mut total = 0u64;
    for m in msgs {
        total += m.size;
        let id = format!("{}{}", m.id, status_mark(m.queue));
        let when = asctime20(m.arrival);
        if long {
            let _ = writeln!(
                out,
                "{:<17} {:>8} {:.19} {}",
                id,
                m.size,
                when,
                shown_sender(&m.sender)
            );
        } else {
            let _ = writeln!(
                out,
                "{:<11} {:>7} {:.20} {}",
                id,
                m.size,
                when,
                shown_sender(&m.sender)
            );
        }
        let mut last_reason: Option<&str> = None;
        for (addr, reason) in &m.recipients {
            match reason.as_deref() {
                Some(r) if last_reason != Some(r) => {
                    let pad = 76usize.saturating_sub(r.len());
                    let _ = writeln!(out, "{:pad$}({r})", "");
                    last_reason = Some(r);
                }
                None if last_reason.is_some() => {
                    let r = "reason unavailable";
                    let _ = writeln!(out, "{:pad$}({r})", "", pad = 76 - r.len());
                    last_reason = None;
                }
                _ => {}
            }
            let _ = writeln!(out, "{:41}{addr}", "");
        }
        out.push('\n');
    }
    let n = msgs.len();
    let _ = writeln!(
        out,
        "-- {} Kbytes in {} Request{}.",
        total / 1024,
        n,
        if n == 1 { "" } else { "s" }
    );
    out
}

/// A JSON string as Postfix writes it: escapes for `"` and `\`, `?` for
/// anything not printable.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push('?'),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The `-j` listing: one JSON object per line.
pub fn format_json(msgs: &[Listed]) -> String {
    let mut out = String::new();
    for m in msgs {
        let rcpts: Vec<String> = m
            .recipients
            .iter()
            .map(|(a, r)| match r {
                Some(r) => format!(
                    "{{\"address\": {}, \"delay_reason\": {}}}",
                    json_str(a),
                    json_str(r)
                ),
                None => format!("{{\"address\": {}}}", json_str(a)),
            })
            .collect();
        let _ = writeln!(
            out,
            "{{\"queue_name\": {}, \"queue_id\": {}, \"arrival_time\": {}, \"message_size\": {}, \"forced_expire\": false, \"sender\": {}, \"recipients\": [{}]}}",
            json_str(m.queue.name()),
            json_str(&m.id),
            m.arrival,
            m.size,
            json_str(shown_sender(&m.sender)),
            rcpts.join(", ")
        );
    }
    out
}

/// What postqueue was asked.
enum Mode {
    List,
    Json,
    Flush,
}

/// `postqueue ARGS`; also `mailq` (`list_only`) and `sendmail -bp`.
pub fn main(args: Vec<String>) -> i32 {
    run(args, false)
}

/// mailq(1): `postqueue -p` with sendmail's config flag `-C`.
pub fn mailq(args: Vec<String>) -> i32 {
    run(args, true)
}

fn run(args: Vec<String>, mailq: bool) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let spec = if mailq { "C:v" } else { "c:fi:jps:v" };
    let parsed = match getopt(&args, spec) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("postqueue: fatal: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    let mut mode = if mailq { Some(Mode::List) } else { None };
    let mut config_dir = None;
    for o in &parsed.opts {
        match o {
            Opt::WithArg('c' | 'C', d) => config_dir = Some(d.clone()),
            Opt::Flag('p') => mode = Some(Mode::List),
            Opt::Flag('j') => mode = Some(Mode::Json),
            Opt::Flag('f') => mode = Some(Mode::Flush),
            Opt::WithArg('s', _) | Opt::WithArg('i', _) => {
                eprintln!(
                    "postqueue: fatal: -s and -i need the flush service, which Facteur does not have yet; use postqueue -f"
                );
                return EX_UNAVAILABLE;
            }
            _ => {}
        }
    }
    let Some(mode) = mode else {
        eprintln!("postqueue: fatal: {USAGE}");
        return EX_USAGE;
    };
    let dir = config::config_directory(config_dir.as_deref());
    let params = match Params::load(&dir) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("postqueue: fatal: {}", d.postfix_located());
            return EX_CONFIG;
        }
    };
    let layout = match QueueLayout::from_params(&params) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("postqueue: fatal: {e}");
            return EX_CONFIG;
        }
    };
    match mode {
        Mode::Flush => match libmail::ipc::flush(layout.root()) {
            Ok(()) => 0,
            Err(_) => {
                eprintln!("postqueue: fatal: Cannot flush mail queue - mail system is down");
                EX_UNAVAILABLE
            }
        },
        Mode::List | Mode::Json => {
            let msgs = collect(&layout);
            let text = match mode {
                Mode::List => format_listing(&msgs),
                _ => format_json(&msgs),
            };
            let mut so = io::stdout().lock();
            if so
                .write_all(text.as_bytes())
                .and_then(|_| so.flush())
                .is_err()
            {
                return EX_UNAVAILABLE;
            }
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(
        queue: Queue,
        id: &str,
        size: u64,
        sender: &str,
        rcpts: &[(&str, Option<&str>)],
    ) -> Listed {
        Listed {
            queue,
            id: id.into(),
            arrival: 1_704_717_296, // a fixed time; printed in local time
            size,
            sender: sender.into(),
            recipients: rcpts
                .iter()
                .map(|(a, r)| (a.to_string(), r.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn empty_queue() {
        assert_eq!(format_listing(&[]), "Mail queue is empty\n");
        assert_eq!(format_json(&[]), "");
    }

    #[test]
    fn listing_has_postfix_columns_markers_reasons_and_trailer() {
        let when = asctime20(1_704_717_296);
        let msgs = vec![
            msg(
                Queue::Active,
                "4F2A51C0D2",
                1234,
                "alice@example.com",
                &[("bob@example.org", None)],
            ),
            msg(
                Queue::Hold,
                "3C1B2A0E11",
                567,
                "",
                &[
                    (
                        "carol@example.net",
                        Some("connect to mx.example.net[192.0.2.25]:25: Connection refused"),
                    ),
                    (
                        "dave@example.net",
                        Some("connect to mx.example.net[192.0.2.25]:25: Connection refused"),
                    ),
                    ("erin@example.net", None),
                ],
            ),
        ];
        let got = format_listing(&msgs);
        let want = format!(
            "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n\
             4F2A51C0D2*    1234 {when} alice@example.com\n\
             {sp41}bob@example.org\n\
             \n\
             3C1B2A0E11!     567 {when} MAILER-DAEMON\n\
             {sp16}(connect to mx.example.net[192.0.2.25]:25: Connection refused)\n\
             {sp41}carol@example.net\n\
             {sp41}dave@example.net\n\
             {sp58}(reason unavailable)\n\
             {sp41}erin@example.net\n\
             \n\
             -- 1 Kbytes in 2 Requests.\n",
            sp41 = " ".repeat(41),
            sp16 = " ".repeat(16),
            sp58 = " ".repeat(58),
        );
        assert_eq!(got, want);
        // The reason line ends at column 78.
        let reason_line = got.lines().find(|l| l.contains("(connect")).unwrap();
        assert_eq!(reason_line.len(), 78);
        assert_eq!(when.len(), 20);
        assert!(when.ends_with(' '));
    }

    #[test]
    fn one_request_is_singular() {
        let got = format_listing(&[msg(
            Queue::Deferred,
            "ABCDE12345",
            10,
            "a@b",
            &[("c@d", None)],
        )]);
        assert!(got.ends_with("-- 0 Kbytes in 1 Request.\n"), "{got}");
        assert!(got.contains("\nABCDE12345       10 "), "{got}");
    }

    #[test]
    fn json_lines_in_postfix_member_order() {
        let got = format_json(&[msg(
            Queue::Deferred,
            "3C1B2A0E11",
            567,
            "",
            &[
                ("carol@example.net", Some("refused \"x\"\t")),
                ("d@e", None),
            ],
        )]);
        assert_eq!(
            got,
            "{\"queue_name\": \"deferred\", \"queue_id\": \"3C1B2A0E11\", \"arrival_time\": 1704717296, \
             \"message_size\": 567, \"forced_expire\": false, \"sender\": \"MAILER-DAEMON\", \"recipients\": \
             [{\"address\": \"carol@example.net\", \"delay_reason\": \"refused \\\"x\\\"?\"}, {\"address\": \"d@e\"}]}\n"
        );
    }
}
