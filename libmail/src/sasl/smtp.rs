//! The SMTP side of AUTH that needs no session state: the command's
//! arguments, the `334` challenge, the client's responses (`*` aborts,
//! `smtpd_sasl_response_limit` bounds them), and Postfix's replies and
//! log text (`smtpd_sasl_proto.c`, `smtpd_sasl_glue.c`, checked against
//! Postfix 3.7 in `postfix-features.md` §8.2 and the Dovecot fixture's
//! README).
//!
//! The session's AUTH flow, as Postfix runs it:
//!
//! 1. Refuse when AUTH is not offered ([`not_enabled`]), TLS is required
//!    and absent ([`encryption_required`]), the client already
//!    authenticated ([`already_authenticated`]), a transaction is open
//!    ([`transaction_in_progress`]); parse the arguments ([`parse_auth`]).
//! 2. Start the exchange (e.g. [`super::dovecot::Dovecot::start`]); while
//!    the [`Step`] is a challenge, send [`reply`] (`334 ...`) and read one
//!    line within [`RESPONSE_LIMIT`], classify it with [`client_line`]
//!    (`*` ends the exchange with [`aborted`]; too long ends it with
//!    [`response_too_long`]) and pass it on.
//! 3. The final step's [`reply`]: `235`, `535` or `454`; log a failure
//!    with [`failure_log`].

use super::{printable, Step};
use crate::smtp::Reply;

/// `smtpd_sasl_response_limit`'s default: the longest client response
/// line, in bytes, without its line end.
pub const RESPONSE_LIMIT: usize = 12288;

/// A parsed `AUTH mechanism [initial-response]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCommand {
    /// As the client wrote it; compare without regard to case.
    pub mechanism: String,
    /// The initial response, base64 as sent, `Some("")` for RFC 4954's
    /// `=` (an empty response), `None` when there is none (the server
    /// then starts with a challenge, often an empty `334 `).
    pub initial: Option<String>,
}

/// The arguments after `AUTH`: one or two words, else Postfix's
/// `501 5.5.4 Syntax: AUTH mechanism`.
pub fn parse_auth(args: &str) -> Result<AuthCommand, Reply> {
    let mut w = args.split_ascii_whitespace();
    let (Some(mechanism), initial, None) = (w.next(), w.next(), w.next()) else {
        return Err(Reply::new(501, "5.5.4", "Syntax: AUTH mechanism"));
    };
    Ok(AuthCommand {
        mechanism: mechanism.to_string(),
        initial: initial.map(initial_response),
    })
}

/// An initial response as given in the command: `=` is the empty response
/// (RFC 4954 §4); anything else stays as sent (checked later).
pub fn initial_response(word: &str) -> String {
    if word == "=" {
        String::new()
    } else {
        word.to_string()
    }
}

/// What one line from the client means during an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLine<'a> {
    /// A response to pass on (base64, not yet checked).
    Response(&'a str),
    /// `*`: the client gives up. Reply [`aborted`]; the authentication
    /// server is not told (Postfix does not tell it either).
    Abort,
    /// Longer than the limit. Reply [`response_too_long`].
    TooLong,
}

/// Classifies a line (without CRLF) read in reply to a `334`. `limit` is
/// `smtpd_sasl_response_limit`; a reader that stopped at the limit should
/// pass a line one byte longer, so that it counts as too long.
pub fn client_line(line: &str, limit: usize) -> ClientLine<'_> {
    if line.len() > limit {
        ClientLine::TooLong
    } else if line == "*" {
        ClientLine::Abort
    } else {
        ClientLine::Response(line)
    }
}

/// The reply for a step: `334 <challenge>` (an empty challenge is `334 `),
/// `235 2.7.0 Authentication successful`,
/// `535 5.7.8 Error: authentication failed: <reason>` or, for a temporary
/// failure, `454 4.7.0 Temporary authentication failure: <reason>`.
pub fn reply(step: &Step) -> Reply {
    match step {
        Step::Challenge(c) => Reply::new(334, "", c),
        Step::Success { .. } => Reply::new(235, "2.7.0", "Authentication successful"),
        Step::Failure {
            reason, temporary, ..
        } => {
            let reason = reason_text(reason.as_deref());
            if *temporary {
                Reply::new(
                    454,
                    "4.7.0",
                    format!("Temporary authentication failure: {reason}"),
                )
            } else {
                Reply::new(
                    535,
                    "5.7.8",
                    format!("Error: authentication failed: {reason}"),
                )
            }
        }
    }
}

fn reason_text(reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.is_empty() => printable(r),
        _ => "(reason unavailable)".to_string(),
    }
}

/// The warning Postfix logs for a failed exchange (after `warning: `):
/// `host[addr]: SASL PLAIN authentication failed: <reason>,
/// sasl_username=<user>`. `None` for a step that is not a failure.
pub fn failure_log(namaddr: &str, mechanism: &str, step: &Step) -> Option<String> {
    let Step::Failure { reason, user, .. } = step else {
        return None;
    };
    Some(format!(
        "{namaddr}: SASL {} authentication failed: {}, sasl_username={}",
        printable(mechanism),
        reason_text(reason.as_deref()),
        user.as_deref()
            .map_or("(unavailable)".to_string(), printable)
    ))
}

/// The warning Postfix logs when the client sends `*`:
/// `host[addr]: SASL LOGIN authentication aborted`.
pub fn abort_log(namaddr: &str, mechanism: &str) -> String {
    format!(
        "{namaddr}: SASL {} authentication aborted",
        printable(mechanism)
    )
}

/// `501 5.7.0 Authentication aborted` (the client sent `*`).
pub fn aborted() -> Reply {
    Reply::new(501, "5.7.0", "Authentication aborted")
}

/// `500 5.5.6 SASL response limit exceeded`.
pub fn response_too_long() -> Reply {
    Reply::new(500, "5.5.6", "SASL response limit exceeded")
}

/// `503 5.5.1 Error: authentication not enabled` (AUTH not offered).
pub fn not_enabled() -> Reply {
    Reply::new(503, "5.5.1", "Error: authentication not enabled")
}

/// `503 5.5.1 Error: already authenticated`.
pub fn already_authenticated() -> Reply {
    Reply::new(503, "5.5.1", "Error: already authenticated")
}

/// `503 5.5.1 Error: MAIL transaction in progress`.
pub fn transaction_in_progress() -> Reply {
    Reply::new(503, "5.5.1", "Error: MAIL transaction in progress")
}

/// `504 5.5.4 Encryption required for requested authentication mechanism`
/// (`smtpd_tls_auth_only = yes` and no TLS yet).
pub fn encryption_required() -> Reply {
    Reply::new(
        504,
        "5.5.4",
        "Encryption required for requested authentication mechanism",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_arguments() {
        assert_eq!(
            parse_auth("PLAIN AGFsaWNlAHB3").unwrap(),
            AuthCommand {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHB3".into())
            }
        );
        assert_eq!(
            parse_auth(" login ").unwrap(),
            AuthCommand {
                mechanism: "login".into(),
                initial: None
            }
        );
        assert_eq!(parse_auth("PLAIN =").unwrap().initial, Some(String::new()));
        for bad in ["", "  ", "PLAIN a b"] {
            assert_eq!(
                parse_auth(bad).unwrap_err().to_string(),
                "501 5.5.4 Syntax: AUTH mechanism\r\n"
            );
        }
    }

    #[test]
    fn client_lines_and_limit() {
        assert_eq!(client_line("*", RESPONSE_LIMIT), ClientLine::Abort);
        assert_eq!(client_line("", RESPONSE_LIMIT), ClientLine::Response(""));
        assert_eq!(client_line("eA==", 4), ClientLine::Response("eA=="));
        assert_eq!(client_line("eA===", 4), ClientLine::TooLong);
        let long = "A".repeat(RESPONSE_LIMIT + 1);
        assert_eq!(client_line(&long, RESPONSE_LIMIT), ClientLine::TooLong);
        assert_eq!(
            aborted().to_string(),
            "501 5.7.0 Authentication aborted\r\n"
        );
        assert_eq!(
            response_too_long().to_string(),
            "500 5.5.6 SASL response limit exceeded\r\n"
        );
    }

    #[test]
    fn step_replies_are_postfix_texts() {
        assert_eq!(
            reply(&Step::Challenge("VXNlcm5hbWU6".into())).to_string(),
            "334 VXNlcm5hbWU6\r\n"
        );
        assert_eq!(
            reply(&Step::Challenge(String::new())).to_string(),
            "334 \r\n"
        );
        assert_eq!(
            reply(&Step::Success { user: "a".into() }).to_string(),
            "235 2.7.0 Authentication successful\r\n"
        );
        let fail = Step::Failure {
            reason: None,
            user: Some("alice@example.test".into()),
            temporary: false,
        };
        assert_eq!(
            reply(&fail).to_string(),
            "535 5.7.8 Error: authentication failed: (reason unavailable)\r\n"
        );
        assert_eq!(
            reply(&Step::fail("Invalid authentication mechanism")).to_string(),
            "535 5.7.8 Error: authentication failed: Invalid authentication mechanism\r\n"
        );
        assert_eq!(
            reply(&Step::temp_fail("Connection lost to authentication server")).to_string(),
            "454 4.7.0 Temporary authentication failure: Connection lost to authentication server\r\n"
        );
        assert_eq!(
            failure_log("localhost[127.0.0.1]", "PLAIN", &fail).unwrap(),
            "localhost[127.0.0.1]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=alice@example.test"
        );
        assert_eq!(
            failure_log("h[1.2.3.4]", "LOGIN", &Step::fail("x\ty")).unwrap(),
            "h[1.2.3.4]: SASL LOGIN authentication failed: x?y, sasl_username=(unavailable)"
        );
        assert_eq!(
            failure_log("h", "PLAIN", &Step::Success { user: "a".into() }),
            None
        );
        assert_eq!(
            abort_log("h[1.2.3.4]", "LOGIN"),
            "h[1.2.3.4]: SASL LOGIN authentication aborted"
        );
    }

    #[test]
    fn refusal_replies() {
        assert_eq!(
            not_enabled().to_string(),
            "503 5.5.1 Error: authentication not enabled\r\n"
        );
        assert_eq!(
            already_authenticated().to_string(),
            "503 5.5.1 Error: already authenticated\r\n"
        );
        assert_eq!(
            transaction_in_progress().to_string(),
            "503 5.5.1 Error: MAIL transaction in progress\r\n"
        );
        assert_eq!(
            encryption_required().to_string(),
            "504 5.5.4 Encryption required for requested authentication mechanism\r\n"
        );
    }
}
