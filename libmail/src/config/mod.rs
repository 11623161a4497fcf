//! Configuration: `main.cf`, `master.cf` and the parameter registry.
//!
//! * [`lines`] — the logical-line rule both files share;
//! * [`maincf`] — `name = value` entries of main.cf, with file and line;
//! * [`expand`] — `$name` expansion and Postfix's conditional forms;
//! * [`registry`] — every parameter name Facteur knows, its type and default;
//! * [`host`] — defaults computed from the host (names, interfaces);
//! * [`mastercf`] — the services of master.cf;
//! * [`params`] — the effective parameter set (main.cf over defaults);
//! * [`edit`] — in-place, atomic edits of main.cf (`postconf -e/-X/-#`);
//! * [`check`] — type and range validation (`facteur check`).

pub mod check;
pub mod diag;
pub mod edit;
pub mod expand;
pub mod host;
pub mod lines;
pub mod maincf;
pub mod mastercf;
pub mod params;
pub mod registry;

pub use diag::{Diagnostic, Severity};

/// The compiled-in configuration directory, as Postfix's.
pub const DEFAULT_CONFIG_DIRECTORY: &str = "/etc/postfix";

/// The configuration directory a program should use: `-c DIR` when given,
/// else `$MAIL_CONFIG`, else [`DEFAULT_CONFIG_DIRECTORY`].
pub fn config_directory(flag: Option<&str>) -> String {
    if let Some(dir) = flag {
        return dir.to_string();
    }
    match std::env::var("MAIL_CONFIG") {
        Ok(dir) if !dir.is_empty() => dir,
        _ => DEFAULT_CONFIG_DIRECTORY.to_string(),
    }
}
