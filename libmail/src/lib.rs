//! libmail: the library every Facteur program links.
//!
//! It holds what the daemons and commands share — configuration, lookup
//! tables, queue files, addresses, protocol cores — and no daemon logic.
//! Each module has one concern; see `ARCHITECTURE.md` at the top of the
//! repository for the map.

pub mod address;
pub mod cli;
pub mod config;
pub mod date;
pub mod deliver;
pub mod dns;
pub mod dsn;
pub mod ipc;
pub mod log;
pub mod mailbox;
pub mod net;
pub mod queue;
pub mod sasl;
pub mod service;
pub mod smtp;
pub mod table;
#[cfg(test)]
mod testutil;
pub mod tls;
