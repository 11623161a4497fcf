//! Client names from the hosts file, without leaving the event loop.
//!
//! smtpd names each client the way Postfix does: the PTR name from the
//! system resolver (getnameinfo), kept when it resolves back to the
//! address. Those calls block, so they run on tokio's blocking pool: two
//! hand-offs between threads per connection, and the hosts file read
//! twice. When the name service reads `files` first for hosts (the usual
//! `hosts: files dns`), a client the hosts file lists gets its answer
//! from that file and nothing else: the first line with its address names
//! it, and that name resolves back to it (same line). For such clients
//! (local submission, a webmail on the same machine, a filter's
//! reinjection) this answers from a copy of the file held here, reread
//! when it changes (checked at most once a second); every other client
//! still goes to getnameinfo.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest hosts file read (bigger: not used, getnameinfo answers).
const MAX_HOSTS: u64 = 4 << 20;

/// How often the file's identity is checked.
const RECHECK: Duration = Duration::from_secs(1);

/// The hosts file's answers by address (`None`: not usable here).
pub struct Hosts {
    path: String,
    state: Mutex<State>,
}

struct State {
    checked: Option<Instant>,
    /// dev, inode, mtime (ns), length of the file read.
    stamp: Option<(u64, u64, i128, u64)>,
    /// Address → its first name (lower case), when `files` comes first.
    names: Option<HashMap<IpAddr, String>>,
}

impl Hosts {
    /// The system's /etc/hosts, used only when /etc/nsswitch.conf puts
    /// `files` first for hosts (or says nothing of hosts: glibc's
    /// default is `dns [!UNAVAIL=return] files`, so not then either).
    pub fn system() -> Hosts {
        let files_first = read_bounded("/etc/nsswitch.conf")
            .map(|c| files_first(&c))
            .unwrap_or(false);
        Hosts::new(if files_first { "/etc/hosts" } else { "" })
    }

    fn new(path: &str) -> Hosts {
        Hosts {
            path: path.to_string(),
            state: Mutex::new(State {
                checked: None,
                stamp: None,
                names: None,
            }),
        }
    }

    /// The client's name when the hosts file lists its address.
    pub fn name(&self, addr: IpAddr) -> Option<String> {
        if self.path.is_empty() {
            return None;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.is_none_or(|t| t.elapsed() >= RECHECK) {
            st.checked = Some(Instant::now());
            let stamp = stamp(&self.path);
            if stamp != st.stamp {
                st.names = stamp
                    .filter(|s| s.3 <= MAX_HOSTS)
                    .and_then(|_| read_bounded(&self.path))
                    .map(|text| parse(&text));
                st.stamp = stamp;
            }
        }
        st.names.as_ref()?.get(&addr).cloned()
    }
}

/// The file's text, when it is at most [`MAX_HOSTS`] bytes (it may grow
/// between its stat and this read).
fn read_bounded(path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_HOSTS + 1)
        .read_to_string(&mut text)
        .ok()?;
    (text.len() as u64 <= MAX_HOSTS).then_some(text)
}

fn stamp(path: &str) -> Option<(u64, u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
    Some((m.dev(), m.ino(), mtime, m.len()))
}

/// Whether the `hosts:` line of nsswitch.conf names `files` first.
fn files_first(conf: &str) -> bool {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find_map(|l| l.strip_prefix("hosts:"))
        .and_then(|rest| rest.split_whitespace().next())
        == Some("files")
}

/// A client name as smtpd keeps it (lower case, no trailing dot), or
/// `None` when it is not a host name smtpd would use; for the names of
/// the hosts file and of getnameinfo alike.
pub fn client_name(raw: &str) -> Option<String> {
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    ok.then_some(name)
}

/// Address → first name of the first line that lists it, as glibc's
/// files source answers a reverse lookup. Names that are not valid host
/// names are left out (smtpd would not use them).
fn parse(text: &str) -> HashMap<IpAddr, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(addr), Some(name)) = (words.next(), words.next()) else {
            continue;
        };
        // A scope (fe80::1%eth0) or a bad address: not a client's.
        let Ok(addr) = addr.parse::<IpAddr>() else {
            continue;
        };
        if let Some(name) = client_name(name) {
            names.entry(addr).or_insert(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_with_the_address_names_it() {
        let n = parse(
            "# comment\n127.0.0.1 localhost\n127.0.0.1 other\n\
             ::1 ip6-localhost ip6-loopback\n192.0.2.7\tMail.Example.  mail # x\n\
             fe80::1%eth0 scoped\n198.51.100.1 bad/name\n",
        );
        assert_eq!(n[&"127.0.0.1".parse().unwrap()], "localhost");
        assert_eq!(n[&"::1".parse().unwrap()], "ip6-localhost");
        assert_eq!(n[&"192.0.2.7".parse().unwrap()], "mail.example");
        assert_eq!(n.len(), 3, "{n:?}");
    }

    #[test]
    fn only_files_first_is_trusted() {
        assert!(files_first("passwd: files\nhosts:   files dns\n"));
        assert!(files_first(
            "hosts: files mdns4_minimal [NOTFOUND=return] dns\n"
        ));
        assert!(!files_first("hosts: dns files\n"));
        assert!(!files_first("#hosts: files\n"));
        assert!(!files_first("passwd: files\n"));
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("facteur-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts").to_string_lossy().into_owned();
        std::fs::write(&path, "192.0.2.1 one.example\n").unwrap();
        let h = Hosts::new(&path);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(h.name(a).as_deref(), Some("one.example"));
        assert_eq!(h.name("192.0.2.2".parse().unwrap()), None);
        std::fs::write(&path, "192.0.2.1 two.example longer line\n").unwrap();
        // Checked again once RECHECK has passed.
        h.state.lock().unwrap().checked = None;
        assert_eq!(h.name(a).as_deref(), Some("two.example"));
        assert_eq!(Hosts::new("").name(a), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
