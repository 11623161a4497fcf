//! virtual(8): delivery to virtual mailboxes, the hosted-domains agent.
//!
//! For each recipient of a request from qmgr:
//!
//! 1. mail loop check: a `Delivered-To:` header equal to the recipient
//!    bounces (`5.4.6 mail forwarding loop for ...`);
//! 2. `virtual_mailbox_maps` with the virtual(5) key order
//!    (`user+ext@domain`, `user@domain`, `@domain`; see
//!    `libmail::table::search::address_keys`): no entry bounces
//!    `5.1.1 unknown user: "addr"`;
//! 3. the value is a path under `virtual_mailbox_base` (`..` components
//!    are refused); a trailing `/` means Maildir, else mbox (locked with
//!    `virtual_mailbox_lock`);
//! 4. the owner comes from `virtual_uid_maps` / `virtual_gid_maps`
//!    (`static:5000` or any table, same keys); a uid below
//!    `virtual_minimum_uid` defers with a warning, as Postfix does;
//! 5. the file is written with those IDs (in a forked child, when the
//!    agent runs as root); `virtual_mailbox_limit` caps the file size.
//!
//! Unprivileged (development, tests): the maps are still looked up and
//! the minimum uid still enforced, but files are written as the current
//! user. Each recipient is logged with `relay=virtual`; headers added are
//! `Return-Path:`, `X-Original-To:` and `Delivered-To:` as in local(8).
//! Not done: `virtual_mailbox_maps` values with `$` macros, Postfix's
//! per-domain mailbox lock styles beyond the one parameter.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use libmail::deliver::{now_f64, run_agent, Outcome, Rcpt, Request, Status, Timing};
use libmail::mailbox::lock::{LockKinds, LockPolicy};
use libmail::mailbox::maildir::{self, MaildirOptions};
use libmail::mailbox::mbox::{self, MboxOptions};
use libmail::mailbox::{delivered_to, MailboxError};
use libmail::queue::QueueLayout;
use libmail::service::{bool_param, num_param, time_param};
use libmail::table::search::{address_keys, Maps};

use crate::local::exec::as_user;
use crate::local::{log_outcome, open_queue_file};

/// The agent's configuration, read once.
pub struct Config {
    pub layout: QueueLayout,
    pub mailbox_maps: Option<Maps>,
    pub uid_maps: Option<Maps>,
    pub gid_maps: Option<Maps>,
    pub base: String,
    pub minimum_uid: u32,
    pub size_limit: u64,
    pub lock: LockPolicy,
    pub delimiter: String,
    pub hostname: String,
    pub original_recipient: bool,
}

impl Config {
    pub fn load(
        params: &libmail::config::params::Params,
        layout: QueueLayout,
    ) -> Result<Config, String> {
        let v = |n: &str| params.value(n).map_err(|e| format!("{n}: {e}"));
        Ok(Config {
            layout,
            mailbox_maps: Maps::from_param(params, "virtual_mailbox_maps")?,
            uid_maps: Maps::from_param(params, "virtual_uid_maps")?,
            gid_maps: Maps::from_param(params, "virtual_gid_maps")?,
            base: v("virtual_mailbox_base")?,
            minimum_uid: num_param(params, "virtual_minimum_uid", 100).clamp(0, u32::MAX as i64)
                as u32,
            size_limit: num_param(params, "virtual_mailbox_limit", 51_200_000).max(0) as u64,
            lock: LockPolicy {
                kinds: LockKinds::parse(&v("virtual_mailbox_lock")?)?,
                attempts: num_param(params, "deliver_lock_attempts", 20).clamp(1, 1000) as u32,
                delay: Duration::from_secs(time_param(params, "deliver_lock_delay", 1)),
                stale: Duration::from_secs(time_param(params, "stale_lock_time", 500)),
            },
            delimiter: v("recipient_delimiter")?,
            hostname: v("myhostname")?,
            original_recipient: bool_param(params, "enable_original_recipient", true),
        })
    }
}

pub fn main() {
    run_agent(
        "virtual",
        |svc| Config::load(&svc.params, svc.layout.clone()),
        |cfg, req| deliver_request(cfg, req, now_f64()),
    );
}

fn outcome(rcpt: &Rcpt, status: Status, dsn: &str, reason: String) -> Outcome {
    Outcome {
        offset: rcpt.offset,
        status,
        dsn: dsn.to_string(),
        reason,
    }
}

fn from_error(rcpt: &Rcpt, e: &MailboxError, prefix: &str) -> Outcome {
    let status = if e.is_permanent() {
        Status::Bounced
    } else {
        Status::Deferred
    };
    outcome(rcpt, status, &e.dsn, format!("{prefix}{}", e.text))
}

/// A numeric ID from a uid/gid map.
fn lookup_id(
    maps: &Option<Maps>,
    param: &str,
    keys: &[libmail::table::search::Key],
) -> Result<u32, String> {
    let Some(maps) = maps else {
        return Err(format!("{param} is not set"));
    };
    match maps.find_first(keys) {
        Ok(Some((_, v))) => v
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("bad {param} result: {v}")),
        Ok(None) => Err(format!("no {param} entry")),
        Err(e) => Err(format!("{param} lookup error: {e}")),
    }
}

/// `virtual_mailbox_base/value`, refusing `..` and empty values.
pub fn mailbox_path(base: &str, value: &str) -> Option<PathBuf> {
    let v = value.trim();
    if v.is_empty()
        || v.contains('\0')
        || Path::new(v).components().any(|c| c == Component::ParentDir)
    {
        return None;
    }
    let mut p = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        v.trim_start_matches('/')
    );
    if base.is_empty() {
        p = v.to_string();
    }
    Some(PathBuf::from(p))
}

fn deliver_one(
    cfg: &Config,
    req: &Request,
    rcpt: &Rcpt,
    qf: &libmail::queue::QueueFile,
    delivered: &[String],
) -> Outcome {
    let addr = rcpt.address.to_lowercase();
    if delivered.contains(&addr) {
        return outcome(
            rcpt,
            Status::Bounced,
            "5.4.6",
            format!("mail forwarding loop for {}", rcpt.address),
        );
    }
    let keys = address_keys(&addr, &cfg.delimiter, false);
    let value = match &cfg.mailbox_maps {
        None => None,
        Some(m) => match m.find_first(&keys) {
            Ok(v) => v.map(|(_, v)| v),
            Err(e) => {
                return outcome(
                    rcpt,
                    Status::Deferred,
                    "4.3.0",
                    format!("virtual_mailbox_maps lookup error: {e}"),
                )
            }
        },
    };
    let Some(value) = value else {
        return outcome(
            rcpt,
            Status::Bounced,
            "5.1.1",
            format!("unknown user: \"{addr}\""),
        );
    };
    let ids = lookup_id(&cfg.uid_maps, "virtual_uid_maps", &keys)
        .and_then(|u| lookup_id(&cfg.gid_maps, "virtual_gid_maps", &keys).map(|g| (u, g)));
    let (uid, gid) = match ids {
        Ok(x) => x,
        Err(e) => {
            libmail::warning!("recipient {}: {e}", rcpt.address);
            return outcome(
                rcpt,
                Status::Deferred,
                "4.3.0",
                "mail system configuration error".into(),
            );
        }
    };
    if uid < cfg.minimum_uid {
        libmail::warning!(
            "recipient {}: bad uid {uid} in virtual_uid_maps (below virtual_minimum_uid {})",
            rcpt.address,
            cfg.minimum_uid
        );
        return outcome(
            rcpt,
            Status::Deferred,
            "4.3.0",
            "mail system configuration error".into(),
        );
    }
    let Some(path) = mailbox_path(&cfg.base, &value) else {
        libmail::warning!(
            "recipient {}: bad virtual_mailbox_maps result: {value}",
            rcpt.address
        );
        return outcome(
            rcpt,
            Status::Deferred,
            "4.3.0",
            "mail system configuration error".into(),
        );
    };
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let mut head = format!("Return-Path: <{}>\n", clean(&req.sender));
    if cfg.original_recipient {
        head.push_str(&format!(
            "X-Original-To: {}\n",
            clean(rcpt.orig.as_deref().unwrap_or(&rcpt.address))
        ));
    }
    head.push_str(&format!("Delivered-To: {}\n", clean(&addr)));
    let head = head.into_bytes();
    let who = Some((uid, gid));
    if value.trim_end().ends_with('/') {
        let opts = MaildirOptions {
            size_limit: cfg.size_limit,
            hostname: cfg.hostname.clone(),
        };
        match as_user(who, false, || {
            maildir::deliver(&path, &head, &mut qf.content(), &opts).map(|_| String::new())
        }) {
            Ok(_) => outcome(rcpt, Status::Sent, "2.0.0", "delivered to maildir".into()),
            Err(e) => from_error(rcpt, &e, ""),
        }
    } else {
        let opts = MboxOptions {
            size_limit: cfg.size_limit,
            lock: cfg.lock,
            owner: None,
            write_as_owner: false,
            allow_devices: false,
        };
        match as_user(who, false, || {
            mbox::deliver(&path, &req.sender, &head, &mut qf.content(), &opts)
                .map(|_| String::new())
        }) {
            Ok(_) => outcome(rcpt, Status::Sent, "2.0.0", "delivered to mailbox".into()),
            Err(e) => from_error(
                rcpt,
                &e,
                &format!(
                    "cannot update mailbox {} for user {}. ",
                    path.display(),
                    addr
                ),
            ),
        }
    }
}

/// Delivers every recipient of a request.
pub fn deliver_request(cfg: &Config, req: &Request, received: f64) -> Vec<Outcome> {
    let timing = Timing {
        received,
        setup: 0.0,
    };
    let qf = match open_queue_file(&cfg.layout, req) {
        Ok(f) => Some(f),
        Err(e) => {
            libmail::warning!("{}: {e}", req.queue_id);
            None
        }
    };
    let delivered = qf
        .as_ref()
        .map(|q| delivered_to(&mut q.content()).unwrap_or_default())
        .unwrap_or_default();
    req.rcpts
        .iter()
        .map(|rcpt| {
            let o = match &qf {
                Some(qf) => deliver_one(cfg, req, rcpt, qf, &delivered),
                None => outcome(
                    rcpt,
                    Status::Deferred,
                    "4.3.0",
                    "cannot open queue file".into(),
                ),
            };
            log_outcome(req, rcpt, &rcpt.address, "virtual", timing, &o);
            o
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_paths_stay_under_the_base() {
        assert_eq!(
            mailbox_path("/var/mail/vhosts", "example.com/bob/"),
            Some(PathBuf::from("/var/mail/vhosts/example.com/bob/"))
        );
        assert_eq!(
            mailbox_path("/v/", "/abs/x"),
            Some(PathBuf::from("/v/abs/x"))
        );
        assert_eq!(mailbox_path("/v", "a/../../etc/passwd"), None);
        assert_eq!(mailbox_path("/v", "  "), None);
    }
}
