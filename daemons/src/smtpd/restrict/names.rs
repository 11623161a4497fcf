//! The restriction names smtpd knows, as Postfix 3.7 spells them (old
//! names included), and what each takes after it in a list.
//!
//! Names are matched without regard to case. A name that is not here is a
//! `smtpd_restriction_classes` name or an unknown restriction (a warning
//! and `451 4.3.5 Server configuration error` when it is reached, as in
//! Postfix).

/// What an unsupported restriction takes after it in the list: it is
/// consumed (and checked the way Postfix checks it) even though the
/// restriction itself is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// Nothing (every restriction still unsupported takes no argument).
    None,
}

/// Whose name a `reject_rhsbl_*` or `check_*_{a,mx,ns}_access`
/// restriction looks up: the verified client name, the unverified PTR
/// name, the HELO argument, the sender or the recipient (their domains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Client,
    ReverseClient,
    Helo,
    Sender,
    Recipient,
}

/// Which servers of the name a `check_*_{a,mx,ns}_access` searches the
/// table for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The name's own addresses (A and AAAA).
    A,
    /// Its MX hosts (the name itself when it has no MX).
    Mx,
    /// Its DNS servers (NS; the nearest parent domain's when it has none).
    Ns,
}

impl Server {
    /// The record type, as Postfix's warnings name it.
    pub fn rtype(self) -> &'static str {
        match self {
            Server::A => "A",
            Server::Mx => "MX",
            Server::Ns => "NS",
        }
    }
}

/// One restriction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WarnIfReject,
    Permit,
    Defer,
    Reject,
    RejectUnauthPipelining,
    DeferIfPermit,
    DeferIfReject,
    Sleep,
    RejectPlaintextSession,
    PermitInetInterfaces,
    PermitMynetworks,
    CheckClientAccess,
    CheckReverseClientAccess,
    CheckSaslAccess,
    CheckHeloAccess,
    RejectInvalidHelo,
    RejectNonFqdnHelo,
    PermitNakedIp,
    CheckSenderAccess,
    RejectNonFqdnSender,
    RejectUnlistedSender,
    RejectAuthSenderLoginMismatch,
    RejectUnauthSenderLoginMismatch,
    RejectKnownSenderLoginMismatch,
    RejectSenderLoginMismatch,
    CheckRecipientAccess,
    PermitAuthDestination,
    RejectUnauthDestination,
    DeferUnauthDestination,
    CheckRelayDomains,
    PermitSaslAuthenticated,
    RejectNonFqdnRecipient,
    RejectUnlistedRecipient,
    RejectMultiRecipientBounce,
    CheckEtrnAccess,
    /// `check_policy_service SERVER` (see the policy module).
    CheckPolicyService,
    /// `reject_rbl_client domain[=d.d.d.d]` (DNS).
    RejectRblClient,
    /// `permit_dnswl_client domain[=d.d.d.d]` (DNS).
    PermitDnswlClient,
    /// `permit_rhswl_client domain[=d.d.d.d]` (DNS): the client name.
    PermitRhswlClient,
    /// `reject_maps_rbl` (DNS, deprecated): `reject_rbl_client` for each
    /// domain of `maps_rbl_domains`.
    RejectMapsRbl,
    /// `reject_rhsbl_* domain[=d.d.d.d]` (DNS), by what is looked up.
    RejectRhsbl(Target),
    /// `check_*_{a,mx,ns}_access type:table` (DNS): the table searched
    /// for the servers of a name and their addresses.
    CheckServerAccess(Target, Server),
    /// `reject_unknown_client_hostname` (old name
    /// `reject_unknown_client`): no verified client name.
    RejectUnknownClient,
    /// `reject_unknown_reverse_client_hostname`: no PTR name at all.
    RejectUnknownReverseClient,
    /// `reject_unknown_helo_hostname` (old name `reject_unknown_hostname`):
    /// the HELO name has no address and no MX (DNS).
    RejectUnknownHelo,
    /// `reject_unknown_sender_domain` (DNS).
    RejectUnknownSenderDomain,
    /// `reject_unknown_recipient_domain` (DNS).
    RejectUnknownRecipientDomain,
    /// `permit_tls_clientcerts`: the client certificate's fingerprint (or
    /// its public key's) is a key of `relay_clientcerts`.
    PermitTlsClientcerts,
    /// `permit_tls_all_clientcerts`: any verified client certificate.
    PermitTlsAllClientcerts,
    /// `check_ccert_access type:table`: the table searched for the client
    /// certificate's fingerprint, then its public key's.
    CheckCcertAccess,
    /// `permit_mx_backup` (DNS): an authorized destination, or a domain
    /// whose MX hosts list this machine, but not among the most preferred.
    PermitMxBackup,
    /// Recognised, not implemented yet (needs the network or address
    /// verification): skipped as DUNNO.
    Unsupported(Arg),
}

const NAMES: &[(&str, Kind)] = &[
    ("warn_if_reject", Kind::WarnIfReject),
    ("permit", Kind::Permit),
    ("defer", Kind::Defer),
    ("reject", Kind::Reject),
    ("reject_unauth_pipelining", Kind::RejectUnauthPipelining),
    ("defer_if_permit", Kind::DeferIfPermit),
    ("defer_if_reject", Kind::DeferIfReject),
    ("sleep", Kind::Sleep),
    ("reject_plaintext_session", Kind::RejectPlaintextSession),
    ("permit_inet_interfaces", Kind::PermitInetInterfaces),
    ("permit_mynetworks", Kind::PermitMynetworks),
    ("check_client_access", Kind::CheckClientAccess),
    (
        "check_reverse_client_hostname_access",
        Kind::CheckReverseClientAccess,
    ),
    ("check_sasl_access", Kind::CheckSaslAccess),
    ("check_helo_access", Kind::CheckHeloAccess),
    ("reject_invalid_helo_hostname", Kind::RejectInvalidHelo),
    ("reject_invalid_hostname", Kind::RejectInvalidHelo),
    ("reject_non_fqdn_helo_hostname", Kind::RejectNonFqdnHelo),
    ("reject_non_fqdn_hostname", Kind::RejectNonFqdnHelo),
    ("permit_naked_ip_address", Kind::PermitNakedIp),
    ("check_sender_access", Kind::CheckSenderAccess),
    ("reject_non_fqdn_sender", Kind::RejectNonFqdnSender),
    ("reject_unlisted_sender", Kind::RejectUnlistedSender),
    (
        "reject_authenticated_sender_login_mismatch",
        Kind::RejectAuthSenderLoginMismatch,
    ),
    (
        "reject_unauthenticated_sender_login_mismatch",
        Kind::RejectUnauthSenderLoginMismatch,
    ),
    (
        "reject_known_sender_login_mismatch",
        Kind::RejectKnownSenderLoginMismatch,
    ),
    (
        "reject_sender_login_mismatch",
        Kind::RejectSenderLoginMismatch,
    ),
    ("check_recipient_access", Kind::CheckRecipientAccess),
    ("permit_auth_destination", Kind::PermitAuthDestination),
    ("reject_unauth_destination", Kind::RejectUnauthDestination),
    ("defer_unauth_destination", Kind::DeferUnauthDestination),
    ("check_relay_domains", Kind::CheckRelayDomains),
    ("permit_sasl_authenticated", Kind::PermitSaslAuthenticated),
    ("reject_non_fqdn_recipient", Kind::RejectNonFqdnRecipient),
    ("reject_unlisted_recipient", Kind::RejectUnlistedRecipient),
    ("check_recipient_maps", Kind::RejectUnlistedRecipient),
    (
        "reject_multi_recipient_bounce",
        Kind::RejectMultiRecipientBounce,
    ),
    ("check_etrn_access", Kind::CheckEtrnAccess),
    ("check_policy_service", Kind::CheckPolicyService),
    ("reject_unknown_client_hostname", Kind::RejectUnknownClient),
    ("reject_unknown_client", Kind::RejectUnknownClient),
    (
        "reject_unknown_reverse_client_hostname",
        Kind::RejectUnknownReverseClient,
    ),
    // Recognised, not implemented yet.
    ("reject_maps_rbl", Kind::RejectMapsRbl),
    ("reject_rbl_client", Kind::RejectRblClient),
    ("reject_rbl", Kind::RejectRblClient),
    ("permit_dnswl_client", Kind::PermitDnswlClient),
    ("reject_rhsbl_client", Kind::RejectRhsbl(Target::Client)),
    ("permit_rhswl_client", Kind::PermitRhswlClient),
    (
        "reject_rhsbl_reverse_client",
        Kind::RejectRhsbl(Target::ReverseClient),
    ),
    ("check_ccert_access", Kind::CheckCcertAccess),
    (
        "check_client_ns_access",
        Kind::CheckServerAccess(Target::Client, Server::Ns),
    ),
    (
        "check_client_mx_access",
        Kind::CheckServerAccess(Target::Client, Server::Mx),
    ),
    (
        "check_client_a_access",
        Kind::CheckServerAccess(Target::Client, Server::A),
    ),
    (
        "check_reverse_client_hostname_ns_access",
        Kind::CheckServerAccess(Target::ReverseClient, Server::Ns),
    ),
    (
        "check_reverse_client_hostname_mx_access",
        Kind::CheckServerAccess(Target::ReverseClient, Server::Mx),
    ),
    (
        "check_reverse_client_hostname_a_access",
        Kind::CheckServerAccess(Target::ReverseClient, Server::A),
    ),
    ("reject_unknown_helo_hostname", Kind::RejectUnknownHelo),
    ("reject_unknown_hostname", Kind::RejectUnknownHelo),
    (
        "check_helo_ns_access",
        Kind::CheckServerAccess(Target::Helo, Server::Ns),
    ),
    (
        "check_helo_mx_access",
        Kind::CheckServerAccess(Target::Helo, Server::Mx),
    ),
    (
        "check_helo_a_access",
        Kind::CheckServerAccess(Target::Helo, Server::A),
    ),
    ("reject_rhsbl_helo", Kind::RejectRhsbl(Target::Helo)),
    (
        "reject_unknown_sender_domain",
        Kind::RejectUnknownSenderDomain,
    ),
    ("reject_unknown_address", Kind::Unsupported(Arg::None)),
    ("reject_unverified_sender", Kind::Unsupported(Arg::None)),
    (
        "check_sender_ns_access",
        Kind::CheckServerAccess(Target::Sender, Server::Ns),
    ),
    (
        "check_sender_mx_access",
        Kind::CheckServerAccess(Target::Sender, Server::Mx),
    ),
    (
        "check_sender_a_access",
        Kind::CheckServerAccess(Target::Sender, Server::A),
    ),
    ("reject_rhsbl_sender", Kind::RejectRhsbl(Target::Sender)),
    ("permit_mx_backup", Kind::PermitMxBackup),
    ("permit_tls_all_clientcerts", Kind::PermitTlsAllClientcerts),
    ("permit_tls_clientcerts", Kind::PermitTlsClientcerts),
    (
        "reject_unknown_recipient_domain",
        Kind::RejectUnknownRecipientDomain,
    ),
    (
        "check_recipient_ns_access",
        Kind::CheckServerAccess(Target::Recipient, Server::Ns),
    ),
    (
        "check_recipient_mx_access",
        Kind::CheckServerAccess(Target::Recipient, Server::Mx),
    ),
    (
        "check_recipient_a_access",
        Kind::CheckServerAccess(Target::Recipient, Server::A),
    ),
    (
        "reject_rhsbl_recipient",
        Kind::RejectRhsbl(Target::Recipient),
    ),
    ("reject_unverified_recipient", Kind::Unsupported(Arg::None)),
];

impl Kind {
    /// Whether the restriction asks the DNS.
    pub fn uses_dns(self) -> bool {
        matches!(
            self,
            Kind::RejectRblClient
                | Kind::PermitDnswlClient
                | Kind::PermitRhswlClient
                | Kind::RejectMapsRbl
                | Kind::RejectRhsbl(_)
                | Kind::CheckServerAccess(..)
                | Kind::RejectUnknownHelo
                | Kind::RejectUnknownSenderDomain
                | Kind::RejectUnknownRecipientDomain
                | Kind::PermitMxBackup
        )
    }
}

/// The restriction called `name` (any case).
pub fn lookup(name: &str) -> Option<Kind> {
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, k)| *k)
}

/// For the `specify one of (...) before ... restriction` warning.
pub const MAP_COMMANDS: &str = "check_client_access, check_reverse_client_hostname_access, \
     check_helo_access, check_sender_access, check_recipient_access, check_etrn_access";

/// Restrictions that count as relay control (Postfix's `rcpt_required`),
/// in the order Postfix lists them.
pub const RELAY_CONTROL: &[&str] = &[
    "reject_unauth_destination",
    "defer_unauth_destination",
    "reject",
    "defer",
    "defer_if_permit",
    "check_relay_domains",
];

/// The message that refuses a configuration without relay control.
pub fn relay_control_error() -> String {
    let n = RELAY_CONTROL.len();
    let mut list = String::new();
    for (i, r) in RELAY_CONTROL.iter().enumerate() {
        list.push_str(r);
        if i + 2 == n {
            list.push_str(" or ");
        } else if i + 1 < n {
            list.push_str(", ");
        }
    }
    format!(
        "in parameter smtpd_relay_restrictions or smtpd_recipient_restrictions, \
         specify at least one working instance of: {list}"
    )
}

/// What skipping an unsupported restriction means, for the warning given
/// once when the configuration is loaded (every one still unsupported
/// rejects or defers, none permits).
pub fn unsupported_warning(name: &str) -> String {
    format!(
        "restriction \"{name}\" is not supported yet (it needs DNS, the network, \
         TLS client certificates or address verification): it is skipped as DUNNO, \
         so mail it would reject or defer is accepted"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ignore_case_and_old_names_map_to_new() {
        assert_eq!(lookup("PERMIT_MyNetworks"), Some(Kind::PermitMynetworks));
        assert_eq!(
            lookup("reject_invalid_hostname"),
            lookup("reject_invalid_helo_hostname")
        );
        assert_eq!(
            lookup("check_recipient_maps"),
            Some(Kind::RejectUnlistedRecipient)
        );
        assert_eq!(lookup("reject_rbl_client"), Some(Kind::RejectRblClient));
        assert_eq!(lookup("permit_rhswl_client"), Some(Kind::PermitRhswlClient));
        assert_eq!(lookup("reject_maps_rbl"), Some(Kind::RejectMapsRbl));
        assert_eq!(
            lookup("Check_Reverse_Client_Hostname_MX_Access"),
            Some(Kind::CheckServerAccess(Target::ReverseClient, Server::Mx))
        );
        assert_eq!(lookup("check_ccert_access"), Some(Kind::CheckCcertAccess));
        assert_eq!(
            lookup("Permit_TLS_ClientCerts"),
            Some(Kind::PermitTlsClientcerts)
        );
        assert_eq!(lookup("Permit_MX_Backup"), Some(Kind::PermitMxBackup));
        assert!(Kind::PermitMxBackup.uses_dns());
        assert_eq!(lookup("my_class"), None);
    }

    #[test]
    fn relay_control_message_is_postfix_s() {
        assert_eq!(
            relay_control_error(),
            "in parameter smtpd_relay_restrictions or smtpd_recipient_restrictions, \
             specify at least one working instance of: reject_unauth_destination, \
             defer_unauth_destination, reject, defer, defer_if_permit or check_relay_domains"
        );
    }
}
