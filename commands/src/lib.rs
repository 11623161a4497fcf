//! The user-facing commands; each `src/bin/NAME.rs` is a thin `main` over one
//! module here.

pub mod facteur;
pub mod postalias;
pub mod postcat;
pub mod postconf;
pub mod postmap;
pub mod postqueue;
pub mod postsuper;
pub mod qshape;
pub mod sendmail;
