//! `unix:passwd.byname` and `unix:group.byname`: the system's user and
//! group databases through `getpwnam_r` / `getgrnam_r`, answering with the
//! passwd(5) / group(5) line, as Postfix does. Keys fold to lower case.

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
}

impl UnixTable {
    pub fn open(spec: &str, name: &str) -> Result<UnixTable, TableError> {
        let which = match name {
            "passwd.byname" => Which::Passwd,
            "group.byname" => Which::Group,
            _ => return Err(TableError::Config(format!("unknown table: {spec}"))),
        };
        Ok(UnixTable {
            name: spec.to_string(),
            which,
        })
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
        let line = format!(
            "{}:{}:{}:{}:{}:{}:{}",
            cstr(pw.pw_name),
            cstr(pw.pw_passwd),
            pw.pw_uid,
            pw.pw_gid,
            cstr(pw.pw_gecos),
            cstr(pw.pw_dir),
            cstr(pw.pw_shell)
        );
        (0, Some(line))
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
        let mut members = Vec::new();
        let mut p = gr.gr_mem;
        // SAFETY: gr_mem is a NULL-terminated array of C strings in buf.
        unsafe {
            while !p.is_null() && !(*p).is_null() {
                members.push(cstr(*p));
                p = p.add(1);
            }
        }
        let line = format!(
            "{}:{}:{}:{}",
            cstr(gr.gr_name),
            cstr(gr.gr_passwd),
            gr.gr_gid,
            members.join(",")
        );
        (0, Some(line))
    })
}

impl Table for UnixTable {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, key: &str) -> Result<Option<String>, TableError> {
        let Ok(name) = CString::new(key.to_lowercase()) else {
            return Ok(None);
        };
        match self.which {
            Which::Passwd => passwd(&name),
            Which::Group => group(&name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
