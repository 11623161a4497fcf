//! qshape(1): the age histogram of the queue by recipient (or sender)
//! domain, with Postfix's qshape layout, reading Facteur's queue files.
//! See `docs/man/qshape.1.md`.
//!
//! ```text
//! qshape [-s] [-p] [-m min_subdomains] [-b bucket_count] [-t bucket_time]
//!        [-l] [-w terminal_width] [-N batch_msg_count] [-n batch_top_domains]
//!        [-c config_dir] [queue_name ...]
//! ```
//!
//! Postfix's qshape is a Perl script that parses Postfix's queue-file
//! records, so it cannot read Facteur's; this is the same report from
//! `libmail::queue`. The rules are Postfix's: a message of age `a`
//! minutes with bucket time `t` counts in the first bucket when `a < t`,
//! else in bucket `2 + floor(log2(a / t))` (linear: `floor(a / t) + 1`),
//! capped at the last; each pending recipient (or the sender, `-s`)
//! counts once; domains are lower-cased, the null sender is
//! `MAILER-DAEMON`; rows are sorted by total, then by name length.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;

use libmail::cli::{getopt, Opt};
use libmail::config;
use libmail::config::params::Params;
use libmail::queue::{Access, Limits, Queue, QueueFile, QueueLayout};

const USAGE: &str = "usage: qshape [-s] [-p] [-m <min_subdomains>] [-b <bucket_count>] \
[-t <bucket_time>] [-l] [-w <terminal_width>] [-N <batch_msg_count>] [-n <batch_top_domains>] \
[-c <config_directory>] [<queue_name> ...]";

/// The report's settings.
#[derive(Debug, Clone)]
pub struct Shape {
    pub buckets: usize,
    /// Minutes.
    pub tick: u64,
    pub linear: bool,
    pub senders: bool,
    pub parents: bool,
    pub min_subdomains: usize,
    pub width: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            buckets: 10,
            tick: 5,
            linear: false,
            senders: false,
            parents: false,
            min_subdomains: 5,
            width: 80,
        }
    }
}

/// Counts per row: index 0 is the total, 1..=buckets the ages.
#[derive(Debug, Default)]
pub struct Table {
    rows: HashMap<String, Vec<u64>>,
    /// Subdomains seen under each `.parent` row (`-p`).
    subs: HashMap<String, usize>,
}

impl Shape {
    /// The bucket (1-based) of a message that arrived at `arrival`.
    pub fn bucket(&self, arrival: i64, now: i64) -> usize {
        let minutes = (now - arrival) as f64 / (60.0 * self.tick as f64);
        if minutes < 1.0 {
            return 1;
        }
        let b = if self.linear {
            minutes as usize + 1
        } else {
            2 + minutes.log2() as usize
        };
        b.min(self.buckets)
    }

    /// Counts one message: its arrival time and its sender or pending
    /// recipients (as the report is asked for).
    pub fn count(&self, t: &mut Table, arrival: i64, now: i64, addresses: &[String]) {
        let b = self.bucket(arrival, now);
        let width = self.buckets + 1;
        for addr in addresses {
            let total = t
                .rows
                .entry("TOTAL".into())
                .or_insert_with(|| vec![0; width]);
            total[0] += 1;
            total[b] += 1;
            let mut d = domain_of(addr);
            let mut new = false;
            loop {
                let row = t.rows.entry(d.clone()).or_insert_with(|| vec![0; width]);
                row[0] += 1;
                row[b] += 1;
                let old = row[0] > 1;
                if new {
                    *t.subs.entry(d.clone()).or_insert(0) += 1;
                }
                new = !old;
                if !self.parents {
                    break;
                }
                match parent_of(&d) {
                    Some(p) => d = p,
                    None => break,
                }
            }
        }
    }

    /// The report.
    pub fn render(&self, t: &Table) -> String {
        let mut heads: Vec<String> = Vec::new();
        let mut fmt_widths: Vec<usize> = Vec::new();
        let zero = vec![0u64; self.buckets + 1];
        let total = t.rows.get("TOTAL").unwrap_or(&zero);
        let mut dw = self.width as i64;
        let mut tick_label: u64 = 0;
        for (i, count) in total.iter().enumerate().take(self.buckets + 1) {
            let head = if i == 0 {
                "T".to_string()
            } else if i < self.buckets {
                tick_label.to_string()
            } else {
                format!("{tick_label}+")
            };
            let mut l = count.to_string().len();
            if head.len() >= l {
                l = head.len();
            }
            let l = if l > 2 { l + 1 } else { 3 };
            heads.push(head);
            fmt_widths.push(l);
            dw -= l as i64;
            if i + 1 < self.buckets {
                tick_label += if tick_label > 0 && !self.linear {
                    tick_label
                } else {
                    self.tick
                };
            }
            if i == 0 {
                tick_label = self.tick;
            }
        }
        let dw = (dw.max(18)) as usize;
        let mut out = String::new();
        let line = |out: &mut String, name: &str, cells: &[String]| {
            let len = name.chars().count();
            if len > dw {
                let chars: Vec<char> = name.chars().collect();
                if name.starts_with('.') {
                    out.push_str(".+");
                    out.extend(&chars[len - dw + 2..]);
                } else {
                    out.push('+');
                    out.extend(&chars[len - dw + 1..]);
                }
            } else {
                out.push_str(&" ".repeat(dw - len));
                out.push_str(name);
            }
            for (c, w) in cells.iter().zip(&fmt_widths) {
                let _ = write!(out, "{c:>w$}");
            }
            out.push('\n');
        };
        line(&mut out, "", &heads);
        let mut names: Vec<&String> = t.rows.keys().collect();
        names.sort_by(|a, b| {
            t.rows[*b][0]
                .cmp(&t.rows[*a][0])
                .then(a.len().cmp(&b.len()))
                .then(a.cmp(b))
        });
        // TOTAL sorts first: it counts everything.
        for name in names {
            if name.starts_with('.') && t.subs.get(name).copied().unwrap_or(0) < self.min_subdomains
            {
                continue;
            }
            let cells: Vec<String> = t.rows[name].iter().map(|n| n.to_string()).collect();
            line(&mut out, name, &cells);
        }
        if !t.rows.contains_key("TOTAL") {
            let cells: Vec<String> = zero.iter().map(|n| n.to_string()).collect();
            line(&mut out, "TOTAL", &cells);
        }
        out
    }
}

/// The row name of an address: its domain, lower-cased, dots tidied;
/// `MAILER-DAEMON` for the null address.
fn domain_of(addr: &str) -> String {
    let a = addr.to_lowercase();
    if a.is_empty() {
        return "MAILER-DAEMON".into();
    }
    let mut d = match a.rfind('@') {
        Some(i) => a[i + 1..].to_string(),
        None => a,
    };
    while d.contains("..") {
        d = d.replace("..", ".");
    }
    let t = d.trim_matches('.');
    if t.is_empty() {
        d
    } else {
        t.to_string()
    }
}

/// `a.b.c` → `.b.c`, `.b.c` → `.c`? No: like Postfix, a parent needs two
/// labels left: `a.b.c` → `.b.c`; `.b.c` and `b.c` have no parent row.
fn parent_of(d: &str) -> Option<String> {
    let s = d.strip_prefix('.').unwrap_or(d);
    let i = s.find('.')?;
    let rest = &s[i + 1..];
    if rest.contains('.') {
        Some(format!(".{rest}"))
    } else {
        None
    }
}

pub fn main(args: Vec<String>) -> i32 {
    if args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return 0;
    }
    let parsed = match getopt(&args, "b:c:lm:n:N:pst:w:") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("qshape: {e}\n{USAGE}");
            return 1;
        }
    };
    let mut shape = Shape::default();
    let mut config_dir = None;
    let num = |v: &str| v.parse::<u64>().ok().filter(|&n| n > 0);
    for o in &parsed.opts {
        match o {
            Opt::Flag('s') => shape.senders = true,
            Opt::Flag('p') => shape.parents = true,
            Opt::Flag('l') => shape.linear = true,
            Opt::WithArg('b', v) => {
                if let Some(n) = num(v) {
                    shape.buckets = n.min(1000) as usize;
                }
            }
            Opt::WithArg('t', v) => {
                if let Some(n) = num(v) {
                    shape.tick = n;
                }
            }
            Opt::WithArg('m', v) => {
                if let Some(n) = num(v) {
                    shape.min_subdomains = n as usize;
                }
            }
            Opt::WithArg('w', v) => {
                if let Some(n) = num(v).filter(|&n| n > 80) {
                    shape.width = n.min(10_000) as usize;
                }
            }
            Opt::WithArg('c', v) => config_dir = Some(v.clone()),
            _ => {}
        }
    }
    let mut queues = Vec::new();
    for name in &parsed.operands {
        match Queue::from_name(name) {
            Some(q) => queues.push(q),
            None => {
                eprintln!("qshape: unknown queue: {name}");
                return 1;
            }
        }
    }
    if queues.is_empty() {
        queues = vec![Queue::Incoming, Queue::Active];
    }
    let dir = config::config_directory(config_dir.as_deref());
    let params = match Params::load(&dir) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("qshape: {}", d.postfix_located());
            return 1;
        }
    };
    let layout = match QueueLayout::from_params(&params) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qshape: {e}");
            return 1;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut table = Table::default();
    for q in queues {
        for (_, path) in layout.scan(q).filter_map(|r| r.ok()) {
            let Ok(qf) = QueueFile::open(&path, Access::ReadOnly, &Limits::default()) else {
                continue;
            };
            let env = qf.envelope();
            let addrs: Vec<String> = if shape.senders {
                vec![env.sender.clone()]
            } else {
                env.pending().map(|(_, r)| r.address.clone()).collect()
            };
            if addrs.is_empty() {
                continue;
            }
            shape.count(&mut table, env.arrival.0 as i64, now, &addrs);
        }
    }
    let text = shape.render(&table);
    let mut so = std::io::stdout().lock();
    if so
        .write_all(text.as_bytes())
        .and_then(|_| so.flush())
        .is_err()
    {
        return 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_and_cap() {
        let s = Shape::default();
        let now = 1_000_000;
        let at = |minutes: f64| now - (minutes * 60.0) as i64;
        assert_eq!(s.bucket(at(0.0), now), 1);
        assert_eq!(s.bucket(at(4.9), now), 1);
        assert_eq!(s.bucket(at(5.0), now), 2);
        assert_eq!(s.bucket(at(9.9), now), 2);
        assert_eq!(s.bucket(at(10.0), now), 3);
        assert_eq!(s.bucket(at(39.0), now), 4);
        assert_eq!(s.bucket(at(40.0), now), 5);
        assert_eq!(s.bucket(at(100_000.0), now), 10);
        let l = Shape {
            linear: true,
            ..Shape::default()
        };
        assert_eq!(l.bucket(at(12.0), now), 3);
    }

    #[test]
    fn layout_matches_postfix_header_and_rows() {
        let s = Shape::default();
        let mut t = Table::default();
        let now = 10_000_000;
        // 3 for yahoo.com (one 30 min old, two 2 days old), 1 for a.example.
        s.count(&mut t, now - 30 * 60, now, &["x@Yahoo.com".into()]);
        s.count(
            &mut t,
            now - 2 * 86400,
            now,
            &["y@yahoo.com".into(), "z@a.example".into()],
        );
        s.count(&mut t, now - 2 * 86400, now, &["w@yahoo.com".into()]);
        let got = s.render(&t);
        // Column widths: T is 3 wide, then 3 3 3 3 3 4 4 4 5 6; the domain
        // column takes the rest of 80: 39.
        let want = [
            format!("{:>39}  T  5 10 20 40 80 160 320 640 1280 1280+", ""),
            format!("{:>39}  4  0  0  0  1  0   0   0   0    0     3", "TOTAL"),
            format!(
                "{:>39}  3  0  0  0  1  0   0   0   0    0     2",
                "yahoo.com"
            ),
            format!(
                "{:>39}  1  0  0  0  0  0   0   0   0    0     1",
                "a.example"
            ),
        ];
        assert_eq!(got, want.join("\n") + "\n");
    }

    #[test]
    fn empty_queue_prints_the_header_and_a_zero_total() {
        let got = Shape::default().render(&Table::default());
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("T  5 10 20 40 80 160 320 640 1280 1280+"));
        assert!(lines[1].ends_with("TOTAL  0  0  0  0  0  0   0   0   0    0     0"));
        assert_eq!(lines[0].len(), 80);
    }

    #[test]
    fn domains_are_tidied_and_long_ones_cut_from_the_left() {
        assert_eq!(domain_of(""), "MAILER-DAEMON");
        assert_eq!(domain_of("a@X..Example.COM."), "x.example.com");
        let s = Shape::default();
        let mut t = Table::default();
        let long = format!("u@{}.example", "a".repeat(60));
        s.count(&mut t, 0, 0, &[long]);
        let got = s.render(&t);
        let row = got.lines().nth(2).unwrap();
        assert!(row.starts_with("+aaaa"), "{row}");
        assert_eq!(row.len(), 80);
    }

    #[test]
    fn parent_domains_need_min_subdomains() {
        let s = Shape {
            parents: true,
            min_subdomains: 2,
            ..Shape::default()
        };
        let mut t = Table::default();
        for d in ["a.big.example", "b.big.example", "c.small.example"] {
            s.count(&mut t, 0, 0, &[format!("u@{d}")]);
        }
        let got = s.render(&t);
        assert!(got.contains(" .big.example  2"), "{got}");
        assert!(
            !got.lines()
                .any(|l| l.trim_start().starts_with(".small.example")),
            "{got}"
        );
    }
}
