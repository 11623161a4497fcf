//! SMTP protocol pieces without I/O, shared by smtpd and (later) the smtp
//! and lmtp clients: replies with enhanced status codes ([`reply`]) and
//! command parsing with ESMTP parameters ([`command`]).

pub mod command;
pub mod reply;

pub use reply::Reply;
