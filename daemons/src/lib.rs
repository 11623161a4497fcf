//! Facteur's daemons. Each daemon's behaviour is a module here; the
//! programs in `src/bin/` are a line or two that call it. Everything two
//! daemons share lives in libmail (`service` for the process skeleton,
//! `ipc` for the protocols, `queue` for queue files).

pub mod bounce;
pub mod cleanup;
pub mod discard;
pub mod error;
pub mod local;
pub mod master;
pub mod pickup;
pub mod qmgr;
pub mod smtp;
pub mod smtpd;
pub mod virtual_agent;
