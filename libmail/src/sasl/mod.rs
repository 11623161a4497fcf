//! SMTP AUTH on the server side: what smtpd needs to offer `AUTH` and run
//! SASL exchanges through an external authentication server, without
//! depending on smtpd.
//!
//! Like Postfix with `smtpd_sasl_type = dovecot`, Facteur does not verify
//! passwords itself: it relays the client's base64 payloads to Dovecot's
//! auth server and relays the challenges back ([`dovecot`]). What stays
//! here is the part that is Postfix's own:
//!
//! * which mechanisms to advertise: the server's list filtered by
//!   `smtpd_sasl_security_options` (or `smtpd_sasl_tls_security_options`
//!   once TLS is active), using the flags the server gives each mechanism
//!   ([`SecurityOptions`], [`SecurityPolicy`], [`filter`]);
//! * the outcome of one exchange step ([`Step`]), which the session turns
//!   into a reply;
//! * the SMTP side that needs no session ([`smtp`]): the `AUTH` arguments,
//!   `334` challenges, `*` to abort, `smtpd_sasl_response_limit`, and
//!   Postfix's reply texts.
//!
//! [`base64`] is here because every payload is base64 and must be checked
//! before it is passed on.

pub mod base64;
pub mod dovecot;
pub mod smtp;

use std::fmt;

/// Security properties of a mechanism, as the authentication server
/// announces them (Dovecot's `MECH` flags), and as Postfix's
/// `*_security_options` name them. One bit per property; the same bits
/// serve both, as in Postfix's `xsasl_dovecot_server.c`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MechFlags(u8);

impl MechFlags {
    /// Sends the password in the clear (PLAIN, LOGIN).
    pub const PLAINTEXT: MechFlags = MechFlags(1);
    /// Open to active (non-dictionary) attacks.
    pub const ACTIVE: MechFlags = MechFlags(1 << 1);
    /// Open to passive dictionary attacks.
    pub const DICTIONARY: MechFlags = MechFlags(1 << 2);
    /// Anonymous login (ANONYMOUS).
    pub const ANONYMOUS: MechFlags = MechFlags(1 << 3);
    /// Forward secrecy between sessions.
    pub const FORWARD_SECRECY: MechFlags = MechFlags(1 << 4);
    /// Mutual authentication.
    pub const MUTUAL_AUTH: MechFlags = MechFlags(1 << 5);
    /// Not for SASL clients at all (Dovecot's `private`): never offered.
    pub const PRIVATE: MechFlags = MechFlags(1 << 6);

    /// No property.
    pub const fn empty() -> MechFlags {
        MechFlags(0)
    }

    /// Whether every bit of `other` is set here.
    pub const fn contains(self, other: MechFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether some bit of `other` is set here.
    pub const fn intersects(self, other: MechFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// The union.
    pub const fn union(self, other: MechFlags) -> MechFlags {
        MechFlags(self.0 | other.0)
    }

    /// The flag named by one of Dovecot's `MECH` keywords (`plaintext`,
    /// `active`, `dictionary`, `anonymous`, `forward-secrecy`,
    /// `mutual-auth`, `private`; any case). Unknown keywords are `None`,
    /// and are ignored, as Postfix ignores them.
    pub fn from_dovecot(word: &str) -> Option<MechFlags> {
        const NAMES: [(&str, MechFlags); 7] = [
            ("plaintext", MechFlags::PLAINTEXT),
            ("active", MechFlags::ACTIVE),
            ("dictionary", MechFlags::DICTIONARY),
            ("anonymous", MechFlags::ANONYMOUS),
            ("forward-secrecy", MechFlags::FORWARD_SECRECY),
            ("mutual-auth", MechFlags::MUTUAL_AUTH),
            ("private", MechFlags::PRIVATE),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(word))
            .map(|&(_, f)| f)
    }
}

/// One mechanism the authentication server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mechanism {
    /// As the server spells it (`PLAIN`, `LOGIN`, `CRAM-MD5`, ...).
    pub name: String,
    pub flags: MechFlags,
}

/// `smtpd_sasl_security_options` / `smtpd_sasl_tls_security_options`:
/// which mechanism properties are refused (`noplaintext`, `noactive`,
/// `nodictionary`, `noanonymous`) and which are required
/// (`mutual_auth`, `forward_secrecy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityOptions {
    /// Properties a mechanism must not have.
    pub refuse: MechFlags,
    /// Properties a mechanism must have.
    pub require: MechFlags,
}

impl Default for SecurityOptions {
    /// Postfix's default, `noanonymous`.
    fn default() -> SecurityOptions {
        SecurityOptions {
            refuse: MechFlags::ANONYMOUS,
            require: MechFlags::empty(),
        }
    }
}

/// An unknown word in a security options list. Postfix treats it as a
/// fatal configuration error (`NAME_MASK_FATAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOption(pub String);

impl fmt::Display for UnknownOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown SASL security option: \"{}\"", self.0)
    }
}

impl std::error::Error for UnknownOption {}

impl SecurityOptions {
    /// No restriction at all (an empty option list).
    pub const NONE: SecurityOptions = SecurityOptions {
        refuse: MechFlags::empty(),
        require: MechFlags::empty(),
    };

    /// Parses an (already `$`-expanded) option list: words separated by
    /// commas and/or white space, any case. An empty list restricts
    /// nothing.
    pub fn parse(value: &str) -> Result<SecurityOptions, UnknownOption> {
        let mut o = SecurityOptions::NONE;
        for w in value
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
        {
            let (refuse, flag) = match w.to_ascii_lowercase().as_str() {
                "noplaintext" => (true, MechFlags::PLAINTEXT),
                "noactive" => (true, MechFlags::ACTIVE),
                "nodictionary" => (true, MechFlags::DICTIONARY),
                "noanonymous" => (true, MechFlags::ANONYMOUS),
                "mutual_auth" => (false, MechFlags::MUTUAL_AUTH),
                "forward_secrecy" => (false, MechFlags::FORWARD_SECRECY),
                _ => return Err(UnknownOption(w.to_string())),
            };
            if refuse {
                o.refuse = o.refuse.union(flag);
            } else {
                o.require = o.require.union(flag);
            }
        }
        Ok(o)
    }

    /// Whether a mechanism with these flags may be offered.
    pub fn allows(&self, flags: MechFlags) -> bool {
        !flags.intersects(MechFlags::PRIVATE)
            && flags.contains(self.require)
            && !flags.intersects(self.refuse)
    }
}

/// Both option lists: the one used before TLS and the one used once TLS
/// is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SecurityPolicy {
    /// `smtpd_sasl_security_options`.
    pub plain: SecurityOptions,
    /// `smtpd_sasl_tls_security_options` (defaults to the same value).
    pub tls: SecurityOptions,
}

impl SecurityPolicy {
    /// From the two parameter values (already expanded, so the TLS one's
    /// default `$smtpd_sasl_security_options` is resolved).
    pub fn parse(plain: &str, tls: &str) -> Result<SecurityPolicy, UnknownOption> {
        Ok(SecurityPolicy {
            plain: SecurityOptions::parse(plain)?,
            tls: SecurityOptions::parse(tls)?,
        })
    }

    /// The options in force for a session with or without TLS.
    pub fn options(&self, tls: bool) -> &SecurityOptions {
        if tls {
            &self.tls
        } else {
            &self.plain
        }
    }
}

/// The mechanisms that may be offered, in the server's order.
pub fn filter<'a>(mechs: &'a [Mechanism], options: &SecurityOptions) -> Vec<&'a Mechanism> {
    mechs.iter().filter(|m| options.allows(m.flags)).collect()
}

/// The EHLO keyword lines for `mechs` (already filtered): `AUTH PLAIN
/// LOGIN`, plus `AUTH=PLAIN LOGIN` when `broken_sasl_auth_clients` is on
/// (for clients that only know the pre-RFC form). Empty when there is no
/// mechanism: then AUTH is not offered at all.
pub fn ehlo_keywords(mechs: &[&Mechanism], broken_clients: bool) -> Vec<String> {
    if mechs.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = mechs.iter().map(|m| m.name.as_str()).collect();
    let list = names.join(" ");
    let mut out = vec![format!("AUTH {list}")];
    if broken_clients {
        out.push(format!("AUTH={list}"));
    }
    out
}

/// The outcome of one step of an exchange with the authentication server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The server wants another response: send `334 <challenge>` (base64,
    /// possibly empty) and pass the client's answer on.
    Challenge(String),
    /// Authenticated; `user` is the name to log and to use as
    /// `sasl_username` (the server's `user=`, control characters
    /// replaced by `?`).
    Success { user: String },
    /// Not authenticated. `reason` is the server's `reason=` or a local
    /// one (`None`: Postfix shows `(reason unavailable)`); `user` the
    /// name the server saw, if it said; `temporary` when the server could
    /// not decide (unreachable, lost, or a temporary failure it reported).
    Failure {
        reason: Option<String>,
        user: Option<String>,
        temporary: bool,
    },
}

impl Step {
    /// A permanent failure with a local reason.
    pub fn fail(reason: &str) -> Step {
        Step::Failure {
            reason: Some(reason.to_string()),
            user: None,
            temporary: false,
        }
    }

    /// A temporary failure with a local reason.
    pub fn temp_fail(reason: &str) -> Step {
        Step::Failure {
            reason: Some(reason.to_string()),
            user: None,
            temporary: true,
        }
    }
}

/// `s` with control characters (and DEL) replaced by `?`, as Postfix's
/// `printable()` does to names and reasons before logging them.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mech(name: &str, flags: &[MechFlags]) -> Mechanism {
        Mechanism {
            name: name.into(),
            flags: flags.iter().fold(MechFlags::empty(), |a, &f| a.union(f)),
        }
    }

    fn names(m: &[&Mechanism]) -> Vec<String> {
        m.iter().map(|m| m.name.clone()).collect()
    }

    fn sample() -> Vec<Mechanism> {
        vec![
            mech("PLAIN", &[MechFlags::PLAINTEXT]),
            mech("LOGIN", &[MechFlags::PLAINTEXT]),
            mech("CRAM-MD5", &[MechFlags::DICTIONARY, MechFlags::ACTIVE]),
            mech("ANONYMOUS", &[MechFlags::ANONYMOUS]),
            mech(
                "SCRAM-SHA-256",
                &[MechFlags::MUTUAL_AUTH, MechFlags::DICTIONARY],
            ),
            mech("EXTERNAL", &[]),
            mech("DOVECOT-TOKEN", &[MechFlags::PRIVATE]),
        ]
    }

    #[test]
    fn default_options_refuse_anonymous_only() {
        let m = sample();
        assert_eq!(
            names(&filter(&m, &SecurityOptions::default())),
            ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "EXTERNAL"]
        );
        assert_eq!(
            SecurityOptions::parse("noanonymous").unwrap(),
            SecurityOptions::default()
        );
    }

    #[test]
    fn each_option_maps_to_its_flag() {
        let m = sample();
        let f = |o: &str| names(&filter(&m, &SecurityOptions::parse(o).unwrap()));
        assert_eq!(
            f("noanonymous, noplaintext"),
            ["CRAM-MD5", "SCRAM-SHA-256", "EXTERNAL"]
        );
        assert_eq!(
            f("noactive"),
            ["PLAIN", "LOGIN", "ANONYMOUS", "SCRAM-SHA-256", "EXTERNAL"]
        );
        assert_eq!(
            f("nodictionary noanonymous"),
            ["PLAIN", "LOGIN", "EXTERNAL"]
        );
        assert_eq!(f("mutual_auth"), ["SCRAM-SHA-256"]);
        assert_eq!(f("forward_secrecy"), Vec::<String>::new());
        // Empty: everything but private mechanisms.
        assert_eq!(f("").len(), 6);
        assert_eq!(
            f(" NoPlainText,\tNOANONYMOUS "),
            f("noplaintext noanonymous")
        );
    }

    #[test]
    fn unknown_option_is_an_error() {
        assert_eq!(
            SecurityOptions::parse("noanonymous, nosuch").unwrap_err(),
            UnknownOption("nosuch".into())
        );
    }

    #[test]
    fn policy_picks_the_tls_list_under_tls() {
        let p = SecurityPolicy::parse("noanonymous, noplaintext", "noanonymous").unwrap();
        let m = sample();
        let ehlo = |tls| ehlo_keywords(&filter(&m[..2], p.options(tls)), false);
        assert_eq!(ehlo(true), ["AUTH PLAIN LOGIN"]);
        assert!(ehlo(false).is_empty(), "no mechanism: no AUTH keyword");
        assert_eq!(
            ehlo_keywords(&filter(&m[..2], p.options(true)), true),
            ["AUTH PLAIN LOGIN", "AUTH=PLAIN LOGIN"]
        );
    }

    #[test]
    fn dovecot_flag_words() {
        assert_eq!(
            MechFlags::from_dovecot("plaintext"),
            Some(MechFlags::PLAINTEXT)
        );
        assert_eq!(
            MechFlags::from_dovecot("Forward-Secrecy"),
            Some(MechFlags::FORWARD_SECRECY)
        );
        assert_eq!(
            MechFlags::from_dovecot("mutual-auth"),
            Some(MechFlags::MUTUAL_AUTH)
        );
        assert_eq!(MechFlags::from_dovecot("token"), None);
    }

    #[test]
    fn printable_replaces_controls() {
        assert_eq!(printable("a\tb\r\nc\u{7f}"), "a?b??c?");
    }
}
