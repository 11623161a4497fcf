//! local(8): final delivery for the local domains (`mydestination`).
//!
//! qmgr connects to `private/local` and sends delivery requests
//! (`libmail::deliver`); for each recipient this agent plans the
//! deliveries ([`expand`]: aliases, `.forward`, `:include:`, the mailbox),
//! carries them out ([`exec`] and `libmail::mailbox`), logs one
//! `to=<...>` line per delivery, and answers one outcome per original
//! recipient. It never writes the queue file: qmgr marks recipients done
//! from the reply.
//!
//! # Outcome of an expanded recipient
//!
//! When a recipient expands into several deliveries, each is logged
//! (`to=<target>, orig_to=<recipient>`) and the recipient's outcome is
//! the worst of them: deferred beats bounced beats sent. A deferred
//! recipient is retried whole, so targets that succeeded the first time
//! get the message again (Postfix behaves the same way for a recipient
//! it cannot finish; its exact rules for mixed outcomes are subtler).
//!
//! # Forwarding
//!
//! Remote targets (alias, `.forward`, `:include:` or `luser_relay`
//! addresses outside the local domains) are not delivered one by one:
//! per request, the targets that share a sender and a `Delivered-To:`
//! value go into ONE new message submitted to cleanup (origin `local`),
//! the original content with `Delivered-To: RECIPIENT` prepended. Each
//! target logs `status=sent (forwarded as NEWID)` once cleanup made the
//! new queue file durable.
//!
//! # Privileges
//!
//! Run as root (master.cf unpriv `n`), deliveries run in forked children
//! with the rights of the account that asked for them: the recipient for
//! mailboxes and `.forward` items, `default_privs` for alias items, the
//! owner of an `:include:` file (`default_privs` when root owns it). Spool
//! mailboxes are opened and locked as root and written as the user, as
//! Postfix does. Run as an ordinary user (development, tests), every
//! delivery runs as that user.
//!
//! `mailbox_transport(_maps)` and `fallback_transport(_maps)` hand a
//! delivery to another transport's agent (`libmail::deliver::pass_request`),
//! which logs it.
//!
//! Not done (yet): biff,
//! per-user `.forward` security beyond
//! an owner check, the DSN actions `expanded` and `relayed` (qmgr
//! sends success notices as `delivered`).

pub mod exec;
pub mod expand;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use libmail::address::resolve::Resolver;
use libmail::config::params::{split_list, Params};
use libmail::deliver::{delivery_line, now_f64, run_agent, Outcome, Rcpt, Request, Status, Timing};
use libmail::ipc::attr::Attrs;
use libmail::ipc::cleanup::{is_temporary, CleanupClient, CleanupError, FLAG_BOUNCE};
use libmail::mailbox::lock::{LockKinds, LockPolicy};
use libmail::mailbox::maildir::{self, MaildirOptions};
use libmail::mailbox::mbox::{self, MboxOptions};
use libmail::mailbox::{delivered_to, MailboxError, Source};
use libmail::queue::{Access, Limits, Queue, QueueFile, QueueId, QueueLayout};
use libmail::service::{bool_param, num_param, time_param};
use libmail::table::search::Maps;

use exec::{as_user, run_command, CommandResult, CommandSpec, Passwd};
use expand::{Action, Planner, Target};

/// Timeout talking to cleanup while forwarding.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

/// The configuration the agent works with, read once at start.
pub struct Config {
    /// Raw values of the parameters that forward_path and luser_relay
    /// refer to (they are expanded per delivery).
    pub raw_params: std::collections::HashMap<String, String>,
    pub layout: QueueLayout,
    pub alias_maps: Option<Maps>,
    /// `mailbox_transport_maps`, `mailbox_transport`: where a local name
    /// that no alias or `.forward` took goes instead of a mailbox here
    /// (passed to that transport's agent, whether or not the name is a
    /// UNIX account: Dovecot's virtual users).
    pub mailbox_transport_maps: Option<Maps>,
    pub mailbox_transport: String,
    /// `mailbox_command_maps`: a per-user `mailbox_command`.
    pub mailbox_command_maps: Option<Maps>,
    /// `fallback_transport_maps`, `fallback_transport`: where a name that
    /// is no account goes (before `luser_relay`).
    pub fallback_transport_maps: Option<Maps>,
    pub fallback_transport: String,
    pub delimiter: String,
    pub forward_path: String,
    pub luser_relay: String,
    pub mailbox_command: String,
    /// `command_execution_directory` as written (expanded per delivery).
    pub command_directory: String,
    pub home_mailbox: String,
    pub spool: String,
    pub allow_commands: Vec<String>,
    pub allow_files: Vec<String>,
    pub size_limit: u64,
    pub lock: LockPolicy,
    pub command_time_limit: Duration,
    /// `local_command_shell`, split into words: the program (and its
    /// arguments) that runs a delivery command, given as the last
    /// argument; empty: `/bin/sh -c`.
    pub command_shell: Vec<String>,
    pub default_privs: Passwd,
    pub myorigin: String,
    pub hostname: String,
    pub original_recipient: bool,
    /// `expand_owner_alias`: forwarded mail of an alias with an
    /// `owner-ALIAS` goes out from what that alias expands to.
    pub expand_owner_alias: bool,
    resolver: Resolver,
}

impl Config {
    /// Reads the parameters; `Err` says what is wrong (fatal at start).
    pub fn load(params: &Params, layout: QueueLayout) -> Result<Config, String> {
        let v = |n: &str| params.value(n).map_err(|e| format!("{n}: {e}"));
        let alias_maps = Maps::from_param(params, "alias_maps")?;
        let maps = |name: &str| Maps::from_param(params, name);
        let kinds = LockKinds::parse(&v("mailbox_delivery_lock")?)?;
        let lock = LockPolicy {
            kinds,
            attempts: num_param(params, "deliver_lock_attempts", 20).clamp(1, 1000) as u32,
            delay: Duration::from_secs(time_param(params, "deliver_lock_delay", 1)),
            stale: Duration::from_secs(time_param(params, "stale_lock_time", 500)),
        };
        let default_privs_name = v("default_privs")?;
        let default_privs = if exec::privileged() {
            match exec::getpwnam(&default_privs_name) {
                Ok(Some(pw)) if pw.uid != 0 => pw,
                Ok(Some(_)) => return Err("default_privs: must not be a privileged account".into()),
                _ => return Err(format!("unknown default_privs user: {default_privs_name}")),
            }
        } else {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            exec::getpwuid(uid).ok_or("cannot look up the current user")?
        };
        let list = |n: &str| -> Result<Vec<String>, String> {
            Ok(split_list(&v(n)?)
                .into_iter()
                .map(|s| s.to_lowercase())
                .collect())
        };
        let resolver = Resolver::new(params).map_err(|e| e.to_string())?;
        Ok(Config {
            alias_maps,
            mailbox_transport_maps: maps("mailbox_transport_maps")?,
            mailbox_transport: v("mailbox_transport")?.trim().to_string(),
            mailbox_command_maps: maps("mailbox_command_maps")?,
            fallback_transport_maps: maps("fallback_transport_maps")?,
            fallback_transport: v("fallback_transport")?.trim().to_string(),
            delimiter: v("recipient_delimiter")?,
            forward_path: params.raw("forward_path").unwrap_or_default(),
            luser_relay: params.raw("luser_relay").unwrap_or_default(),
            mailbox_command: params.raw("mailbox_command").unwrap_or_default(),
            command_directory: params
                .raw("command_execution_directory")
                .unwrap_or_default()
                .trim()
                .to_string(),
            home_mailbox: v("home_mailbox")?,
            spool: v("mail_spool_directory")?,
            allow_commands: list("allow_mail_to_commands")?,
            allow_files: list("allow_mail_to_files")?,
            size_limit: num_param(params, "mailbox_size_limit", 51_200_000).max(0) as u64,
            lock,
            command_shell: v("local_command_shell")?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            command_time_limit: Duration::from_secs(
                time_param(params, "command_time_limit", 1000).max(1),
            ),
            default_privs,
            myorigin: resolver.rewriter().myorigin().to_string(),
            hostname: v("myhostname")?,
            original_recipient: bool_param(params, "enable_original_recipient", true),
            expand_owner_alias: bool_param(params, "expand_owner_alias", false),
            resolver,
            layout,
            raw_params: raw_closure(
                params,
                &["forward_path", "luser_relay", "command_execution_directory"],
            ),
        })
    }

    /// Whether `domain` is delivered here (an empty domain is).
    pub fn is_local(&self, domain: &str) -> Result<bool, String> {
        if domain.is_empty() {
            return Ok(true);
        }
        self.resolver
            .is_local_domain(domain)
            .map_err(|e| e.to_string())
    }

    fn attrs(
        &self,
        address: &str,
        local: &str,
        ext: Option<&str>,
        pw: Option<&Passwd>,
    ) -> Vec<(&'static str, String)> {
        let domain = libmail::address::domain_of(address);
        let mut a = vec![
            ("recipient", address.to_string()),
            ("local", local.to_string()),
            ("domain", domain),
            (
                "extension",
                ext.map(|e| e[1..].to_string()).unwrap_or_default(),
            ),
            (
                "recipient_delimiter",
                ext.map(|e| e[..1].to_string()).unwrap_or_default(),
            ),
            ("user", split_ext(local, &self.delimiter)),
        ];
        if let Some(pw) = pw {
            a.push(("home", pw.home.clone()));
            a.push(("shell", pw.shell.clone()));
        }
        a
    }

    /// A raw parameter expanded with a planned delivery's attributes.
    fn expanded_for(&self, raw: &str, t: &Target) -> String {
        let ext = (!t.extension.is_empty()).then(|| {
            let d = self.delimiter.chars().next().unwrap_or('+');
            format!("{d}{}", t.extension)
        });
        let attrs = self.attrs(&t.to, &t.local, ext.as_deref(), Some(&t.account));
        expand::expand_raw(self, raw, &attrs)
    }

    /// The `.forward` files to try, forward_path expanded for this user.
    pub fn forward_files(
        &self,
        address: &str,
        local: &str,
        ext: Option<&str>,
        pw: &Passwd,
    ) -> Vec<String> {
        let attrs = self.attrs(address, local, ext, Some(pw));
        let mut files: Vec<String> = split_list(&self.forward_path)
            .into_iter()
            .map(|raw| expand::expand_raw(self, raw, &attrs))
            .filter(|p| p.starts_with('/'))
            .take(20)
            .collect();
        // The default forward_path expands to `$home/.forward` twice for
        // an address without an extension: one look is enough.
        files.dedup();
        files
    }

    /// `luser_relay` expanded for an unknown recipient (None when unset).
    pub fn luser_relay(&self, address: &str, local: &str) -> Option<String> {
        if self.luser_relay.trim().is_empty() {
            return None;
        }
        let (_, ext) = libmail::table::search::split_extension(local, &self.delimiter);
        let attrs = self.attrs(address, local, ext, None);
        Some(
            expand::expand_raw(self, &self.luser_relay, &attrs)
                .trim()
                .to_string(),
        )
    }
}

/// The raw values of every parameter `names` refer to, transitively
/// (bounded), so per-delivery expansion needs no `Params`.
fn raw_closure(params: &Params, names: &[&str]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut todo: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    while let Some(n) = todo.pop() {
        if out.len() >= 1000 || out.contains_key(&n) {
            continue;
        }
        let Some(raw) = params.raw(&n) else { continue };
        todo.extend(libmail::config::params::references(&raw));
        out.insert(n, raw);
    }
    out
}

fn split_ext(local: &str, delim: &str) -> String {
    libmail::table::search::split_extension(local, delim)
        .0
        .to_string()
}

pub fn main() {
    run_agent(
        "local",
        |svc| Config::load(&svc.params, svc.layout.clone()),
        |cfg, req| deliver_request(cfg, req, "local", now_f64()),
    );
}

/// The worse of two statuses: deferred > bounced > sent.
fn rank(s: Status) -> u8 {
    match s {
        Status::Sent => 0,
        Status::Bounced => 1,
        Status::Deferred => 2,
    }
}

/// Opens the request's queue file; the ID and queue name come from the
/// wire, so they are validated before any path is built.
pub fn open_queue_file(layout: &QueueLayout, req: &Request) -> Result<QueueFile, String> {
    let id = QueueId::parse(&req.queue_id).map_err(|e| format!("bad queue id: {e}"))?;
    let queue = Queue::from_name(if req.queue_name.is_empty() {
        "active"
    } else {
        &req.queue_name
    })
    .ok_or_else(|| format!("bad queue name: {}", req.queue_name))?;
    let path = layout.path_of(queue, &id);
    QueueFile::open(&path, Access::ReadOnly, &Limits::default())
        .map_err(|e| format!("cannot open queue file {}: {e}", path.display()))
}

/// Logs and builds the outcome of `rcpt` (its delivery to `to`).
pub fn log_outcome(req: &Request, rcpt: &Rcpt, to: &str, relay: &str, timing: Timing, o: &Outcome) {
    let orig = rcpt.orig.clone().unwrap_or_else(|| rcpt.address.clone());
    let shown = Rcpt {
        address: to.to_string(),
        orig: Some(orig),
        ..rcpt.clone()
    };
    libmail::info!("{}", delivery_line(req, &shown, relay, timing, o));
}

/// One delivery's result.
struct Done {
    status: Status,
    dsn: String,
    reason: String,
}

impl Done {
    fn sent(reason: String) -> Done {
        Done {
            status: Status::Sent,
            dsn: "2.0.0".into(),
            reason,
        }
    }
    fn failed(e: &MailboxError, prefix: &str) -> Done {
        Done {
            status: if e.is_permanent() {
                Status::Bounced
            } else {
                Status::Deferred
            },
            dsn: e.dsn.clone(),
            reason: format!("{prefix}{}", e.text),
        }
    }
}

/// Delivers every recipient of a request; one outcome per recipient, in
/// request order.
pub fn deliver_request(cfg: &Config, req: &Request, relay: &str, received: f64) -> Vec<Outcome> {
    let timing = Timing {
        received,
        setup: 0.0,
    };
    let qf = match open_queue_file(&cfg.layout, req) {
        Ok(f) => f,
        Err(e) => {
            libmail::warning!("{}: {e}", req.queue_id);
            return req
                .rcpts
                .iter()
                .map(|r| {
                    let o = Outcome {
                        offset: r.offset,
                        status: Status::Deferred,
                        dsn: "4.3.0".into(),
                        reason: "cannot open queue file".into(),
                    };
                    log_outcome(req, r, &r.address, relay, timing, &o);
                    o
                })
                .collect();
        }
    };
    let delivered = delivered_to(&mut qf.content()).unwrap_or_default();

    // Per recipient: the worst result so far; forwards wait for the end.
    let mut worst: Vec<Option<Outcome>> = vec![None; req.rcpts.len()];
    // (sender, delivered-to) -> [(rcpt index, target)]
    let mut forwards: BTreeMap<(String, String), Vec<(usize, Target)>> = BTreeMap::new();
    // `logged`: by the agent the delivery was passed to.
    let record = |worst: &mut Vec<Option<Outcome>>, i: usize, to: &str, d: Done, logged: bool| {
        let rcpt = &req.rcpts[i];
        let o = Outcome {
            offset: rcpt.offset,
            status: d.status,
            dsn: d.dsn,
            reason: d.reason,
        };
        if !logged {
            log_outcome(req, rcpt, to, relay, timing, &o);
        }
        if worst[i]
            .as_ref()
            .is_none_or(|w| rank(o.status) > rank(w.status))
        {
            worst[i] = Some(o);
        }
    };
    for (i, rcpt) in req.rcpts.iter().enumerate() {
        let dt = rcpt.address.to_lowercase();
        if delivered.contains(&dt) {
            record(
                &mut worst,
                i,
                &rcpt.address,
                Done {
                    status: Status::Bounced,
                    dsn: "5.4.6".into(),
                    reason: format!("mail forwarding loop for {}", rcpt.address),
                },
                false,
            );
            continue;
        }
        let mut planner = Planner::new(cfg);
        planner.recipient(&rcpt.address, 0, false);
        if planner.targets.is_empty() {
            record(
                &mut worst,
                i,
                &rcpt.address,
                Done {
                    status: Status::Bounced,
                    dsn: "5.3.0".into(),
                    reason: "alias expansion produced no destinations".into(),
                },
                false,
            );
            continue;
        }
        for t in planner.targets {
            if let Action::Forward { .. } = t.action {
                let sender = t.owner.clone().unwrap_or_else(|| req.sender.clone());
                forwards
                    .entry((sender, dt.clone()))
                    .or_default()
                    .push((i, t));
                continue;
            }
            let (d, logged) = match &t.action {
                Action::Pass { service } => pass(cfg, req, rcpt, &t, service),
                _ => (deliver_target(cfg, req, rcpt, &qf, &t), false),
            };
            record(&mut worst, i, &t.to, d, logged);
        }
    }
    for ((sender, dt), targets) in forwards {
        let d = forward(cfg, req, &qf, &sender, &dt, &targets);
        for (i, t) in &targets {
            let d = Done {
                status: d.status,
                dsn: d.dsn.clone(),
                reason: d.reason.clone(),
            };
            record(&mut worst, *i, &t.to, d, false);
        }
    }
    worst
        .into_iter()
        .zip(&req.rcpts)
        .map(|(w, r)| {
            w.unwrap_or(Outcome {
                offset: r.offset,
                status: Status::Deferred,
                dsn: "4.3.0".into(),
                reason: "internal error: no delivery".into(),
            })
        })
        .collect()
}

/// The headers local prepends: Return-Path, X-Original-To (with
/// `enable_original_recipient`), Delivered-To.
fn prefix(cfg: &Config, req: &Request, rcpt: &Rcpt) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let mut p = format!("Return-Path: <{}>\n", clean(&req.sender));
    if cfg.original_recipient {
        let orig = rcpt.orig.as_deref().unwrap_or(&rcpt.address);
        p.push_str(&format!("X-Original-To: {}\n", clean(orig)));
    }
    p.push_str(&format!(
        "Delivered-To: {}\n",
        clean(&rcpt.address.to_lowercase())
    ));
    p.into_bytes()
}

fn deliver_target(cfg: &Config, req: &Request, rcpt: &Rcpt, qf: &QueueFile, t: &Target) -> Done {
    let head = prefix(cfg, req, rcpt);
    let who = Some((t.account.uid, t.account.gid));
    let mbox_opts = |owner: Option<(u32, u32)>, spool: bool| MboxOptions {
        size_limit: cfg.size_limit,
        lock: cfg.lock,
        owner: owner.filter(|_| exec::privileged()),
        write_as_owner: spool && exec::privileged(),
        allow_devices: !spool,
    };
    let md_opts = MaildirOptions {
        size_limit: cfg.size_limit,
        hostname: cfg.hostname.clone(),
    };
    match &t.action {
        Action::Fail {
            status,
            dsn,
            reason,
        } => Done {
            status: *status,
            dsn: dsn.clone(),
            reason: reason.clone(),
        },
        Action::Mbox { path, spool } => {
            let opts = mbox_opts(who, *spool);
            let r = as_user(who, *spool, || {
                mbox::deliver(path, &req.sender, &head, &mut qf.content(), &opts)
                    .map(|_| String::new())
            });
            match r {
                Ok(_) => Done::sent("delivered to mailbox".into()),
                Err(e) => Done::failed(
                    &e,
                    &format!(
                        "cannot update mailbox {} for user {}. ",
                        path.display(),
                        t.account.name
                    ),
                ),
            }
        }
        Action::Maildir { path } => {
            match as_user(who, false, || {
                maildir::deliver(path, &head, &mut qf.content(), &md_opts).map(|_| String::new())
            }) {
                Ok(_) => Done::sent("delivered to maildir".into()),
                Err(e) => Done::failed(&e, ""),
            }
        }
        Action::File { path } => {
            let p = PathBuf::from(path);
            let r = if path.ends_with('/') {
                as_user(who, false, || {
                    maildir::deliver(&p, &head, &mut qf.content(), &md_opts).map(|_| String::new())
                })
            } else {
                let opts = mbox_opts(None, false);
                as_user(who, false, || {
                    mbox::deliver(&p, &req.sender, &head, &mut qf.content(), &opts)
                        .map(|_| String::new())
                })
            };
            match r {
                Ok(_) => Done::sent(format!("delivered to file: {path}")),
                Err(e) => Done::failed(&e, &format!("cannot append message to file {path}: ")),
            }
        }
        Action::Command { command } => {
            let mut env = vec![
                ("SENDER".to_string(), req.sender.clone()),
                ("RECIPIENT".to_string(), t.to.clone()),
                ("LOCAL".to_string(), t.local.clone()),
                ("USER".to_string(), t.account.name.clone()),
                ("LOGNAME".to_string(), t.account.name.clone()),
                ("HOME".to_string(), t.account.home.clone()),
                ("SHELL".to_string(), t.account.shell.clone()),
                ("EXTENSION".to_string(), t.extension.clone()),
                ("DOMAIN".to_string(), t.domain.clone()),
                (
                    "ORIGINAL_RECIPIENT".to_string(),
                    rcpt.orig.clone().unwrap_or_else(|| rcpt.address.clone()),
                ),
                ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ];
            for name in ["TZ", "LANG", "MAIL_CONFIG"] {
                if let Ok(v) = std::env::var(name) {
                    env.push((name.to_string(), v));
                }
            }
            // command_execution_directory (expanded for this recipient; a
            // directory that cannot be entered defers the delivery), else
            // the account's home, else /.
            let cwd = if !cfg.command_directory.is_empty() {
                cfg.expanded_for(&cfg.command_directory, t)
            } else if std::path::Path::new(&t.account.home).is_dir() {
                t.account.home.clone()
            } else {
                "/".to_string()
            };
            let spec = CommandSpec {
                command,
                who,
                env,
                cwd,
                time_limit: cfg.command_time_limit,
                shell: &cfg.command_shell,
            };
            let mut head_from = mbox::from_line(&req.sender).into_bytes();
            head_from.extend_from_slice(&head);
            let mut content = qf.content();
            let src: &mut (dyn Source + Send) = &mut content;
            match run_command(&spec, &head_from, src) {
                CommandResult::Ok => Done::sent(format!("delivered to command: {command}")),
                CommandResult::Failed(e) => Done::failed(&e, ""),
            }
        }
        Action::Forward { .. } | Action::Pass { .. } => Done {
            status: Status::Deferred,
            dsn: "4.3.0".into(),
            reason: "internal error: delivery not planned here".into(),
        },
    }
}

/// Hands the delivery of `rcpt` to `t.to` to the agent of `service`
/// (`transport[:nexthop]`, without a next hop the request's), as
/// Postfix's local does for `mailbox_transport` and `fallback_transport`:
/// one request with that recipient, whose outcome that agent logs (with
/// `orig_to=` the original recipient): then the flag is true. When it
/// cannot be asked, the deferral is local's to log.
fn pass(cfg: &Config, req: &Request, rcpt: &Rcpt, t: &Target, service: &str) -> (Done, bool) {
    let deferred = |dsn: &str, reason: String| Done {
        status: Status::Deferred,
        dsn: dsn.into(),
        reason,
    };
    let (transport, nexthop) = match service.split_once(':') {
        Some((tr, hop)) if !hop.is_empty() => (tr, hop.to_string()),
        Some((tr, _)) => (tr, req.nexthop.clone()),
        None => (service, req.nexthop.clone()),
    };
    if transport.is_empty() || transport.contains('/') || transport == req.transport {
        let reason = format!("mail system configuration error: cannot pass mail to \"{service}\"");
        return (deferred("4.3.5", reason), false);
    }
    let sub = Request {
        transport: transport.to_string(),
        nexthop,
        rcpts: vec![Rcpt {
            address: t.to.clone(),
            orig: Some(rcpt.orig.clone().unwrap_or_else(|| rcpt.address.clone())),
            ..rcpt.clone()
        }],
        ..req.clone()
    };
    match libmail::deliver::pass_request(cfg.layout.root(), &sub) {
        Ok(outcomes) => match outcomes.into_iter().find(|o| o.offset == rcpt.offset) {
            Some(o) => (
                Done {
                    status: o.status,
                    dsn: o.dsn,
                    reason: o.reason,
                },
                true,
            ),
            None => (
                deferred("4.3.0", format!("{transport}: no status for the recipient")),
                false,
            ),
        },
        Err(e) => {
            libmail::warning!("{}: pass to {transport}: {e}", req.queue_id);
            (
                deferred("4.3.0", "mail transport unavailable".into()),
                false,
            )
        }
    }
}

/// Submits one forwarded message for `targets` and returns the result
/// they share.
fn forward(
    cfg: &Config,
    req: &Request,
    qf: &QueueFile,
    sender: &str,
    delivered: &str,
    targets: &[(usize, Target)],
) -> Done {
    let result = (|| -> Result<String, CleanupError> {
        let mut client = CleanupClient::connect(cfg.layout.root(), CLEANUP_TIMEOUT)?;
        let mut env = Attrs::new();
        env.push("origin", "local")
            .push("arrival", format!("{:.6}", now_f64()))
            .push("sender", sender)
            .push("flags", FLAG_BOUNCE)
            .push("attr.rewrite_context", "local");
        if let Some(e) = &req.dsn_envid {
            env.push("envid", e);
        }
        if req.dsn_ret != 0 {
            env.push("ret", req.dsn_ret);
        }
        for (_, t) in targets {
            if let Action::Forward { address } = &t.action {
                env.push("rcpt", address);
            }
        }
        client.envelope(&env)?;
        client.content(format!("Delivered-To: {delivered}\n").as_bytes())?;
        let mut content = qf.content();
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            match Source::next_piece(&mut content) {
                Ok(Some((p, end))) => {
                    buf.extend_from_slice(p);
                    if end {
                        buf.push(b'\n');
                    }
                    if buf.len() >= 64 * 1024 {
                        client.content(&buf)?;
                        buf.clear();
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(CleanupError::Io(e)),
            }
        }
        client.content(&buf)?;
        client.finish()
    })();
    match result {
        Ok(id) => Done::sent(format!("forwarded as {id}")),
        Err(CleanupError::Io(e)) => Done {
            status: Status::Deferred,
            dsn: "4.3.0".into(),
            reason: format!("mail forwarding transaction failed: cleanup service: {e}"),
        },
        Err(CleanupError::Refused(r)) => {
            let (dsn, text) = match r.reason.split_once(' ') {
                Some((d, t))
                    if d.len() <= 9
                        && d.chars().all(|c| c.is_ascii_digit() || c == '.')
                        && d.contains('.') =>
                {
                    (d.to_string(), t.to_string())
                }
                _ => (String::new(), r.reason.clone()),
            };
            let temp = is_temporary(r.status);
            let dsn = if dsn.is_empty()
                || (temp && !dsn.starts_with('4'))
                || (!temp && !dsn.starts_with('5'))
            {
                if temp {
                    "4.3.0".to_string()
                } else {
                    "5.3.0".to_string()
                }
            } else {
                dsn
            };
            Done {
                status: if temp {
                    Status::Deferred
                } else {
                    Status::Bounced
                },
                dsn,
                reason: format!("mail forwarding transaction failed: {text}"),
            }
        }
    }
}
