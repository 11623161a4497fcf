//! The rewrite half of trivial-rewrite: turning an address into its
//! canonical form `user@fully.qualified.domain` (Postfix's
//! `rewrite_context` local/remote).
//!
//! * `local` context (sendmail, local programs): `user` →
//!   `user@$myorigin` when `append_at_myorigin = yes`;
//!   `user@host` → `user@host.$mydomain` when `append_dot_mydomain = yes`
//!   (on by default before compatibility level 1, off from it).
//! * `remote` context (SMTP clients not in `local_header_rewrite_clients`):
//!   unqualified addresses get `@$remote_header_rewrite_domain`, or stay
//!   as they are when that is empty.
//! * `swap_bangpath` (`host!user` → `user@host`) and `allow_percent_hack`
//!   (`user%host@mydest` → `user@host`) as Postfix does them.
//! * The empty address (null sender) stays empty.

use crate::config::params::Params;

/// The rewrite context (`A rewrite_context=` in the queue file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Local,
    Remote,
}

impl Context {
    pub fn parse(s: &str) -> Context {
        if s == "remote" {
            Context::Remote
        } else {
            Context::Local
        }
    }
}

/// The parameters rewriting depends on, read once.
#[derive(Debug, Clone)]
pub struct Rewriter {
    myorigin: String,
    mydomain: String,
    remote_domain: String,
    append_at_myorigin: bool,
    append_dot_mydomain: bool,
    swap_bangpath: bool,
    allow_percent_hack: bool,
}

fn flag(params: &Params, name: &str, default: bool) -> bool {
    params
        .value(name)
        .ok()
        .and_then(|v| crate::config::check::parse_bool(&v))
        .unwrap_or(default)
}

impl Rewriter {
    pub fn new(params: &Params) -> Rewriter {
        let v = |n: &str| params.value(n).unwrap_or_default();
        let mut myorigin = v("myorigin");
        // Debian sets myorigin = /etc/mailname: the name is in the file.
        if myorigin.starts_with('/') {
            myorigin = std::fs::read_to_string(&myorigin)
                .ok()
                .and_then(|t| t.split_whitespace().next().map(str::to_string))
                .unwrap_or_else(|| v("myhostname"));
        }
        Rewriter {
            myorigin,
            mydomain: v("mydomain"),
            remote_domain: v("remote_header_rewrite_domain"),
            append_at_myorigin: flag(params, "append_at_myorigin", true),
            append_dot_mydomain: flag(params, "append_dot_mydomain", false),
            swap_bangpath: flag(params, "swap_bangpath", true),
            allow_percent_hack: flag(params, "allow_percent_hack", true),
        }
    }

    /// `$myorigin` as read (the file's contents for Debian's /etc/mailname).
    pub fn myorigin(&self) -> &str {
        &self.myorigin
    }

    /// The canonical form of `addr` in `ctx`.
    pub fn rewrite(&self, ctx: Context, addr: &str) -> String {
        if addr.is_empty() {
            return String::new();
        }
        let mut a = addr.trim().to_string();
        // Source routes: @a,@b:user@c → user@c.
        if a.starts_with('@') {
            if let Some(i) = a.find(':') {
                a = a[i + 1..].to_string();
            }
        }
        let (local, domain) = super::split(&a);
        let (mut local, mut domain) = (local.to_string(), domain.map(str::to_string));
        if domain.is_none() && self.swap_bangpath {
            if let Some(i) = local.find('!') {
                let host = local[..i].to_string();
                local = local[i + 1..].to_string();
                domain = Some(host);
            }
        }
        if domain.is_none() && self.allow_percent_hack {
            if let Some(i) = local.rfind('%') {
                let host = local[i + 1..].to_string();
                local.truncate(i);
                domain = Some(host);
            }
        }
        match domain {
            None => match ctx {
                Context::Local if self.append_at_myorigin && !self.myorigin.is_empty() => {
                    format!("{local}@{}", self.myorigin)
                }
                Context::Remote if !self.remote_domain.is_empty() => {
                    format!("{local}@{}", self.remote_domain)
                }
                _ => local,
            },
            Some(d) => {
                let d = d.trim_end_matches('.');
                if ctx == Context::Local
                    && self.append_dot_mydomain
                    && !d.contains('.')
                    && !d.starts_with('[')
                    && !self.mydomain.is_empty()
                {
                    format!("{local}@{d}.{}", self.mydomain)
                } else {
                    format!("{local}@{d}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::maincf::MainCf;

    fn rw(main: &str) -> Rewriter {
        let text = format!("compatibility_level = 3.6\n{main}");
        let (m, _) = MainCf::parse(&text, "/x/main.cf");
        Rewriter::new(&Params::new("/x", m))
    }

    #[test]
    fn local_context_appends_myorigin() {
        let r = rw("myhostname = mx.example.com\nmyorigin = example.com\n");
        assert_eq!(r.rewrite(Context::Local, "bob"), "bob@example.com");
        assert_eq!(r.rewrite(Context::Local, "bob@other.org"), "bob@other.org");
        assert_eq!(r.rewrite(Context::Local, ""), "");
        assert_eq!(r.rewrite(Context::Local, "host!bob"), "bob@host");
        assert_eq!(r.rewrite(Context::Local, "bob%host"), "bob@host");
        assert_eq!(r.rewrite(Context::Local, "@a,@b:bob@c"), "bob@c");
        assert_eq!(r.rewrite(Context::Local, "bob@c."), "bob@c");
    }

    #[test]
    fn remote_context_leaves_unqualified_alone_by_default() {
        let r = rw("myhostname = mx.example.com\n");
        assert_eq!(r.rewrite(Context::Remote, "bob"), "bob");
        let r = rw("myhostname = mx.example.com\nremote_header_rewrite_domain = d.example\n");
        assert_eq!(r.rewrite(Context::Remote, "bob"), "bob@d.example");
    }

    #[test]
    fn append_dot_mydomain_when_asked() {
        let r = rw("myhostname = mx.example.com\nappend_dot_mydomain = yes\n");
        assert_eq!(r.rewrite(Context::Local, "bob@mx"), "bob@mx.example.com");
        assert_eq!(r.rewrite(Context::Local, "bob@[1.2.3.4]"), "bob@[1.2.3.4]");
    }
}
