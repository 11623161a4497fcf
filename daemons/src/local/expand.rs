//! From one recipient to a list of deliveries: aliases(5), `.forward`
//! files, `:include:` files, and the user's mailbox, in local(8)'s order.
//!
//! ```text
//! name  ── alias_maps hit? ──► each item of the value (class "alias", rights: default_privs)
//!   │ no (or name is being expanded already: a self-reference)
//!   ├─ an account with a forward_path file? ──► each item (class "forward", rights: the user)
//!   ├─ mailbox_transport_maps[user] | mailbox_transport ──► that transport's agent
//!   ├─ an account: mailbox_command | $home/home_mailbox | mail_spool_directory/name
//!   └─ no account: fallback_transport_maps[user] | fallback_transport ──► that agent;
//!                  else luser_relay, else bounce 5.1.1
//! item  = /file[/]  |command  :include:/file  \name  name  name@domain
//! ```
//!
//! Nothing is delivered here; the result is a plan ([`Target`]s) that the
//! agent carries out, so the rules can be tested without writing mail.
//! Loops cannot run away: a name already being expanded is not looked up
//! again (so `a: b`, `b: a` ends at a mailbox, and `root: root, /file`
//! reaches root's mailbox), the same target is planned once (Postfix's
//! duplicate filter), nesting is capped at [`MAX_DEPTH`] and the plan at
//! [`MAX_TARGETS`]; `:include:` and `.forward` files are read up to
//! [`MAX_FILE`] bytes.

use std::collections::HashSet;
use std::path::PathBuf;

use libmail::address::{split, unquote_local};
use libmail::config::expand::Expansion;
use libmail::deliver::Status;
use libmail::table::search::{alias_keys, split_extension, Key};

use super::exec::{getpwnam, Passwd};
use super::Config;

/// Deepest alias / include / forward nesting.
pub const MAX_DEPTH: usize = 20;
/// Most deliveries one recipient may expand to (`duplicate_filter_limit`).
pub const MAX_TARGETS: usize = 1000;
/// Largest `:include:` or `.forward` file read.
pub const MAX_FILE: u64 = 1 << 20;

/// Where an item came from: decides whether `|command` and `/file` are
/// allowed (`allow_mail_to_commands`, `allow_mail_to_files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Alias,
    Forward,
    Include,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Alias => "alias",
            Class::Forward => "forward",
            Class::Include => "include",
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An mbox file; `spool`: under `mail_spool_directory` (opened and
    /// locked with root's rights, written with the user's).
    Mbox {
        path: PathBuf,
        spool: bool,
    },
    Maildir {
        path: PathBuf,
    },
    /// `mailbox_command` or a `|command` item.
    Command {
        command: String,
    },
    /// A `/file` item (`/dir/` = Maildir).
    File {
        path: String,
    },
    /// Submit to cleanup for this address.
    Forward {
        address: String,
    },
    /// Hand to another transport's agent (`mailbox_transport`,
    /// `fallback_transport` and their maps): `transport[:nexthop]`.
    Pass {
        service: String,
    },
    /// Decided already (unknown user, restricted, lookup failure).
    Fail {
        status: Status,
        dsn: String,
        reason: String,
    },
}

/// One planned delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address logged as `to=<...>`.
    pub to: String,
    pub action: Action,
    /// Whose rights it runs with.
    pub account: Passwd,
    /// `$user`-style attributes for commands: (local part, extension, domain).
    pub local: String,
    pub extension: String,
    pub domain: String,
    /// The sender for forwarded mail (`owner-ALIAS` when that alias exists).
    pub owner: Option<String>,
}

/// Plans the deliveries of one recipient.
pub struct Planner<'a> {
    cfg: &'a Config,
    pub targets: Vec<Target>,
    seen: HashSet<String>,
    /// Names being alias-expanded (self-reference detection).
    alias_path: Vec<String>,
    /// Users whose .forward is being expanded.
    forward_path: Vec<String>,
    owner: Option<String>,
}

fn fail(status: Status, dsn: &str, reason: String) -> Action {
    Action::Fail {
        status,
        dsn: dsn.to_string(),
        reason,
    }
}

/// Splits an alias value, `.forward` or `:include:` file into items:
/// commas and newlines separate, `"..."` quotes (a comma inside a quoted
/// command stays), `#` starts a comment line.
pub fn split_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut cur = String::new();
        let mut quoted = false;
        for c in line.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                ',' if !quoted => {
                    items.push(std::mem::take(&mut cur));
                }
                _ => cur.push(c),
            }
        }
        items.push(cur);
    }
    items
        .into_iter()
        .map(|i| unquote_item(i.trim()))
        .filter(|i| !i.is_empty())
        .collect()
}

fn unquote_item(item: &str) -> String {
    let strip = |s: &str| -> Option<String> {
        (s.len() >= 2 && s.starts_with('"') && s.ends_with('"'))
            .then(|| s[1..s.len() - 1].replace("\\\"", "\""))
    };
    if let Some(s) = strip(item) {
        return s;
    }
    if let Some(rest) = item.strip_prefix('|') {
        if let Some(s) = strip(rest.trim()) {
            return format!("|{s}");
        }
    }
    item.to_string()
}

/// Reads a small file (`.forward`, `:include:`), bounded.
fn read_small(path: &str) -> std::io::Result<(String, u32)> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut s = String::new();
    let mut bytes = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut bytes)?;
    s.push_str(&String::from_utf8_lossy(&bytes));
    Ok((s, meta.uid()))
}

impl<'a> Planner<'a> {
    pub fn new(cfg: &'a Config) -> Self {
        Planner {
            cfg,
            targets: Vec::new(),
            seen: HashSet::new(),
            alias_path: Vec::new(),
            forward_path: Vec::new(),
            owner: None,
        }
    }

    fn push(&mut self, t: Target) {
        let key = match &t.action {
            Action::Mbox { path, .. } | Action::Maildir { path } => {
                format!("mailbox:{}", path.display())
            }
            Action::Command { command } => format!("command:{}:{}", t.account.uid, command),
            Action::File { path } => format!("file:{path}"),
            Action::Forward { address } => format!("forward:{}", address.to_lowercase()),
            Action::Pass { service } => format!("pass:{service}:{}", t.to.to_lowercase()),
            Action::Fail { reason, .. } => format!("fail:{}:{reason}", t.to),
        };
        if self.seen.insert(key) && self.targets.len() < MAX_TARGETS {
            self.targets.push(t);
        }
    }

    fn target(&self, to: &str, action: Action, account: &Passwd) -> Target {
        let (local, domain) = split(to);
        let local = unquote_local(local).to_lowercase();
        let (_, ext) = split_extension(&local, &self.cfg.delimiter);
        Target {
            to: to.to_string(),
            action,
            account: account.clone(),
            extension: ext.map(|e| e[1..].to_string()).unwrap_or_default(),
            local,
            domain: domain.unwrap_or("").to_string(),
            owner: self.owner.clone(),
        }
    }

    fn fail(&mut self, to: &str, status: Status, dsn: &str, reason: String) {
        let t = self.target(
            to,
            fail(status, dsn, reason),
            &self.cfg.default_privs.clone(),
        );
        self.push(t);
    }

    /// Plans the delivery to `address`, a recipient in a local domain.
    /// `no_alias`: `\name` (straight to the mailbox).
    pub fn recipient(&mut self, address: &str, depth: usize, no_alias: bool) {
        if depth > MAX_DEPTH {
            self.fail(
                address,
                Status::Bounced,
                "5.4.6",
                format!("mail forwarding loop for {address}"),
            );
            return;
        }
        let (local, _) = split(address);
        let local = unquote_local(local).to_lowercase();
        if local.is_empty() {
            self.fail(address, Status::Bounced, "5.1.3", "empty local part".into());
            return;
        }
        if !no_alias && !self.alias_path.contains(&local) && self.alias(address, &local, depth) {
            return;
        }
        let (user, ext) = split_extension(&local, &self.cfg.delimiter);
        let pw = match getpwnam(user) {
            Ok(pw) => pw,
            Err(e) => {
                self.fail(
                    address,
                    Status::Deferred,
                    "4.3.0",
                    format!("user lookup error for \"{user}\": {e}"),
                );
                return;
            }
        };
        if let Some(pw) = &pw {
            if !no_alias
                && !self.forward_path.contains(&pw.name)
                && self.forward(address, &local, ext, pw, depth)
            {
                return;
            }
        }
        // The mailbox: another transport's, before the account is even
        // looked at (its users need not be UNIX accounts), or the one here.
        let cfg = self.cfg;
        if self.pass(
            address,
            user,
            cfg.mailbox_transport_maps.as_ref(),
            &cfg.mailbox_transport,
            "mailbox_transport_maps",
        ) {
            return;
        }
        if let Some(pw) = pw {
            self.mailbox(address, &pw);
            return;
        }
        // No such account.
        if self.pass(
            address,
            user,
            cfg.fallback_transport_maps.as_ref(),
            &cfg.fallback_transport,
            "fallback_transport_maps",
        ) {
            return;
        }
        match self.cfg.luser_relay(address, &local) {
            Some(relay) if !relay.is_empty() => {
                let acct = self.cfg.default_privs.clone();
                self.item(address, &relay, Class::Alias, &acct, depth + 1);
            }
            _ => self.fail(
                address,
                Status::Bounced,
                "5.1.1",
                format!("unknown user: \"{local}\""),
            ),
        }
    }

    /// A per-user table's value for `user` (trimmed, empty as none);
    /// `None` when the lookup failed, after planning a deferral of
    /// `address`.
    fn by_user(
        &mut self,
        address: &str,
        maps: Option<&libmail::table::search::Maps>,
        user: &str,
        maps_name: &str,
    ) -> Option<Option<String>> {
        let Some(maps) = maps else {
            return Some(None);
        };
        let key = Key {
            text: user.to_string(),
            whole: true,
        };
        match maps.find_first(std::slice::from_ref(&key)) {
            Ok(v) => Some(
                v.map(|(_, v)| v.trim().to_string())
                    .filter(|v| !v.is_empty()),
            ),
            Err(e) => {
                self.fail(
                    address,
                    Status::Deferred,
                    "4.3.0",
                    format!("{maps_name} lookup failure: {e}"),
                );
                None
            }
        }
    }

    /// Plans the hand-over of `address` to the transport that `maps`
    /// (keyed by the user name) or else `transport` names; false when
    /// neither does. A lookup failure defers.
    fn pass(
        &mut self,
        address: &str,
        user: &str,
        maps: Option<&libmail::table::search::Maps>,
        transport: &str,
        maps_name: &str,
    ) -> bool {
        let Some(found) = self.by_user(address, maps, user, maps_name) else {
            return true;
        };
        let service = match found {
            Some(v) => v,
            None if !transport.is_empty() => transport.to_string(),
            None => return false,
        };
        let acct = self.cfg.default_privs.clone();
        let t = self.target(address, Action::Pass { service }, &acct);
        self.push(t);
        true
    }

    /// Looks `local` up in alias_maps; true when it is an alias.
    fn alias(&mut self, address: &str, local: &str, depth: usize) -> bool {
        let Some(maps) = &self.cfg.alias_maps else {
            return false;
        };
        let keys = alias_keys(local, &self.cfg.delimiter);
        let value = match maps.find_first(&keys) {
            Ok(Some((_, v))) => v,
            Ok(None) => return false,
            Err(e) => {
                self.fail(
                    address,
                    Status::Deferred,
                    "4.3.0",
                    format!("alias database unavailable: {e}"),
                );
                return true;
            }
        };
        // owner-ALIAS becomes the sender of mail forwarded for this alias.
        let saved_owner = self.owner.clone();
        let name = split_extension(local, &self.cfg.delimiter).0.to_string();
        if libmail::table::search::owner_request_special() && !name.starts_with("owner-") {
            let okeys = alias_keys(&format!("owner-{name}"), "");
            if let Ok(Some((_, owner))) = maps.find_first(&okeys) {
                self.owner = Some(self.owner_sender(&name, &owner));
            }
        }
        self.alias_path.push(local.to_string());
        let acct = self.cfg.default_privs.clone();
        for item in split_items(&value) {
            self.item(address, &item, Class::Alias, &acct, depth + 1);
        }
        self.alias_path.pop();
        self.owner = saved_owner;
        true
    }

    /// The sender of mail forwarded for alias `name`, whose `owner-name`
    /// alias is `owner`: `owner-name@$myorigin`, or with
    /// `expand_owner_alias` the address that alias expands to (when it is
    /// one address: a list, a command, a file or an include keeps the
    /// owner alias's own name).
    fn owner_sender(&self, name: &str, owner: &str) -> String {
        let own = || format!("owner-{name}@{}", self.cfg.myorigin);
        if !self.cfg.expand_owner_alias {
            return own();
        }
        let items = split_items(owner);
        let [item] = items.as_slice() else {
            return own();
        };
        let a = item.trim().trim_start_matches('\\');
        if a.is_empty() || a.starts_with(['|', '/']) || a.starts_with(":include:") {
            return own();
        }
        if a.contains('@') {
            a.to_string()
        } else {
            format!("{a}@{}", self.cfg.myorigin)
        }
    }

    /// Tries the user's forward_path files; true when one was used.
    fn forward(
        &mut self,
        address: &str,
        local: &str,
        ext: Option<&str>,
        pw: &Passwd,
        depth: usize,
    ) -> bool {
        for path in self.cfg.forward_files(address, local, ext, pw) {
            let (text, owner) = match read_small(&path) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => continue,
                Err(e) => {
                    libmail::warning!("cannot read {path}: {e}");
                    continue;
                }
            };
            if owner != pw.uid && owner != 0 {
                libmail::warning!("file {path} has bad owner: uid {owner}");
                continue;
            }
            let items = split_items(&text);
            if items.is_empty() {
                continue;
            }
            self.forward_path.push(pw.name.clone());
            for item in items {
                self.item(address, &item, Class::Forward, pw, depth + 1);
            }
            self.forward_path.pop();
            return true;
        }
        false
    }

    fn mailbox(&mut self, address: &str, pw: &Passwd) {
        let cfg = self.cfg;
        // mailbox_command_maps (key: the user), then mailbox_command; as
        // in Postfix, no $name expansion (shell syntax passes untouched;
        // the recipient's attributes are in the environment).
        let maps = cfg.mailbox_command_maps.as_ref();
        let Some(found) = self.by_user(address, maps, &pw.name, "mailbox_command_maps") else {
            return;
        };
        let command = found.unwrap_or_else(|| cfg.mailbox_command.clone());
        let action = if !command.is_empty() {
            Action::Command { command }
        } else if !cfg.home_mailbox.is_empty() {
            let p = format!("{}/{}", pw.home.trim_end_matches('/'), cfg.home_mailbox);
            if p.ends_with('/') {
                Action::Maildir { path: p.into() }
            } else {
                Action::Mbox {
                    path: p.into(),
                    spool: false,
                }
            }
        } else if cfg.spool.ends_with('/') {
            Action::Maildir {
                path: PathBuf::from(&cfg.spool).join(&pw.name),
            }
        } else {
            Action::Mbox {
                path: PathBuf::from(&cfg.spool).join(&pw.name),
                spool: true,
            }
        };
        let t = self.target(address, action, pw);
        self.push(t);
    }

    /// One item of an alias value, `.forward` or `:include:` file, found
    /// while expanding `address`; `acct` is whose rights files and
    /// commands get.
    pub fn item(&mut self, address: &str, item: &str, class: Class, acct: &Passwd, depth: usize) {
        if depth > MAX_DEPTH {
            self.fail(
                address,
                Status::Bounced,
                "5.4.6",
                format!("mail forwarding loop for {address}"),
            );
            return;
        }
        let cfg = self.cfg;
        if let Some(cmd) = item.strip_prefix('|') {
            if !cfg.allow_commands.contains(&class.name().to_string()) {
                self.fail(
                    address,
                    Status::Bounced,
                    "5.7.1",
                    "mail to command is restricted".into(),
                );
                return;
            }
            let t = self.target(
                address,
                Action::Command {
                    command: cmd.trim().to_string(),
                },
                acct,
            );
            self.push(t);
        } else if let Some(path) = item.strip_prefix(":include:") {
            let path = path.trim();
            if !path.starts_with('/') {
                self.fail(
                    address,
                    Status::Bounced,
                    "5.3.5",
                    format!(":include: file {path} is not an absolute path"),
                );
                return;
            }
            match read_small(path) {
                Ok((text, owner)) => {
                    // The file's owner's rights, unless root owns it.
                    let who = if owner == 0 {
                        cfg.default_privs.clone()
                    } else {
                        super::exec::getpwuid(owner).unwrap_or_else(|| cfg.default_privs.clone())
                    };
                    for i in split_items(&text) {
                        self.item(address, &i, Class::Include, &who, depth + 1);
                    }
                }
                Err(e) => self.fail(
                    address,
                    Status::Deferred,
                    "4.3.0",
                    format!(
                        "cannot open include file {path}: {}",
                        libmail::mailbox::strerror(&e)
                    ),
                ),
            }
        } else if item.starts_with('/') {
            if !cfg.allow_files.contains(&class.name().to_string()) {
                self.fail(
                    address,
                    Status::Bounced,
                    "5.7.1",
                    "mail to file is restricted".into(),
                );
                return;
            }
            let t = self.target(
                address,
                Action::File {
                    path: item.to_string(),
                },
                acct,
            );
            self.push(t);
        } else {
            let (no_alias, addr) = match item.strip_prefix('\\') {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            if addr.len() > libmail::address::MAX_ADDRESS_LEN
                || addr.chars().any(|c| c.is_control())
            {
                self.fail(
                    address,
                    Status::Bounced,
                    "5.1.3",
                    "bad address syntax".into(),
                );
                return;
            }
            let qualified = match split(addr) {
                (_, Some(_)) => addr.to_string(),
                (l, None) => format!("{l}@{}", cfg.myorigin),
            };
            let domain = libmail::address::domain_of(&qualified);
            match cfg.is_local(&domain) {
                Ok(true) => self.recipient(&qualified, depth + 1, no_alias),
                Ok(false) => {
                    let t = self.target(
                        &qualified,
                        Action::Forward {
                            address: qualified.clone(),
                        },
                        acct,
                    );
                    self.push(t);
                }
                Err(e) => self.fail(
                    address,
                    Status::Deferred,
                    "4.3.0",
                    format!("mydestination lookup error: {e}"),
                ),
            }
        }
    }
}

/// Expands a raw parameter (`forward_path`, `luser_relay`) with the
/// recipient's attributes, Postfix's per-delivery names first, then the
/// configuration. Values are escaped so a `$` in them stays literal.
pub fn expand_raw(cfg: &Config, raw: &str, attrs: &[(&str, String)]) -> String {
    let lookup = |name: &str| -> Option<String> {
        if let Some((_, v)) = attrs.iter().find(|(n, _)| *n == name) {
            return Some(v.replace('$', "$$"));
        }
        cfg.raw_params.get(name).cloned()
    };
    Expansion::new().expand(raw, &lookup).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_split_on_commas_outside_quotes() {
        assert_eq!(
            split_items("a, b,\"|cmd x, y\" , /f\n# c\n:include:/x,, "),
            vec!["a", "b", "|cmd x, y", "/f", ":include:/x"]
        );
        assert_eq!(
            split_items("|\"/usr/bin/foo bar\""),
            vec!["|/usr/bin/foo bar"]
        );
        assert!(split_items("# only a comment\n\n").is_empty());
    }
}
