//! `unix:passwd.byname` and `unix:group.byname`: the system's user and
//! group databases through `getpwnam_r` / `getgrnam_r`, answering with the
//! passwd(5) / group(5) line, as Postfix does. Keys fold to lower case.
//!
//! A daemon that master.cf chroots cannot read /etc/passwd from inside its
//! jail; Postfix has its proxymap daemon answer for it (`proxy:unix:...`).
//! Facteur has no proxymap: a table opened by a daemon that is about to
//! be jailed ([`crate::service::will_be_jailed`]) reads the whole database
//! once, at open, and answers from memory — accounts added later are seen
//! when the daemon is replaced (`max_idle`, `max_use`, `facteur reload`).

use std::ffi::{CStr, CString};

use super::{Table, TableError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Passwd,
    Group,
}

pub struct UnixTable {
    name: String,
    which: Which,
    /// Name → line, for a jailed daemon (see the module comment).
    snapshot: Option<std::collections::HashMap<String, String>>,
    /// Lookups go to a name service that may ask the network.
    blocks: bool,
}

/// Most entries a snapshot holds (a directory of that many accounts
/// should be served by a real proxymap).
const MAX_SNAPSHOT: usize = 1_000_000;

impl UnixTable {
    pub fn open(spec: &str, name: &str) -> Result<UnixTable, TableError> {
        let which = match name {
            "passwd.byname" => Which::Passwd,
            "group.byname" => Which::Group,
            _ => return Err(TableError::Config(format!("unknown table: {spec}"))),
        };
        let snapshot = if crate::service::will_be_jailed() {
            Some(snapshot(which)?)
        } else {
            None
        };
        let blocks = snapshot.is_none() && !nss_is_local(which, &nsswitch());
        Ok(UnixTable {
            name: spec.to_string(),
            which,
            snapshot,
            blocks,
        })
    }
}

/// Every entry of the database, by name (lower-cased as lookups are;
/// the first of two names that fold alike wins, as getpwnam would find
/// it). More than [`MAX_SNAPSHOT`] entries is an error: a silently cut
/// snapshot would refuse the accounts left out.
fn snapshot(which: Which) -> Result<std::collections::HashMap<String, String>, TableError> {
    let mut map = std::collections::HashMap::new();
    let mut too_many = false;
    // SAFETY: the enumeration functions are used from one thread, at
    // start-up, and each entry is formatted before the next call.
    unsafe {
        match which {
            Which::Passwd => {
                libc::setpwent();
                loop {
                    let pw = libc::getpwent();
                    if pw.is_null() {
                        break;
                    }
                    if map.len() >= MAX_SNAPSHOT {
                        too_many = true;
                        break;
                    }
                    let line = passwd_line(&*pw);
                    map.entry(cstr((*pw).pw_name).to_lowercase())
                        .or_insert(line);
                }
                libc::endpwent();
            }
            Which::Group => {
                libc::setgrent();
                loop {
                    let gr = libc::getgrent();
                    if gr.is_null() {
                        break;
                    }
                    if map.len() >= MAX_SNAPSHOT {
                        too_many = true;
                        break;
                    }
                    let line = group_line(&*gr);
                    map.entry(cstr((*gr).gr_name).to_lowercase())
                        .or_insert(line);
                }
                libc::endgrent();
            }
        }
    }
    if too_many {
        return Err(TableError::Config(format!(
            "more than {MAX_SNAPSHOT} entries: too many to hold for a chrooted daemon; \
             run this service with chroot = n in master.cf"
        )));
    }
    Ok(map)
}

fn entry(which: Which, name: &CString) -> Result<Option<String>, TableError> {
    match which {
        Which::Passwd => passwd(name),
        Which::Group => group(name),
    }
}

/// Largest buffer tried for the reentrant lookups.
const MAX_BUF: usize = 1 << 20;

fn cstr(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: p points into the buffer the libc call filled, NUL-terminated.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Call a `get*nam_r` function with a buffer that grows on `ERANGE` (up
/// to [`MAX_BUF`]); `call` returns the libc result code and, when found,
/// the formatted entry.
fn with_growing_buffer(
    what: &str,
    mut call: impl FnMut(&mut [libc::c_char]) -> (i32, Option<String>),
) -> Result<Option<String>, TableError> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        let (rc, found) = call(&mut buf);
        if rc == libc::ERANGE && size < MAX_BUF {
            size *= 4;
            continue;
        }
        if rc != 0 {
            return Err(TableError::Temporary(format!(
                "{what}: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        return Ok(found);
    }
}

/// The passwd(5) line of an entry the C library filled in.
fn passwd_line(pw: &libc::passwd) -> String {
    format!(
        "{}:{}:{}:{}:{}:{}:{}",
        cstr(pw.pw_name),
        cstr(pw.pw_passwd),
        pw.pw_uid,
        pw.pw_gid,
        cstr(pw.pw_gecos),
        cstr(pw.pw_dir),
        cstr(pw.pw_shell)
    )
}

/// The group(5) line of an entry the C library filled in.
fn group_line(gr: &libc::group) -> String {
    let mut members = Vec::new();
    let mut p = gr.gr_mem;
    // SAFETY: gr_mem is a NULL-terminated array of C strings that lives
    // as long as the entry.
    unsafe {
        while !p.is_null() && !(*p).is_null() {
            members.push(cstr(*p));
            p = p.add(1);
        }
    }
    format!(
        "{}:{}:{}:{}",
        cstr(gr.gr_name),
        cstr(gr.gr_passwd),
        gr.gr_gid,
        members.join(",")
    )
}

fn passwd(name: &CString) -> Result<Option<String>, TableError> {
    with_growing_buffer("getpwnam_r", |buf| {
        // SAFETY: zeroed passwd is a valid out-parameter for getpwnam_r.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the sizes given.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        (0, Some(passwd_line(&pw)))
    })
}

fn group(name: &CString) -> Result<Option<String>, TableError> {
    with_growing_buffer("getgrnam_r", |buf| {
        // SAFETY: zeroed group is a valid out-parameter for getgrnam_r.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the sizes given.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            return (rc, None);
        }
        (0, Some(group_line(&gr)))
    })
}

impl Table for UnixTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        let key = key.to_lowercase();
        if let Some(map) = &self.snapshot {
            return Ok(map.get(&key).cloned());
        }
        let Ok(name) = CString::new(key) else {
            return Ok(None);
        };
        entry(self.which, &name)
    }

    fn may_block(&self) -> bool {
        self.blocks
    }
}

/// /etc/nsswitch.conf, empty when it cannot be read (glibc then uses its
/// built-in order, `files` first).
fn nsswitch() -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open("/etc/nsswitch.conf") {
        let _ = f.take(64 << 10).read_to_string(&mut s);
    }
    s
}

/// Whether the name service answers the database from this machine
/// only: every source of its line is `files`, `compat` or `systemd`
/// (local files and systemd's own users). Anything else (ldap, sss, nis,
/// winbind, ...) may ask the network and be slow to answer.
fn nss_is_local(which: Which, conf: &str) -> bool {
    let db = match which {
        Which::Passwd => "passwd:",
        Which::Group => "group:",
    };
    let Some(line) = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with(db))
    else {
        return true;
    };
    line[db.len()..]
        .split_whitespace()
        // `[NOTFOUND=return]` and the like are actions, not sources.
        .filter(|w| !w.starts_with('['))
        .all(|w| matches!(w, "files" | "compat" | "systemd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_name_services_never_block() {
        let debian = "passwd:  files systemd\ngroup: files [NOTFOUND=return] ldap # x\n";
        assert!(nss_is_local(Which::Passwd, debian));
        assert!(!nss_is_local(Which::Group, debian));
        assert!(nss_is_local(Which::Passwd, "hosts: files dns\n"));
        assert!(!nss_is_local(Which::Passwd, "passwd: sss files\n"));
        assert!(nss_is_local(
            Which::Passwd,
            "#passwd: ldap\npasswd: compat\n"
        ));
    }

    #[test]
    fn root_is_found_case_insensitively() {
        let t = UnixTable::open("unix:passwd.byname", "passwd.byname").unwrap();
        let v = t.lookup("ROOT").unwrap().unwrap();
        assert!(v.starts_with("root:"), "{v}");
        assert_eq!(v.split(':').nth(2), Some("0"));
        assert_eq!(t.lookup("no-such-user-facteur").unwrap(), None);
        let g = UnixTable::open("unix:group.byname", "group.byname").unwrap();
        assert!(g.lookup("root").unwrap().unwrap().starts_with("root:"));
        assert!(UnixTable::open("unix:bogus.byname", "bogus.byname").is_err());
    }

    #[test]
    fn a_jailed_daemons_snapshot_answers_as_the_live_lookups() {
        for (which, name) in [
            (Which::Passwd, "passwd.byname"),
            (Which::Group, "group.byname"),
        ] {
            let live = UnixTable::open(name, name).unwrap();
            let snap = snapshot(which).unwrap();
            assert!(snap.contains_key("root"), "{name}");
            for (key, line) in &snap {
                assert_eq!(
                    live.lookup(key).unwrap().as_ref(),
                    Some(line),
                    "{name} {key}"
                );
            }
        }
    }
}
