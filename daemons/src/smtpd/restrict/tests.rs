//! Tests of the restriction engine: a main.cf text and texthash tables in
//! a temporary directory, the decision for a set of facts, and the exact
//! reply, actions and log lines Postfix 3.7 gives for it (checked against
//! a running Postfix 3.7.11 where the source left room for doubt).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libmail::address::resolve::Resolver;
use libmail::config::maincf::MainCf;
use libmail::config::params::Params;

use super::*;

static SEQ: AtomicUsize = AtomicUsize::new(0);

const BASE: &str = "compatibility_level = 3.6
myhostname = mx.example.com
mydomain = example.com
myorigin = example.com
mydestination = mx.example.com, localhost, example.com
mynetworks = 10.0.0.0/8
alias_maps =
local_recipient_maps = texthash:{dir}/users
";

/// A scratch configuration directory, removed afterwards.
struct Setup {
    dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Setup {
    fn new() -> Setup {
        let dir = std::env::temp_dir().join(format!(
            "facteur-restrict-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Setup { dir };
        s.table("users", "alice x\nbob x\n");
        s
    }

    /// Writes a table source; `texthash:{dir}/NAME` names it in main.cf.
    fn table(&self, name: &str, content: &str) {
        std::fs::write(self.dir.join(name), content).unwrap();
    }

    fn params(&self, extra: &str) -> Params {
        let text = format!("{BASE}{extra}\n").replace("{dir}", self.dir.to_str().unwrap());
        let (m, _) = MainCf::parse(&text, "/x/main.cf");
        Params::new(self.dir.to_str().unwrap(), m)
    }

    fn load(&self, extra: &str) -> Result<Restrictions, String> {
        let p = self.params(extra);
        let resolver = Arc::new(Resolver::new(&p).unwrap());
        Restrictions::from_params(&p, resolver)
    }

    fn rules(&self, extra: &str) -> Restrictions {
        self.load(extra).unwrap()
    }
}

fn stranger<'a>() -> Facts<'a> {
    Facts {
        helo: Some("mx.client.example"),
        sender: Some("sender@example.net"),
        ..Facts::new(
            Some("192.0.2.1".parse().unwrap()),
            "client.example",
            "client.example",
        )
    }
}

fn rcpt(r: &str) -> Facts<'_> {
    Facts {
        recipient: Some(r),
        ..stranger()
    }
}

/// The reply as logs show it, or `permit`.
fn said(d: &Decision) -> String {
    d.reply
        .as_ref()
        .map_or_else(|| "permit".to_string(), Reply::log_form)
}

fn warnings(d: &Decision) -> Vec<String> {
    d.log
        .iter()
        .filter_map(|l| match l {
            Log::Warning(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

fn events(d: &Decision) -> Vec<String> {
    d.log
        .iter()
        .filter_map(|l| match l {
            Log::Event(e) => Some(e.line(None, "RCPT", Some("ESMTP"))),
            _ => None,
        })
        .collect()
}

// ----- relay control -----

#[test]
fn relay_control_is_required_with_postfix_wording() {
    let s = Setup::new();
    let want = "in parameter smtpd_relay_restrictions or smtpd_recipient_restrictions, \
                specify at least one working instance of: reject_unauth_destination, \
                defer_unauth_destination, reject, defer, defer_if_permit or check_relay_domains";
    assert_eq!(
        s.load("smtpd_relay_restrictions = permit_mynetworks")
            .unwrap_err(),
        want
    );
    // warn_if_reject X does not count X; a permit ends the search.
    assert_eq!(
        s.load("smtpd_relay_restrictions = warn_if_reject reject, permit")
            .unwrap_err(),
        want
    );
    assert_eq!(
        s.load("smtpd_relay_restrictions = permit, reject_unauth_destination")
            .unwrap_err(),
        want
    );
    // Names are case-insensitive; classes count.
    assert!(s
        .load("smtpd_relay_restrictions = REJECT_unauth_destination")
        .is_ok());
    assert!(s
        .load(
            "smtpd_relay_restrictions = guard\nsmtpd_restriction_classes = guard\n\
             guard = permit_mynetworks, defer_unauth_destination"
        )
        .is_ok());
    // Either list may hold it.
    assert!(s
        .load(
            "smtpd_relay_restrictions =\nsmtpd_recipient_restrictions = reject_unauth_destination"
        )
        .is_ok());
}

#[test]
fn default_relay_list_defers_unauthorised_relay_with_454() {
    let s = Setup::new();
    let r = s.rules("");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("x@elsewhere.example"))),
        "454 4.7.1 <x@elsewhere.example>: Relay access denied"
    );
    let trusted = Facts {
        client_addr: Some("10.1.2.3".parse().unwrap()),
        ..rcpt("x@elsewhere.example")
    };
    assert_eq!(said(&r.check_rcpt(&trusted)), "permit");
    let authed = Facts {
        sasl_username: Some("alice"),
        ..rcpt("x@elsewhere.example")
    };
    assert_eq!(said(&r.check_rcpt(&authed)), "permit");
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
}

#[test]
fn relay_list_runs_before_recipient_list_from_level_3_6() {
    let s = Setup::new();
    let first = s.rules("smtpd_recipient_restrictions = reject_unauth_destination");
    assert_eq!(
        said(&first.check_rcpt(&rcpt("x@elsewhere.example"))),
        "454 4.7.1 <x@elsewhere.example>: Relay access denied"
    );
    let old = s.rules(
        "smtpd_recipient_restrictions = reject_unauth_destination\n\
         smtpd_relay_before_recipient_restrictions = no",
    );
    assert_eq!(
        said(&old.check_rcpt(&rcpt("x@elsewhere.example"))),
        "554 5.7.1 <x@elsewhere.example>: Relay access denied"
    );
    let code = s.rules(
        "smtpd_relay_restrictions = reject_unauth_destination\nrelay_domains_reject_code = 550",
    );
    assert_eq!(
        said(&code.check_rcpt(&rcpt("x@elsewhere.example"))),
        "550 5.7.1 <x@elsewhere.example>: Relay access denied"
    );
}

#[test]
fn permit_auth_destination_covers_every_final_and_relay_class() {
    let s = Setup::new();
    s.table("va", "known@valias.example x\n");
    let r = s.rules(
        "smtpd_relay_restrictions = permit_auth_destination, reject\n\
         virtual_alias_domains = valias.example\nvirtual_alias_maps = texthash:{dir}/va\n\
         virtual_mailbox_domains = vbox.example\nrelay_domains = relay.example",
    );
    for ok in [
        "alice@example.com",
        "known@valias.example",
        "any@vbox.example",
        "any@sub.relay.example",
    ] {
        assert_eq!(said(&r.check_rcpt(&rcpt(ok))), "permit", "{ok}");
    }
    assert_eq!(
        said(&r.check_rcpt(&rcpt("x@elsewhere.example"))),
        "554 5.7.1 <x@elsewhere.example>: Recipient address rejected: Access denied"
    );
}

#[test]
fn source_routed_recipients_are_not_authorised_destinations() {
    let s = Setup::new();
    s.table("rcpt", "relay.example OK\n");
    let r = s.rules(
        "relay_domains = relay.example\n\
         smtpd_relay_restrictions = check_recipient_access texthash:{dir}/rcpt, reject_unauth_destination",
    );
    assert_eq!(said(&r.check_rcpt(&rcpt("u@relay.example"))), "permit");
    // user%elsewhere@relay: the OK counts as DUNNO, and relaying is refused.
    assert_eq!(
        said(&r.check_rcpt(&rcpt("u%elsewhere.example@relay.example"))),
        "554 5.7.1 <u%elsewhere.example@relay.example>: Relay access denied"
    );
    let allowed = s.rules(
        "relay_domains = relay.example\nallow_untrusted_routing = yes\n\
         smtpd_relay_restrictions = check_recipient_access texthash:{dir}/rcpt, reject_unauth_destination",
    );
    assert_eq!(
        said(&allowed.check_rcpt(&rcpt("u%elsewhere.example@relay.example"))),
        "permit"
    );
}

// ----- the evaluation model -----

#[test]
fn client_reject_is_answered_at_rcpt_with_delay_reject() {
    let s = Setup::new();
    let r = s.rules("smtpd_client_restrictions = reject");
    assert!(r.delay_reject());
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <client.example[192.0.2.1]>: Client host rejected: Access denied"
    );
    // The bare postmaster is always accepted.
    assert_eq!(said(&r.check_rcpt(&rcpt("postmaster"))), "permit");
    assert_eq!(said(&r.check_rcpt(&rcpt("PostMaster"))), "permit");
    // With delay_reject = no the client list answers at connect only.
    let now = s.rules("smtpd_client_restrictions = reject\nsmtpd_delay_reject = no");
    assert!(!now.delay_reject());
    assert_eq!(
        said(&now.check(
            Stage::Client,
            &Facts::new(Some("192.0.2.1".parse().unwrap()), "unknown", "unknown")
        )),
        "554 5.7.1 <unknown[192.0.2.1]>: Client host rejected: Access denied"
    );
    assert_eq!(said(&now.check_rcpt(&rcpt("alice@example.com"))), "permit");
}

#[test]
fn delayed_lists_run_in_postfix_order_at_rcpt() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_client_restrictions = reject_unauth_pipelining\n\
         smtpd_helo_restrictions = reject_non_fqdn_helo_hostname\n\
         smtpd_sender_restrictions = reject_non_fqdn_sender\n\
         smtpd_relay_restrictions = reject_non_fqdn_recipient, defer_unauth_destination",
    );
    let all_bad = Facts {
        helo: Some("x"),
        sender: Some("a@localhost"),
        pipelining_violation: true,
        ..rcpt("bob")
    };
    assert_eq!(
        said(&r.check_rcpt(&all_bad)),
        "503 5.5.0 <client.example[192.0.2.1]>: Client host rejected: Improper use of SMTP command pipelining"
    );
    let f = Facts {
        pipelining_violation: false,
        ..all_bad.clone()
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "504 5.5.2 <x>: Helo command rejected: need fully-qualified hostname"
    );
    let f = Facts {
        helo: Some("x.example"),
        ..f
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "504 5.5.2 <a@localhost>: Sender address rejected: need fully-qualified address"
    );
    let f = Facts {
        sender: Some("a@example.net"),
        ..f
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "504 5.5.2 <bob>: Recipient address rejected: need fully-qualified address"
    );
    // Without HELO (not required), the HELO list has nothing to check.
    let f = Facts {
        helo: None,
        ..rcpt("bob@example.com")
    };
    assert_eq!(said(&r.check_rcpt(&f)), "permit");
}

#[test]
fn permit_ends_only_its_own_list() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_client_restrictions = permit_mynetworks, reject\n\
         smtpd_sender_restrictions = reject",
    );
    let trusted = Facts {
        client_addr: Some("10.0.0.7".parse().unwrap()),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&trusted)),
        "554 5.7.1 <sender@example.net>: Sender address rejected: Access denied"
    );
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(
        said(&d),
        "554 5.7.1 <client.example[192.0.2.1]>: Client host rejected: Access denied"
    );
}

#[test]
fn unlisted_recipients_are_rejected_even_for_trusted_clients() {
    let s = Setup::new();
    let r = s.rules("");
    let trusted = |a: &'static str| Facts {
        client_addr: Some("10.9.9.9".parse().unwrap()),
        ..rcpt(a)
    };
    assert_eq!(
        said(&r.check_rcpt(&trusted("carol@example.com"))),
        "550 5.1.1 <carol@example.com>: Recipient address rejected: User unknown in local recipient table"
    );
    assert_eq!(said(&r.check_rcpt(&trusted("alice@example.com"))), "permit");
    // The local part is looked up with the extension removed and alone.
    assert_eq!(said(&r.check_rcpt(&trusted("Alice@Example.COM"))), "permit");
    for special in [
        "postmaster@example.com",
        "MAILER-DAEMON@example.com",
        "double-bounce@example.com",
    ] {
        assert_eq!(
            said(&r.check_rcpt(&trusted(special))),
            "permit",
            "{special}"
        );
    }
    let plain =
        s.rules("show_user_unknown_table_name = no\nunknown_local_recipient_reject_code = 450");
    assert_eq!(
        said(&plain.check_rcpt(&rcpt("carol@example.com"))),
        "450 4.1.1 <carol@example.com>: Recipient address rejected: User unknown"
    );
    let off = s.rules("smtpd_reject_unlisted_recipient = no");
    assert_eq!(said(&off.check_rcpt(&rcpt("carol@example.com"))), "permit");
    let none = s.rules("local_recipient_maps =");
    assert_eq!(said(&none.check_rcpt(&rcpt("carol@example.com"))), "permit");
}

#[test]
fn relocated_recipients_are_rejected_with_their_new_place() {
    // Postfix: whatever resolves to the error agent is rejected at RCPT
    // with its text (trivial-rewrite sends relocated users there).
    let s = Setup::new();
    s.table("reloc", "old@example.com new@example.net\n");
    let r = s.rules("relocated_maps = texthash:{dir}/reloc\nrelay_domains = example.com\n");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("old@example.com"))),
        "550 5.1.6 <old@example.com>: Recipient address rejected: User has moved to new@example.net"
    );
}

#[test]
fn recipient_validation_follows_the_address_class() {
    let s = Setup::new();
    s.table("va", "known@valias.example x\n");
    s.table("vm", "box@vbox.example x\n");
    s.table("rr", "r@relay.example x\n");
    let conf = "virtual_alias_domains = valias.example\nvirtual_alias_maps = texthash:{dir}/va\n\
                virtual_mailbox_domains = vbox.example\nvirtual_mailbox_maps = texthash:{dir}/vm\n\
                relay_domains = relay.example\nrelay_recipient_maps = texthash:{dir}/rr\n";
    let r = s.rules(conf);
    let cases = [
        ("known@valias.example", "permit"),
        (
            "u@valias.example",
            "550 5.1.1 <u@valias.example>: Recipient address rejected: User unknown in virtual alias table",
        ),
        ("box@vbox.example", "permit"),
        (
            "u@vbox.example",
            "550 5.1.1 <u@vbox.example>: Recipient address rejected: User unknown in virtual mailbox table",
        ),
        ("r@relay.example", "permit"),
        (
            "z@relay.example",
            "550 5.1.1 <z@relay.example>: Recipient address rejected: User unknown in relay recipient table",
        ),
    ];
    for (a, want) in cases {
        assert_eq!(said(&r.check_rcpt(&rcpt(a))), want, "{a}");
    }
    let codes = s.rules(&format!(
        "{conf}unknown_virtual_alias_reject_code = 551\nunknown_virtual_mailbox_reject_code = 552\n\
         unknown_relay_recipient_reject_code = 553\nshow_user_unknown_table_name = no"
    ));
    assert_eq!(
        said(&codes.check_rcpt(&rcpt("u@valias.example"))),
        "551 5.1.1 <u@valias.example>: Recipient address rejected: User unknown"
    );
    assert_eq!(
        said(&codes.check_rcpt(&rcpt("u@vbox.example"))),
        "552 5.1.1 <u@vbox.example>: Recipient address rejected: User unknown"
    );
    assert_eq!(
        said(&codes.check_rcpt(&rcpt("z@relay.example"))),
        "553 5.1.1 <z@relay.example>: Recipient address rejected: User unknown"
    );
    // An empty relay_recipient_maps accepts every relay recipient.
    let open = s.rules("relay_domains = relay.example");
    assert_eq!(said(&open.check_rcpt(&rcpt("z@relay.example"))), "permit");
    // A virtual alias match makes any address valid.
    s.table("va2", "carol@example.com alice\n");
    let aliased = s.rules("virtual_alias_maps = texthash:{dir}/va2");
    assert_eq!(
        said(&aliased.check_rcpt(&rcpt("carol@example.com"))),
        "permit"
    );
}

#[test]
fn unlisted_senders_get_the_sender_status_code() {
    let s = Setup::new();
    let r = s.rules("smtpd_reject_unlisted_sender = yes");
    let f = Facts {
        sender: Some("nobody@example.com"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "550 5.1.0 <nobody@example.com>: Sender address rejected: User unknown in local recipient table"
    );
    let null = Facts {
        sender: Some(""),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&r.check_rcpt(&null)), "permit");
    let explicit = s.rules("smtpd_sender_restrictions = reject_unlisted_sender");
    assert_eq!(
        said(&explicit.check_rcpt(&f)),
        "550 5.1.0 <nobody@example.com>: Sender address rejected: User unknown in local recipient table"
    );
    let now = s.rules("smtpd_reject_unlisted_sender = yes\nsmtpd_delay_reject = no");
    assert_eq!(
        said(&now.check(Stage::Sender, &f)),
        "550 5.1.0 <nobody@example.com>: Sender address rejected: User unknown in local recipient table"
    );
}

#[test]
fn warn_if_reject_logs_the_next_restriction_only() {
    let s = Setup::new();
    let r = s.rules("smtpd_helo_restrictions = warn_if_reject reject_non_fqdn_helo_hostname, reject_invalid_helo_hostname");
    let f = Facts {
        helo: Some("x"),
        ..rcpt("alice@example.com")
    };
    let d = r.check_rcpt(&f);
    assert_eq!(said(&d), "permit");
    assert_eq!(
        events(&d),
        vec![
            "NOQUEUE: reject_warning: RCPT from client.example[192.0.2.1]: 504 5.5.2 <x>: \
              Helo command rejected: need fully-qualified hostname; from=<sender@example.net> \
              to=<alice@example.com> proto=ESMTP helo=<x>"
        ]
    );
    let bad = Facts {
        helo: Some("a..b"),
        ..f
    };
    assert_eq!(
        said(&r.check_rcpt(&bad)),
        "501 5.5.2 <a..b>: Helo command rejected: Invalid name"
    );
    // Configuration errors are never softened.
    let e = s.rules("smtpd_client_restrictions = warn_if_reject no_such_restriction");
    assert_eq!(
        said(&e.check_rcpt(&rcpt("alice@example.com"))),
        "451 4.3.5 Server configuration error"
    );
}

#[test]
fn defer_if_permit_turns_the_final_permit_into_450() {
    let s = Setup::new();
    let r = s.rules("smtpd_client_restrictions = defer_if_permit");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "450 4.7.0 <client.example[192.0.2.1]>: Client host rejected: defer_if_permit requested"
    );
    // A reject later on still wins.
    let rej =
        s.rules("smtpd_client_restrictions = defer_if_permit\nsmtpd_sender_restrictions = reject");
    assert_eq!(
        said(&rej.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <sender@example.net>: Sender address rejected: Access denied"
    );
    // With delay_reject = no it is carried from the client stage to RCPT.
    let now = s.rules("smtpd_client_restrictions = defer_if_permit\nsmtpd_delay_reject = no");
    let c = now.check(Stage::Client, &stranger());
    assert_eq!(said(&c), "permit");
    let pending = c.pending_defer.clone().expect("pending");
    let h = now.check(
        Stage::Helo,
        &Facts {
            pending_defer: Some(&pending),
            ..stranger()
        },
    );
    let pending = h.pending_defer.clone().expect("carried through HELO");
    let f = Facts {
        pending_defer: Some(&pending),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&now.check_rcpt(&f)),
        "450 4.7.0 <client.example[192.0.2.1]>: Client host rejected: defer_if_permit requested"
    );
    // Data starts afresh.
    assert_eq!(said(&now.check(Stage::Data, &f)), "permit");
}

#[test]
fn defer_if_reject_turns_a_later_5xx_into_450() {
    let s = Setup::new();
    let r = s.rules("smtpd_sender_restrictions = defer_if_reject, reject");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "450 4.7.0 <sender@example.net>: Sender address rejected: defer_if_reject requested"
    );
    // It lasts one stage: the recipient list's reject stays a 554.
    let next = s.rules(
        "smtpd_sender_restrictions = defer_if_reject\nsmtpd_recipient_restrictions = reject",
    );
    assert_eq!(
        said(&next.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <alice@example.com>: Recipient address rejected: Access denied"
    );
}

#[test]
fn soft_bounce_turns_5xx_into_4xx() {
    let s = Setup::new();
    let r = s.rules("soft_bounce = yes\nsmtpd_relay_restrictions = reject_unauth_destination");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("x@elsewhere.example"))),
        "454 4.7.1 <x@elsewhere.example>: Relay access denied"
    );
    assert_eq!(
        said(&r.check_rcpt(&rcpt("carol@example.com"))),
        "450 4.1.1 <carol@example.com>: Recipient address rejected: User unknown in local recipient table"
    );
}

#[test]
fn reply_codes_come_from_their_parameters() {
    let s = Setup::new();
    let r = s.rules(
        "reject_code = 550\ndefer_code = 451\nsmtpd_sender_restrictions = reject\n\
         smtpd_data_restrictions = defer",
    );
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "550 5.7.1 <sender@example.net>: Sender address rejected: Access denied"
    );
    assert_eq!(
        said(&r.check(Stage::Data, &rcpt("alice@example.com"))),
        "451 4.3.2 <DATA>: Data command rejected: Try again later"
    );
    let p = s
        .rules("plaintext_reject_code = 530\nsmtpd_sender_restrictions = reject_plaintext_session");
    assert_eq!(
        said(&p.check_rcpt(&rcpt("alice@example.com"))),
        "530 5.7.1 Session encryption is required"
    );
    let tls = Facts {
        tls: true,
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&p.check_rcpt(&tls)), "permit");
    let n = s.rules(
        "non_fqdn_reject_code = 550\ninvalid_hostname_reject_code = 550\n\
         smtpd_helo_restrictions = reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname",
    );
    let f = Facts {
        helo: Some("[::1]"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&n.check_rcpt(&f)),
        "550 5.5.2 <[::1]>: Helo command rejected: invalid ip address"
    );
}

// ----- HELO, sender and recipient syntax -----

#[test]
fn helo_hostname_checks_match_postfix() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_helo_restrictions = reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname",
    );
    let cases = [
        (
            "a_b..c",
            "501 5.5.2 <a_b..c>: Helo command rejected: Invalid name",
        ),
        ("[1.2.3.4]", "permit"),
        (
            "[::1]",
            "501 5.5.2 <[::1]>: Helo command rejected: invalid ip address",
        ),
        ("[IPv6:::1]", "permit"),
        (
            "1.2.3.4",
            "504 5.5.2 <1.2.3.4>: Helo command rejected: need fully-qualified hostname",
        ),
        (
            "host.",
            "504 5.5.2 <host.>: Helo command rejected: need fully-qualified hostname",
        ),
        (
            "x-.example",
            "501 5.5.2 <x-.example>: Helo command rejected: Invalid name",
        ),
        (
            "-x.example",
            "501 5.5.2 <-x.example>: Helo command rejected: Invalid name",
        ),
        ("mx.client.example.", "permit"),
    ];
    for (helo, want) in cases {
        let f = Facts {
            helo: Some(helo),
            ..rcpt("alice@example.com")
        };
        assert_eq!(said(&r.check_rcpt(&f)), want, "{helo}");
    }
}

#[test]
fn clients_without_a_verified_or_reverse_name_are_deferred() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_client_restrictions = reject_unknown_reverse_client_hostname, \
         reject_unknown_client_hostname",
    );
    // PTR present but not confirmed: only the verified-name check fires.
    let unverified = Facts {
        client_name: "unknown",
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&unverified)),
        "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.1]"
    );
    // No PTR at all: the reverse check comes first in this list.
    let nameless = Facts {
        client_name: "unknown",
        reverse_name: "unknown",
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&nameless)),
        "450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.1]"
    );
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
    // The old name, and the code from unknown_client_reject_code.
    let old = s.rules(
        "smtpd_client_restrictions = reject_unknown_client\nunknown_client_reject_code = 550",
    );
    assert_eq!(
        said(&old.check_rcpt(&unverified)),
        "550 5.7.25 Client host rejected: cannot find your hostname, [192.0.2.1]"
    );
}

#[test]
fn non_fqdn_addresses_are_rejected_by_context() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_sender_restrictions = reject_non_fqdn_sender\n\
         smtpd_recipient_restrictions = reject_non_fqdn_recipient",
    );
    let f = Facts {
        sender: Some("a@localhost"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "504 5.5.2 <a@localhost>: Sender address rejected: need fully-qualified address"
    );
    let null = Facts {
        sender: Some(""),
        ..rcpt("alice")
    };
    assert_eq!(
        said(&r.check_rcpt(&null)),
        "504 5.5.2 <alice>: Recipient address rejected: need fully-qualified address"
    );
    let literal = Facts {
        client_addr: Some("10.0.0.1".parse().unwrap()),
        ..rcpt("alice@[192.0.2.9]")
    };
    assert_eq!(said(&r.check_rcpt(&literal)), "permit");
    let ascii = Facts {
        client_addr: Some("10.0.0.1".parse().unwrap()),
        ..rcpt("alice@bücher.example")
    };
    assert_eq!(
        said(&r.check_rcpt(&ascii)),
        "504 5.5.2 <alice@bücher.example>: Recipient address rejected: need fully-qualified address"
    );
    let utf8 = Facts {
        smtputf8: true,
        ..ascii
    };
    assert_eq!(said(&r.check_rcpt(&utf8)), "permit", "SMTPUTF8 allows it");
}

#[test]
fn multi_recipient_bounces_are_refused() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_recipient_restrictions = reject_multi_recipient_bounce\n\
         smtpd_data_restrictions = reject_multi_recipient_bounce",
    );
    let first = Facts {
        sender: Some(""),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&r.check_rcpt(&first)), "permit");
    let second = Facts {
        rcpt_count: 1,
        recipient: Some("bob@example.com"),
        ..first.clone()
    };
    assert_eq!(
        said(&r.check_rcpt(&second)),
        "550 5.5.3 <bob@example.com>: Recipient address rejected: Multi-recipient bounce"
    );
    assert_eq!(said(&r.check(Stage::Data, &first)), "permit");
    let data = Facts {
        rcpt_count: 2,
        ..first
    };
    assert_eq!(
        said(&r.check(Stage::Data, &data)),
        "550 5.5.3 <DATA>: Data command rejected: Multi-recipient bounce"
    );
}

#[test]
fn pipelining_plaintext_and_end_of_data_texts() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_data_restrictions = reject_unauth_pipelining\n\
         smtpd_end_of_data_restrictions = reject",
    );
    let f = Facts {
        pipelining_violation: true,
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check(Stage::Data, &f)),
        "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining"
    );
    assert_eq!(
        said(&r.check(Stage::Data, &rcpt("alice@example.com"))),
        "permit"
    );
    assert_eq!(
        said(&r.check(Stage::EndOfData, &f)),
        "554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: Access denied"
    );
}

// ----- access tables -----

#[test]
fn access_reject_and_defer_texts() {
    let s = Setup::new();
    s.table(
        "access",
        "spam@example.net REJECT\ntext@example.net REJECT Go away\n\
         dsn@example.net REJECT 4.7.9 Custom\nlater@example.net DEFER\n\
         later2@example.net DEFER come back\n",
    );
    let r = s.rules("smtpd_sender_restrictions = check_sender_access texthash:{dir}/access");
    let cases = [
        (
            "spam@example.net",
            "554 5.7.1 <spam@example.net>: Sender address rejected: Access denied",
        ),
        (
            "text@example.net",
            "554 5.7.1 <text@example.net>: Sender address rejected: Go away",
        ),
        (
            "dsn@example.net",
            "554 5.7.9 <dsn@example.net>: Sender address rejected: Custom",
        ),
        (
            "later@example.net",
            "450 4.7.1 <later@example.net>: Sender address rejected: Access denied",
        ),
        (
            "later2@example.net",
            "450 4.7.1 <later2@example.net>: Sender address rejected: come back",
        ),
    ];
    for (sender, want) in cases {
        let f = Facts {
            sender: Some(sender),
            ..rcpt("alice@example.com")
        };
        assert_eq!(said(&r.check_rcpt(&f)), want, "{sender}");
    }
    let codes = s.rules(
        "access_map_reject_code = 550\naccess_map_defer_code = 451\n\
         smtpd_sender_restrictions = check_sender_access texthash:{dir}/access",
    );
    let f = Facts {
        sender: Some("spam@example.net"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&codes.check_rcpt(&f)),
        "550 5.7.1 <spam@example.net>: Sender address rejected: Access denied"
    );
    let f = Facts {
        sender: Some("later@example.net"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&codes.check_rcpt(&f)),
        "451 4.7.1 <later@example.net>: Sender address rejected: Access denied"
    );
}

#[test]
fn access_numeric_results() {
    let s = Setup::new();
    s.table(
        "access",
        "five@example.net 550 5.1.1 Nope here\nfour@example.net 450 go away\n\
         bare@example.net 550\nstamp@example.net 1700000000\nbye@example.net 421 closing\n",
    );
    let r =
        s.rules("smtpd_sender_restrictions = check_sender_access texthash:{dir}/access, reject");
    let ask = |sender: &'static str| {
        r.check_rcpt(&Facts {
            sender: Some(sender),
            ..rcpt("alice@example.com")
        })
    };
    // Postfix 3.7 sends a recipient 5.1.1 given for a sender as 5.1.7.
    let d = ask("five@example.net");
    assert_eq!(
        said(&d),
        "550 5.1.7 <five@example.net>: Sender address rejected: Nope here"
    );
    assert!(d.log.contains(&Log::Info(
        "mapping DSN status 5.1.1 into Sender address status 5.1.7".into()
    )));
    assert_eq!(
        said(&ask("four@example.net")),
        "450 4.7.1 <four@example.net>: Sender address rejected: go away"
    );
    // A code without text is all-numeric, which means OK.
    assert_eq!(said(&ask("bare@example.net")), "permit");
    assert_eq!(said(&ask("stamp@example.net")), "permit");
    let d = ask("bye@example.net");
    assert_eq!(
        said(&d),
        "421 4.7.1 <bye@example.net>: Sender address rejected: closing"
    );
    assert!(d.hangup());
}

#[test]
fn access_ok_ends_the_list_and_dunno_ends_the_search() {
    let s = Setup::new();
    s.table(
        "access",
        "client.example OK\nexample.net DUNNO\nspam@ REJECT\n192.0.2 REJECT network\nunknown REJECT nameless\n",
    );
    let r = s.rules(
        "smtpd_client_restrictions = check_client_access texthash:{dir}/access, reject\n\
         smtpd_sender_restrictions = check_sender_access texthash:{dir}/access",
    );
    // OK ends the client list (the reject after it is not reached).
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
    // DUNNO on the domain stops the search before `spam@`.
    let f = Facts {
        sender: Some("spam@example.net"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&r.check_rcpt(&f)), "permit");
    let f = Facts {
        sender: Some("spam@other.org"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 <spam@other.org>: Sender address rejected: Access denied"
    );
    // Network prefixes of the address; `unknown` for a nameless client.
    let net = Facts {
        client_name: "other.example",
        client_addr: Some("192.0.2.77".parse().unwrap()),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&net)),
        "554 5.7.1 <other.example[192.0.2.77]>: Client host rejected: network"
    );
    let nameless = Facts {
        client_name: "unknown",
        client_addr: Some("198.51.100.1".parse().unwrap()),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&nameless)),
        "554 5.7.1 <unknown[198.51.100.1]>: Client host rejected: nameless"
    );
}

#[test]
fn access_lookups_use_parent_domains_extensions_and_the_null_sender_key() {
    let s = Setup::new();
    s.table(
        "access",
        "example.org REJECT parent\nuser+tag@example.net REJECT tag\nuser@example.net OK\n<> REJECT null\n",
    );
    let r = s.rules(
        "recipient_delimiter = +\n\
         smtpd_sender_restrictions = check_sender_access texthash:{dir}/access",
    );
    let ask = |sender: &'static str| {
        said(&r.check_rcpt(&Facts {
            sender: Some(sender),
            ..rcpt("alice@example.com")
        }))
    };
    assert_eq!(
        ask("a@mx.example.org"),
        "554 5.7.1 <a@mx.example.org>: Sender address rejected: parent"
    );
    assert_eq!(
        ask("USER+tag@Example.NET"),
        "554 5.7.1 <USER+tag@Example.NET>: Sender address rejected: tag"
    );
    assert_eq!(ask("user+other@example.net"), "permit");
    assert_eq!(ask(""), "554 5.7.1 <>: Sender address rejected: null");
    let key = s.rules(
        "smtpd_null_access_lookup_key = <null>\n\
         smtpd_sender_restrictions = check_sender_access texthash:{dir}/access",
    );
    let f = Facts {
        sender: Some(""),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&key.check_rcpt(&f)), "permit");
}

#[test]
fn helo_etrn_sasl_and_reverse_client_tables() {
    let s = Setup::new();
    s.table(
        "access",
        "heloname.example REJECT helo\nexample.org REJECT etrn\nmallory REJECT login\nrev.example OK\n",
    );
    let r = s.rules(
        "smtpd_sasl_auth_enable = yes\n\
         smtpd_helo_restrictions = check_sasl_access texthash:{dir}/access, check_helo_access texthash:{dir}/access\n\
         smtpd_etrn_restrictions = check_etrn_access texthash:{dir}/access\n\
         smtpd_client_restrictions = check_reverse_client_hostname_access texthash:{dir}/access",
    );
    let f = Facts {
        helo: Some("mx.heloname.example"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 <mx.heloname.example>: Helo command rejected: helo"
    );
    let login = Facts {
        sasl_username: Some("mallory"),
        ..f.clone()
    };
    assert_eq!(
        said(&r.check_rcpt(&login)),
        "554 5.7.1 <mallory>: SASL login name rejected: login"
    );
    let etrn = Facts {
        etrn_domain: Some("sub.example.org"),
        helo: Some("fine.example"),
        ..stranger()
    };
    assert_eq!(
        said(&r.check(Stage::Etrn, &etrn)),
        "554 5.7.1 <sub.example.org>: Etrn command rejected: etrn"
    );
    // OK is refused for the unverified reverse name.
    let rev = Facts {
        reverse_name: "rev.example",
        helo: Some("fine.example"),
        ..rcpt("alice@example.com")
    };
    let d = r.check_rcpt(&rev);
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec![
            "restriction check_reverse_client_hostname_access returns OK for rev.example",
            "this is not allowed for security reasons",
            "use DUNNO instead of OK if you want to make an exception",
        ]
    );
}

#[test]
fn access_message_actions_and_their_log_lines() {
    let s = Setup::new();
    s.table(
        "access",
        "hold@example.net HOLD\nwhy@example.net HOLD looks odd\nwarn@example.net WARN watch this\n\
         info@example.net INFO fyi\nfilter@example.net FILTER smtp:[127.0.0.1]:10025\n\
         redir@example.net REDIRECT abuse@example.com\nbcc@example.net BCC archive@example.com\n\
         prep@example.net PREPEND X-Test: yes\ndrop@example.net DISCARD\n\
         nofilter@example.net FILTER nocolon\nnoredir@example.net REDIRECT nobody\n\
         noprep@example.net PREPEND not a header\n",
    );
    let r = s.rules(
        "smtpd_sender_restrictions = check_sender_access texthash:{dir}/access\n\
         smtpd_recipient_restrictions = reject_non_fqdn_recipient",
    );
    let ask = |sender: &'static str| {
        r.check_rcpt(&Facts {
            sender: Some(sender),
            ..rcpt("alice@example.com")
        })
    };
    let line = |what: &str, text: &str, sender: &str| {
        format!(
            "NOQUEUE: {what}: RCPT from client.example[192.0.2.1]: {text}; from=<{sender}> \
             to=<alice@example.com> proto=ESMTP helo=<mx.client.example>"
        )
    };
    let d = ask("hold@example.net");
    assert_eq!(
        (said(&d), d.actions.clone()),
        ("permit".into(), vec![Action::Hold(String::new())])
    );
    assert_eq!(
        events(&d),
        vec![line(
            "hold",
            "<hold@example.net>: Sender address triggers HOLD action",
            "hold@example.net"
        )]
    );
    let again = r.check_rcpt(&Facts {
        sender: Some("hold@example.net"),
        held: true,
        ..rcpt("alice@example.com")
    });
    assert!(
        again.actions.is_empty() && again.log.is_empty(),
        "HOLD once"
    );
    let d = ask("why@example.net");
    assert_eq!(d.actions, vec![Action::Hold("looks odd".into())]);
    assert_eq!(
        events(&d),
        vec![line(
            "hold",
            "<why@example.net>: Sender address looks odd",
            "why@example.net"
        )]
    );
    let d = ask("warn@example.net");
    assert_eq!(
        events(&d),
        vec![line("warn", "watch this", "warn@example.net")]
    );
    let d = ask("info@example.net");
    assert_eq!(events(&d), vec![line("info", "fyi", "info@example.net")]);
    let d = ask("filter@example.net");
    assert_eq!(
        d.actions,
        vec![Action::Filter("smtp:[127.0.0.1]:10025".into())]
    );
    assert_eq!(
        events(&d),
        vec![line(
            "filter",
            "<filter@example.net>: Sender address triggers FILTER smtp:[127.0.0.1]:10025",
            "filter@example.net"
        )]
    );
    let d = ask("redir@example.net");
    assert_eq!(
        d.actions,
        vec![Action::Redirect("abuse@example.com".into())]
    );
    let d = ask("bcc@example.net");
    assert_eq!(d.actions, vec![Action::Bcc("archive@example.com".into())]);
    assert_eq!(
        events(&d),
        vec![line(
            "bcc",
            "<bcc@example.net>: Sender address triggers BCC archive@example.com",
            "bcc@example.net"
        )]
    );
    let d = ask("prep@example.net");
    assert_eq!(d.actions, vec![Action::Prepend("X-Test: yes".into())]);
    assert!(events(&d).is_empty());
    // DISCARD permits and skips everything after it, the implicit
    // recipient validation included.
    let d = r.check_rcpt(&Facts {
        sender: Some("drop@example.net"),
        ..rcpt("carol")
    });
    assert_eq!(said(&d), "permit");
    assert!(d.discard());
    let later = r.check_rcpt(&Facts {
        discarded: true,
        ..rcpt("carol")
    });
    assert_eq!(said(&later), "permit");
    // Malformed actions are warned about and ignored.
    let d = ask("nofilter@example.net");
    assert!(d.actions.is_empty());
    assert!(
        warnings(&d)[0].ends_with("entry \"nofilter@example.net\" requires transport:destination")
    );
    let d = ask("noredir@example.net");
    assert!(d.actions.is_empty());
    assert!(warnings(&d)[0].ends_with("entry \"noredir@example.net\" requires user@domain target"));
    let d = ask("noprep@example.net");
    assert!(d.actions.is_empty());
    assert!(warnings(&d)[0].ends_with("entry \"noprep@example.net\" requires header: text"));
}

#[test]
fn message_actions_need_a_transaction() {
    let s = Setup::new();
    s.table("access", "client.example HOLD\n");
    let r = s.rules(
        "smtpd_delay_reject = no\n\
         smtpd_client_restrictions = check_client_access texthash:{dir}/access",
    );
    let d = r.check(
        Stage::Client,
        &Facts::new(
            Some("192.0.2.1".parse().unwrap()),
            "client.example",
            "client.example",
        ),
    );
    assert_eq!(said(&d), "permit");
    assert!(d.actions.is_empty());
    assert_eq!(
        warnings(&d),
        vec![format!(
            "access table texthash:{}/access: with smtpd_delay_reject=no, action HOLD is always \
             skipped in Client host or Helo command restrictions",
            s.dir.display()
        )]
    );
    // Delayed to RCPT, the client list's HOLD takes effect.
    let delayed = s.rules("smtpd_client_restrictions = check_client_access texthash:{dir}/access");
    let d = delayed.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(d.actions, vec![Action::Hold(String::new())]);
}

#[test]
fn access_defer_if_permit_and_defer_if_reject_results() {
    let s = Setup::new();
    s.table(
        "access",
        "dip@example.net DEFER_IF_PERMIT\ndir@example.net DEFER_IF_REJECT maybe later\n",
    );
    let r = s.rules(
        "smtpd_sender_restrictions = check_sender_access texthash:{dir}/access, reject_non_fqdn_recipient",
    );
    let ask = |sender: &'static str, to: &'static str| {
        said(&r.check_rcpt(&Facts {
            sender: Some(sender),
            ..rcpt(to)
        }))
    };
    assert_eq!(
        ask("dip@example.net", "alice@example.com"),
        "450 4.7.1 <dip@example.net>: Sender address rejected: Service unavailable"
    );
    assert_eq!(ask("dir@example.net", "alice@example.com"), "permit");
    assert_eq!(
        ask("dir@example.net", "alice"),
        "450 4.7.1 <dir@example.net>: Sender address rejected: maybe later"
    );
}

// ----- classes, recursion, configuration errors -----

#[test]
fn restriction_classes_in_lists_and_table_results() {
    let s = Setup::new();
    s.table(
        "access",
        "class@example.net strict\nlist@example.net reject_non_fqdn_helo_hostname, permit\n",
    );
    let r = s.rules(
        "smtpd_restriction_classes = strict\nstrict = reject_non_fqdn_helo_hostname, reject\n\
         smtpd_sender_restrictions = check_sender_access texthash:{dir}/access",
    );
    let ask = |sender: &'static str, helo: &'static str| {
        said(&r.check_rcpt(&Facts {
            sender: Some(sender),
            helo: Some(helo),
            ..rcpt("alice@example.com")
        }))
    };
    assert_eq!(
        ask("class@example.net", "x"),
        "504 5.5.2 <x>: Helo command rejected: need fully-qualified hostname"
    );
    // The class's reject names what the table was asked about.
    assert_eq!(
        ask("class@example.net", "x.example"),
        "554 5.7.1 <class@example.net>: Sender address rejected: Access denied"
    );
    assert_eq!(ask("list@example.net", "x.example"), "permit");
    assert_eq!(
        ask("list@example.net", "x"),
        "504 5.5.2 <x>: Helo command rejected: need fully-qualified hostname"
    );
    // Used directly in a list.
    let direct = s.rules(
        "smtpd_restriction_classes = strict\nstrict = reject_non_fqdn_helo_hostname, reject\n\
         smtpd_client_restrictions = permit_mynetworks, strict",
    );
    assert_eq!(
        said(&direct.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <client.example[192.0.2.1]>: Client host rejected: Access denied"
    );
    assert_eq!(
        s.load("smtpd_restriction_classes = empty\n").unwrap_err(),
        "restriction class `empty' needs a definition"
    );
}

#[test]
fn recursion_is_limited_to_100_levels() {
    let s = Setup::new();
    s.table("access", "loop@example.net loopclass\n");
    let r = s.rules(
        "smtpd_restriction_classes = loopclass\n\
         loopclass = check_sender_access texthash:{dir}/access\n\
         smtpd_sender_restrictions = check_sender_access texthash:{dir}/access",
    );
    let d = r.check_rcpt(&Facts {
        sender: Some("loop@example.net"),
        ..rcpt("alice@example.com")
    });
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec![format!(
            "access table texthash:{}/access entry loopclass causes unreasonable recursion",
            s.dir.display()
        )]
    );
    // A class that names itself is stopped the same way.
    let own = s.rules("smtpd_restriction_classes = me\nme = me\nsmtpd_sender_restrictions = me");
    let d = own.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(warnings(&d).len(), 1);
}

#[test]
fn tables_in_access_results_are_refused() {
    let s = Setup::new();
    s.table(
        "access",
        "tab@example.net check_sender_access texthash:/x\n",
    );
    let r = s.rules("smtpd_sender_restrictions = check_sender_access texthash:{dir}/access");
    let d = r.check_rcpt(&Facts {
        sender: Some("tab@example.net"),
        ..rcpt("alice@example.com")
    });
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec![
            format!(
                "access table texthash:{}/access has entry with lookup table: check_sender_access texthash:/x",
                s.dir.display()
            ),
            "do not specify lookup tables inside SMTPD access maps".to_string(),
            "define a restriction class and specify its name instead.".to_string(),
        ]
    );
}

#[test]
fn unknown_restrictions_fail_when_reached() {
    let s = Setup::new();
    let r = s.rules("smtpd_client_restrictions = permit_mynetworks, bogus_restriction");
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec!["unknown smtpd restriction: \"bogus_restriction\""]
    );
    // Not reached: no effect.
    let trusted = Facts {
        client_addr: Some("10.0.0.1".parse().unwrap()),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&r.check_rcpt(&trusted)), "permit");
    // Bad arguments are server errors too.
    let sleep = s.rules("smtpd_client_restrictions = sleep soon");
    let d = sleep.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec!["restriction sleep must be followed by number"]
    );
    let map = s.rules("smtpd_client_restrictions = check_client_access permit");
    let d = map.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec!["restriction check_client_access: bad argument \"permit\": need maptype:mapname"]
    );
}

#[test]
fn bare_tables_take_the_list_s_access_check() {
    let s = Setup::new();
    s.table("access", "client.example REJECT by bare table\n");
    let r = s.rules(
        "smtpd_client_restrictions = texthash:{dir}/access\n\
         smtpd_data_restrictions = texthash:{dir}/access",
    );
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <client.example[192.0.2.1]>: Client host rejected: by bare table"
    );
    let d = r.check(Stage::Data, &rcpt("alice@example.com"));
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec![format!(
            "specify one of (check_client_access, check_reverse_client_hostname_access, \
             check_helo_access, check_sender_access, check_recipient_access, check_etrn_access) \
             before Data command restriction \"texthash:{}/access\"",
            s.dir.display()
        )]
    );
}

#[test]
fn table_lookup_errors_are_server_configuration_errors() {
    let s = Setup::new();
    let r = s.rules("smtpd_sender_restrictions = check_sender_access fail:x");
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(
        said(&d),
        "451 4.3.5 <sender@example.net>: Sender address rejected: Server configuration error"
    );
    assert!(warnings(&d)[0].starts_with("fail:x lookup error for \"sender@example.net\""));
    // A broken recipient table is a temporary lookup failure.
    let v = s.rules("local_recipient_maps = fail:users");
    assert_eq!(
        said(&v.check_rcpt(&rcpt("alice@example.com"))),
        "451 4.3.0 <alice@example.com>: Temporary lookup failure"
    );
}

#[test]
fn tables_that_cannot_open_name_the_parameter() {
    let s = Setup::new();
    let e = s
        .load("smtpd_recipient_restrictions = check_recipient_access hash:/nonexistent/access")
        .unwrap_err();
    assert!(e.starts_with("smtpd_recipient_restrictions: "), "{e}");
    let e = s.load("mynetworks = 10.0.0.1/8").unwrap_err();
    assert!(
        e.starts_with("mynetworks: non-null host address bits"),
        "{e}"
    );
    let e = s.load("relay_recipient_maps = bogus:x").unwrap_err();
    assert!(e.starts_with("relay_recipient_maps: "), "{e}");
}

// ----- client restrictions -----

#[test]
fn permit_mynetworks_and_permit_sasl_authenticated() {
    let s = Setup::new();
    let r = s.rules(
        "mynetworks = !10.0.0.9, 10.0.0.0/8, [2001:db8::]/32\n\
         smtpd_client_restrictions = permit_mynetworks, permit_sasl_authenticated, reject",
    );
    let from = |a: &str| Facts {
        client_addr: Some(a.parse().unwrap()),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&r.check_rcpt(&from("10.1.1.1"))), "permit");
    assert_eq!(said(&r.check_rcpt(&from("2001:db8::5"))), "permit");
    assert_eq!(
        said(&r.check_rcpt(&from("10.0.0.9"))),
        "554 5.7.1 <client.example[10.0.0.9]>: Client host rejected: Access denied"
    );
    let authed = Facts {
        sasl_username: Some("bob"),
        ..from("10.0.0.9")
    };
    assert_eq!(said(&r.check_rcpt(&authed)), "permit");
    // An IPv4-mapped IPv6 client is its IPv4 address, in matches and texts.
    assert_eq!(said(&r.check_rcpt(&from("::ffff:10.1.1.1"))), "permit");
    assert_eq!(
        said(&r.check_rcpt(&from("::ffff:192.0.2.8"))),
        "554 5.7.1 <client.example[192.0.2.8]>: Client host rejected: Access denied"
    );
}

#[test]
fn permit_actions_are_logged_when_asked() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_log_access_permit_actions = permit_mynetworks\n\
         smtpd_relay_restrictions = reject_unauth_destination\n\
         smtpd_client_restrictions = permit_mynetworks, reject",
    );
    let d = r.check_rcpt(&Facts {
        client_addr: Some("10.0.0.1".parse().unwrap()),
        ..rcpt("alice@example.com")
    });
    assert_eq!(
        events(&d),
        vec![
            "NOQUEUE: permit: RCPT from client.example[10.0.0.1]: action=permit_mynetworks \
              for Client host=client.example[10.0.0.1] ; from=<sender@example.net> \
              to=<alice@example.com> proto=ESMTP helo=<mx.client.example>"
        ]
    );
    let quiet = s.rules("smtpd_client_restrictions = permit_mynetworks, reject");
    let d = quiet.check_rcpt(&Facts {
        client_addr: Some("10.0.0.1".parse().unwrap()),
        ..rcpt("alice@example.com")
    });
    assert!(events(&d).is_empty());
}

#[test]
fn sender_login_mismatch_restrictions() {
    let s = Setup::new();
    s.table(
        "logins",
        "alice@example.com alice, admin\nbob@example.com bob\n",
    );
    let r = s.rules(
        "smtpd_sasl_auth_enable = yes\nsmtpd_sender_login_maps = texthash:{dir}/logins\n\
         smtpd_sender_restrictions = reject_sender_login_mismatch",
    );
    let ask = |sender: &'static str, user: Option<&'static str>| {
        said(&r.check_rcpt(&Facts {
            sender: Some(sender),
            sasl_username: user,
            ..rcpt("alice@example.com")
        }))
    };
    assert_eq!(ask("alice@example.com", Some("admin")), "permit");
    assert_eq!(
        ask("bob@example.com", Some("alice")),
        "553 5.7.1 <bob@example.com>: Sender address rejected: not owned by user alice"
    );
    assert_eq!(
        ask("other@example.net", Some("alice")),
        "553 5.7.1 <other@example.net>: Sender address rejected: not owned by user alice"
    );
    assert_eq!(
        ask("bob@example.com", None),
        "553 5.7.1 <bob@example.com>: Sender address rejected: not logged in"
    );
    assert_eq!(ask("other@example.net", None), "permit");
    let known = s.rules(
        "smtpd_sasl_auth_enable = yes\nsmtpd_sender_login_maps = texthash:{dir}/logins\n\
         smtpd_sender_restrictions = reject_known_sender_login_mismatch",
    );
    let f = Facts {
        sender: Some("other@example.net"),
        sasl_username: Some("alice"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&known.check_rcpt(&f)), "permit");
    let off = s.rules("smtpd_sender_restrictions = reject_authenticated_sender_login_mismatch");
    let d = off.check_rcpt(&f);
    assert_eq!(said(&d), "permit");
    assert_eq!(
        warnings(&d),
        vec!["restriction `reject_authenticated_sender_login_mismatch' ignored: no SASL support"]
    );
}

// ----- TLS client certificates -----

fn ccert(fingerprint: &str, pkey: &str, trusted: bool) -> libmail::tls::PeerCert {
    libmail::tls::PeerCert {
        fingerprint: fingerprint.into(),
        pkey_fingerprint: pkey.into(),
        subject_cn: "client.example".into(),
        issuer_cn: "Test CA".into(),
        trusted,
    }
}

fn over_tls<'a>(recipient: &'a str, cert: Option<&'a libmail::tls::PeerCert>) -> Facts<'a> {
    Facts {
        tls: true,
        ccert: cert,
        ..rcpt(recipient)
    }
}

#[test]
fn permit_tls_clientcerts_permits_listed_fingerprints_and_public_keys() {
    let s = Setup::new();
    s.table("ccerts", "AA:BB client one\nCC:DD key of client two\n");
    let r = s.rules(
        "smtpd_tls_ask_ccert = yes\nrelay_clientcerts = texthash:{dir}/ccerts\n\
         smtpd_relay_restrictions = permit_tls_clientcerts, defer_unauth_destination",
    );
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    let listed = ccert("AA:BB", "00:11", false);
    let by_key = ccert("EE:FF", "CC:DD", false);
    let other = ccert("EE:FF", "00:11", true);
    let denied = "454 4.7.1 <x@elsewhere.example>: Relay access denied";
    // Listed: permitted even though not verified.
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&listed)))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&by_key)))),
        "permit"
    );
    // Verified but not listed, no certificate, plaintext: not permitted.
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&other)))),
        denied
    );
    let d = r.check_rcpt(&over_tls("x@elsewhere.example", None));
    assert_eq!(said(&d), denied);
    assert!(warnings(&d).is_empty(), "{:?}", warnings(&d));
    assert_eq!(said(&r.check_rcpt(&rcpt("x@elsewhere.example"))), denied);
}

#[test]
fn permit_tls_all_clientcerts_permits_only_verified_certificates() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_tls_ask_ccert = yes\n\
         smtpd_relay_restrictions = permit_tls_all_clientcerts, defer_unauth_destination",
    );
    let verified = ccert("AA:BB", "00:11", true);
    let untrusted = ccert("AA:BB", "00:11", false);
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&verified)))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&untrusted)))),
        "454 4.7.1 <x@elsewhere.example>: Relay access denied"
    );
}

#[test]
fn certificate_restrictions_warn_when_no_certificate_is_asked_for() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_relay_restrictions = permit_tls_clientcerts, check_ccert_access \
         texthash:{dir}/users, defer_unauth_destination",
    );
    let d = r.check_rcpt(&over_tls("x@elsewhere.example", None));
    assert_eq!(
        warnings(&d),
        vec![
            "permit_tls_clientcerts is requested, but \"smtpd_tls_ask_ccert = no\"",
            "check_ccert_access is requested, but \"smtpd_tls_ask_ccert = no\"",
        ]
    );
}

#[test]
fn check_ccert_access_acts_on_the_fingerprint_then_the_public_key() {
    let s = Setup::new();
    s.table(
        "ccert_access",
        "AA:BB REJECT\nCC:DD OK\n11:22 DUNNO\n33:44 REJECT key refused\n",
    );
    let r = s.rules(
        "smtpd_tls_ask_ccert = yes\n\
         smtpd_relay_restrictions = check_ccert_access texthash:{dir}/ccert_access, \
         defer_unauth_destination",
    );
    let rejected = ccert("AA:BB", "CC:DD", true);
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&rejected)))),
        "554 5.7.1 <client.example>: Client certificate rejected: Access denied"
    );
    let ok = ccert("CC:DD", "00:00", false);
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&ok)))),
        "permit"
    );
    // DUNNO for the certificate: the public key is looked up next.
    let by_key = ccert("11:22", "33:44", false);
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&by_key)))),
        "554 5.7.1 <client.example>: Client certificate rejected: key refused"
    );
    let unknown = ccert("99:99", "88:88", false);
    assert_eq!(
        said(&r.check_rcpt(&over_tls("x@elsewhere.example", Some(&unknown)))),
        "454 4.7.1 <x@elsewhere.example>: Relay access denied"
    );
}

// ----- sleep, unsupported restrictions, the log line -----

#[test]
fn sleep_is_returned_to_the_session() {
    let s = Setup::new();
    let r = s.rules("smtpd_client_restrictions = sleep 5, permit");
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "permit");
    assert_eq!(d.actions, vec![Action::Sleep(5)]);
}

#[test]
fn unsupported_restrictions_are_skipped_with_a_warning_at_load() {
    let s = Setup::new();
    let r = s.rules(
        "smtpd_client_restrictions = reject_unknown_address, \
         reject_unknown_address\n\
         smtpd_recipient_restrictions = reject_unverified_sender",
    );
    assert_eq!(r.warnings().len(), 2, "{:?}", r.warnings());
    assert!(
        r.warnings()[0].starts_with("restriction \"reject_unknown_address\" is not supported yet")
    );
    assert!(r.warnings()[0].ends_with("so mail it would reject or defer is accepted"));
    assert!(r.warnings()[1].starts_with("restriction \"reject_unverified_sender\""));
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
    // The arguments are still checked as Postfix checks them.
    let bad =
        s.rules("smtpd_recipient_restrictions = check_policy_service, reject_unauth_destination");
    let d = bad.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&d),
        vec!["restriction check_policy_service must be followed by transport:server"]
    );
}

#[test]
fn event_lines_have_postfix_s_shape() {
    let e = Event {
        what: "reject_warning",
        text: "554 5.7.1 x".into(),
        client: "unknown[192.0.2.1]".into(),
        sender: Some(String::new()),
        recipient: Some("john doe@example.com".into()),
        helo: None,
    };
    assert_eq!(
        e.line(Some("4F2A51C0D2"), "RCPT", Some("ESMTP")),
        "4F2A51C0D2: reject_warning: RCPT from unknown[192.0.2.1]: 554 5.7.1 x; from=<> \
         to=<\"john doe\"@example.com> proto=ESMTP"
    );
    assert_eq!(
        Log::Warning("x".into()).line(None, "RCPT", None),
        "warning: x"
    );
    let bare = Event {
        sender: None,
        recipient: None,
        ..e
    };
    assert_eq!(
        bare.line(None, "CONNECT", None),
        "NOQUEUE: reject_warning: CONNECT from unknown[192.0.2.1]: 554 5.7.1 x;"
    );
}

#[test]
fn data_stage_hides_the_recipient_with_several() {
    let s = Setup::new();
    s.table("access", "alice@example.com WARN seen\n");
    let r = s.rules("smtpd_data_restrictions = check_recipient_access texthash:{dir}/access");
    let one = Facts {
        rcpt_count: 1,
        ..rcpt("alice@example.com")
    };
    let d = r.check(Stage::Data, &one);
    assert_eq!(events(&d).len(), 1);
    assert!(events(&d)[0].contains("to=<alice@example.com>"));
    let two = Facts {
        rcpt_count: 2,
        ..one
    };
    assert!(r.check(Stage::Data, &two).log.is_empty());
}

#[test]
fn permit_inet_interfaces_and_legacy_check_relay_domains() {
    let s = Setup::new();
    let r = s.rules(
        "inet_interfaces = 127.0.0.1\n\
         smtpd_client_restrictions = permit_inet_interfaces, reject",
    );
    let local = Facts {
        client_addr: Some("127.0.0.1".parse().unwrap()),
        ..rcpt("alice@example.com")
    };
    assert_eq!(said(&r.check_rcpt(&local)), "permit");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <client.example[192.0.2.1]>: Client host rejected: Access denied"
    );
    let legacy = s.rules(
        "relay_domains = trusted.example\n\
         smtpd_relay_restrictions = check_relay_domains",
    );
    assert!(legacy
        .warnings()
        .iter()
        .any(|w| w.starts_with("support for restriction \"check_relay_domains\" will be removed")));
    assert_eq!(
        said(&legacy.check_rcpt(&rcpt("x@elsewhere.example"))),
        "554 5.7.1 <x@elsewhere.example>: Recipient address rejected: Relay access denied"
    );
    let friend = Facts {
        client_name: "mx.trusted.example",
        ..rcpt("x@elsewhere.example")
    };
    assert_eq!(said(&legacy.check_rcpt(&friend)), "permit");
}

// ----- check_policy_service -----

/// A scripted policy server on a loopback port or a unix socket: it
/// answers each request with the next action of the script (an action
/// containing `=` is sent as the raw reply body) and records the requests
/// and the number of connections.
struct PolicyServer {
    addr: String,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

fn serve_policy<S: std::io::Read + std::io::Write>(
    s: S,
    script: &std::sync::Mutex<std::collections::VecDeque<String>>,
    requests: &std::sync::Mutex<Vec<String>>,
) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(s);
    loop {
        let mut req = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            req.push_str(&line);
            if line == "\n" {
                break;
            }
        }
        requests.lock().unwrap().push(req);
        let Some(action) = script.lock().unwrap().pop_front() else {
            return;
        };
        // `CLOSE:action`: answer, then close the connection.
        let (close, action) = match action.strip_prefix("CLOSE:") {
            Some(a) => (true, a.to_string()),
            None => (false, action),
        };
        let reply = if action.contains('=') {
            action
        } else {
            format!("action={action}\n\n")
        };
        if r.get_mut().write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

impl PolicyServer {
    fn start(unix: Option<&std::path::Path>, script: &[&str]) -> PolicyServer {
        let script = Arc::new(std::sync::Mutex::new(
            script
                .iter()
                .map(|s| s.to_string())
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (sc, rq, cn) = (script.clone(), requests.clone(), connections.clone());
        let addr = match unix {
            Some(path) => {
                let l = std::os::unix::net::UnixListener::bind(path).unwrap();
                std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        cn.fetch_add(1, Ordering::SeqCst);
                        let (sc, rq) = (sc.clone(), rq.clone());
                        std::thread::spawn(move || serve_policy(s, &sc, &rq));
                    }
                });
                format!("unix:{}", path.display())
            }
            None => {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let a = l.local_addr().unwrap();
                std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        cn.fetch_add(1, Ordering::SeqCst);
                        let (sc, rq) = (sc.clone(), rq.clone());
                        std::thread::spawn(move || serve_policy(s, &sc, &rq));
                    }
                });
                format!("inet:{a}")
            }
        };
        PolicyServer {
            addr,
            requests,
            connections,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn policy_rules(s: &Setup, server: &str, extra: &str) -> Restrictions {
    s.rules(&format!(
        "smtpd_recipient_restrictions = reject_unauth_destination, \
         check_policy_service {server}\n{extra}"
    ))
}

#[test]
fn policy_requests_carry_the_client_certificate() {
    let s = Setup::new();
    let srv = PolicyServer::start(None, &["DUNNO", "DUNNO"]);
    let r = policy_rules(&s, &srv.addr, "smtpd_tls_ask_ccert = yes");
    let attrs = |req: &str| -> Vec<String> {
        req.lines()
            .filter(|l| l.starts_with("ccert_"))
            .map(str::to_string)
            .collect()
    };
    let untrusted = ccert("AA:BB", "CC:DD", false);
    let trusted = ccert("AA:BB", "CC:DD", true);
    assert_eq!(
        said(&r.check_rcpt(&over_tls("alice@example.com", Some(&untrusted)))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&over_tls("alice@example.com", Some(&trusted)))),
        "permit"
    );
    let reqs = srv.requests();
    // Names only for a verified certificate, as Postfix sends them.
    assert_eq!(
        attrs(&reqs[0]),
        [
            "ccert_subject=",
            "ccert_issuer=",
            "ccert_fingerprint=AA:BB",
            "ccert_pubkey_fingerprint=CC:DD"
        ]
    );
    assert_eq!(
        attrs(&reqs[1]),
        [
            "ccert_subject=client.example",
            "ccert_issuer=Test CA",
            "ccert_fingerprint=AA:BB",
            "ccert_pubkey_fingerprint=CC:DD"
        ]
    );
}

#[test]
fn policy_request_is_postfix_s_text() {
    let s = Setup::new();
    let srv = PolicyServer::start(None, &["DUNNO"]);
    let r = policy_rules(
        &s,
        &srv.addr,
        "smtpd_policy_service_policy_context = submission",
    );
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    let f = Facts {
        queue_id: Some("4F2A51C0D2"),
        esmtp: true,
        client_port: Some(54321),
        server_addr: Some("192.0.2.25".parse().unwrap()),
        server_port: Some(25),
        instance: Some("1a2b.5f3c.1"),
        size: 12345,
        sasl_method: Some("PLAIN"),
        sasl_username: Some("alice"),
        tls_protocol: Some("TLSv1.3"),
        tls_cipher: Some("TLS_AES_256_GCM_SHA384"),
        tls_keysize: 256,
        rcpt_count: 3,
        ..rcpt("alice@example.com")
    };
    let d = r.check_rcpt(&f);
    assert_eq!(said(&d), "permit");
    assert_eq!(
        srv.requests(),
        vec![
            "request=smtpd_access_policy\n\
             protocol_state=RCPT\n\
             protocol_name=ESMTP\n\
             client_address=192.0.2.1\n\
             client_name=client.example\n\
             client_port=54321\n\
             reverse_client_name=client.example\n\
             server_address=192.0.2.25\n\
             server_port=25\n\
             helo_name=mx.client.example\n\
             sender=sender@example.net\n\
             recipient=alice@example.com\n\
             recipient_count=0\n\
             queue_id=4F2A51C0D2\n\
             instance=1a2b.5f3c.1\n\
             size=12345\n\
             etrn_domain=\n\
             stress=\n\
             sasl_method=PLAIN\n\
             sasl_username=alice\n\
             sasl_sender=\n\
             ccert_subject=\n\
             ccert_issuer=\n\
             ccert_fingerprint=\n\
             ccert_pubkey_fingerprint=\n\
             encryption_protocol=TLSv1.3\n\
             encryption_cipher=TLS_AES_256_GCM_SHA384\n\
             encryption_keysize=256\n\
             policy_context=submission\n\
             compatibility_level=3.6\n\
             mail_version=3.7.11\n\
             \n"
        ]
    );
    // Defaults: unknown ports and addresses, SMTP, an empty sender.
    let srv = PolicyServer::start(None, &["DUNNO"]);
    let r = s.rules(&format!(
        "smtpd_client_restrictions = check_policy_service {}\n\
         smtpd_recipient_restrictions = reject_unauth_destination",
        srv.addr
    ));
    let d = r.check(
        Stage::Client,
        &Facts::new(
            Some("::ffff:192.0.2.7".parse().unwrap()),
            "unknown",
            "unknown",
        ),
    );
    assert_eq!(said(&d), "permit");
    let req = &srv.requests()[0];
    assert!(
        req.starts_with(
            "request=smtpd_access_policy\nprotocol_state=CONNECT\nprotocol_name=SMTP\n\
         client_address=192.0.2.7\nclient_name=unknown\nclient_port=unknown\n\
         reverse_client_name=unknown\nserver_address=unknown\nserver_port=unknown\n\
         helo_name=\nsender=\nrecipient=\nrecipient_count=0\nqueue_id=\n"
        ),
        "{req}"
    );
}

#[test]
fn policy_actions_are_access_results() {
    let s = Setup::new();
    let cases: &[(&str, &str)] = &[
        ("DUNNO", "permit"),
        ("OK", "permit"),
        (
            "REJECT go away",
            "554 5.7.1 <alice@example.com>: Recipient address rejected: go away",
        ),
        (
            "DEFER_IF_PERMIT Service temporarily unavailable",
            "450 4.7.1 <alice@example.com>: Recipient address rejected: Service temporarily unavailable",
        ),
        (
            "450 4.2.0 Greylisted, see http://postgrey.schweikert.ch/help/example.com.html",
            "450 4.2.0 <alice@example.com>: Recipient address rejected: Greylisted, see \
             http://postgrey.schweikert.ch/help/example.com.html",
        ),
        (
            "permit_mynetworks, defer",
            "450 4.3.2 <alice@example.com>: Recipient address rejected: Try again later",
        ),
        (
            "permit_mynetworks, reject",
            "554 5.7.1 <alice@example.com>: Recipient address rejected: Access denied",
        ),
        (
            "550 5.1.1 No such user",
            "550 5.1.1 <alice@example.com>: Recipient address rejected: No such user",
        ),
    ];
    let srv = PolicyServer::start(None, &cases.iter().map(|c| c.0).collect::<Vec<_>>());
    let r = policy_rules(&s, &srv.addr, "");
    for (action, want) in cases {
        let d = r.check_rcpt(&rcpt("alice@example.com"));
        assert_eq!(said(&d), *want, "action {action}");
        assert!(warnings(&d).is_empty(), "{action}: {:?}", warnings(&d));
    }
    // One connection, kept and reused.
    assert_eq!(srv.connections.load(Ordering::SeqCst), 1);
    assert_eq!(srv.requests().len(), cases.len());

    let srv = PolicyServer::start(None, &["PREPEND X-Policy: seen", "HOLD"]);
    let r = policy_rules(&s, &srv.addr, "");
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "permit");
    assert_eq!(d.actions, vec![Action::Prepend("X-Policy: seen".into())]);
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert!(
        matches!(d.actions[..], [Action::Hold(_)]),
        "{:?}",
        d.actions
    );
    assert_eq!(
        events(&d),
        vec![
            "NOQUEUE: hold: RCPT from client.example[192.0.2.1]: <alice@example.com>: \
             Recipient address triggers HOLD action; from=<sender@example.net> \
             to=<alice@example.com> proto=ESMTP helo=<mx.client.example>"
        ]
    );
}

#[test]
fn policy_failures_use_the_default_action() {
    let s = Setup::new();
    // Nobody listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = policy_rules(
        &s,
        &format!("inet:127.0.0.1:{port}"),
        "smtpd_policy_service_retry_delay = 0s",
    );
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(
        said(&d),
        "451 4.3.5 <alice@example.com>: Recipient address rejected: Server configuration problem"
    );
    let w = warnings(&d);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].starts_with(&format!("inet:127.0.0.1:{port}: connect error: ")));
    assert_eq!(
        w[2],
        format!("problem talking to server inet:127.0.0.1:{port}")
    );

    // A reply with an attribute Postfix does not expect, then a good one:
    // the second try succeeds on a new connection.
    let srv = PolicyServer::start(None, &["foo=bar\n\n", "OK"]);
    let r = policy_rules(&s, &srv.addr, "smtpd_policy_service_retry_delay = 0s");
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(said(&d), "permit");
    assert_eq!(
        warnings(&d),
        vec![format!("{}: unexpected attribute foo", srv.addr)]
    );
    assert_eq!(srv.connections.load(Ordering::SeqCst), 2);

    // The braces form: its own default action and try limit.
    let r = policy_rules(
        &s,
        &format!(
            "{{ inet:127.0.0.1:{port}, try_limit=1, default_action=DEFER_IF_PERMIT Policy down }}"
        ),
        "",
    );
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(
        said(&d),
        "450 4.7.1 <alice@example.com>: Recipient address rejected: Policy down"
    );
    assert_eq!(warnings(&d).len(), 2, "{:?}", warnings(&d));

    // Bad server names are refused when the configuration is loaded.
    let e = s
        .load("smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service tcp:x:1")
        .unwrap_err();
    assert!(e.starts_with("invalid transport name"), "{e}");
}

#[test]
fn policy_over_a_unix_socket_relative_to_the_working_directory() {
    // smtpd works in queue_directory (libmail::service), jailed or not, so
    // `unix:private/policy` is found there. Here the test's working
    // directory stands in for it: the relative path climbs to / from it.
    let s = Setup::new();
    std::fs::create_dir_all(s.dir.join("private")).unwrap();
    let srv = PolicyServer::start(Some(&s.dir.join("private/policy")), &["REJECT no"]);
    assert!(srv.addr.starts_with("unix:/"));
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let rel = format!(
        "{up}{}",
        s.dir
            .join("private/policy")
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    let r = policy_rules(
        &s,
        &format!("{{ unix:{rel}, policy_context = {{ submission }} }}"),
        "queue_directory = /nonexistent",
    );
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(
        said(&d),
        "554 5.7.1 <alice@example.com>: Recipient address rejected: no"
    );
    assert!(srv.requests()[0].contains("\npolicy_context=submission\n"));
}

#[test]
fn policy_connections_closed_by_the_server_or_the_limit_are_replaced() {
    let s = Setup::new();
    // The server closes after its first answer: the kept connection is
    // found dead and replaced without a warning or a retry delay.
    let srv = PolicyServer::start(None, &["CLOSE:OK", "REJECT x"]);
    let r = policy_rules(&s, &srv.addr, "smtpd_policy_service_retry_delay = 100s");
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
    let d = r.check_rcpt(&rcpt("alice@example.com"));
    assert_eq!(
        said(&d),
        "554 5.7.1 <alice@example.com>: Recipient address rejected: x"
    );
    assert!(warnings(&d).is_empty(), "{:?}", warnings(&d));
    assert_eq!(srv.connections.load(Ordering::SeqCst), 2);

    // request_limit = 1: a new connection for every request.
    let srv = PolicyServer::start(None, &["DUNNO", "DUNNO", "DUNNO"]);
    let r = policy_rules(&s, &srv.addr, "smtpd_policy_service_request_limit = 1");
    for _ in 0..3 {
        assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
    }
    assert_eq!(srv.connections.load(Ordering::SeqCst), 3);
}

// ----- DNS restrictions, against a real DNS server (dnsmasq) -----

/// A dnsmasq on a loopback port, killed (by PID) when dropped.
pub(super) struct DnsServer {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DnsServer {
    /// dnsmasq answering for `.test` only: `bl.test` lists 127.0.0.1
    /// (with a TXT reason) and `bad.example.test` (RHSBL), `wl.test` lists
    /// 127.0.0.1 and the name `friendly.test`, `mx.test` has
    /// an MX (whose host has no address), `a.test` an A record,
    /// `nullmx.test` the null MX; for the `check_*_{a,mx,ns}_access`
    /// tests `spam.test` has two MX hosts under `spamhost.test` (the
    /// second with an IPv6 address too), `good.test` one, and `ns.test`
    /// two name servers under `nshost.test`; for `permit_mx_backup`
    /// `backup.test` has two primaries under `primary.test` and
    /// `mx.loopback.test` (127.0.0.1) as backup, `primary.test` that host
    /// as primary (and `mx.example.com` as a backup), `tied.test` it tied with a primary, `byname.test` a
    /// backup named `mx.example.com`, `nat.test` a backup at 198.51.100.7,
    /// `lame.test` a primary without address and `lameprimary.test` one
    /// outside `.test` (`mx.example.org`: a temporary failure). Everything else under
    /// `.test` is NXDOMAIN; names outside `.test` are refused (no
    /// upstream server): a temporary failure. `None` when dnsmasq is
    /// missing or does not start.
    pub(super) fn start() -> Option<DnsServer> {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let mut child = std::process::Command::new(bin)
                .args([
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--pid-file=",
                    "--user=root",
                    "--group=root",
                    "--local=/test/",
                    &format!("--port={port}"),
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--host-record=1.0.0.127.bl.test,127.0.0.2",
                    "--txt-record=1.0.0.127.bl.test,Listed; see https://bl.test/?127.0.0.1",
                    "--host-record=1.0.0.127.other.test,127.0.0.9",
                    "--host-record=bad.example.test.bl.test,127.0.0.2",
                    "--host-record=1.0.0.127.wl.test,127.0.0.2",
                    "--host-record=friendly.test.wl.test,127.0.0.2",
                    "--mx-host=mx.test,mail.mx.test,10",
                    "--host-record=a.test,192.0.2.10",
                    "--dns-rr=nullmx.test,15,000000",
                    "--mx-host=spam.test,mx1.spamhost.test,10",
                    "--mx-host=spam.test,mx2.spamhost.test,20",
                    "--host-record=mx1.spamhost.test,192.0.2.21",
                    "--host-record=mx2.spamhost.test,192.0.2.22,2001:db8::22",
                    "--mx-host=good.test,mx.goodhost.test,10",
                    "--host-record=mx.goodhost.test,192.0.2.30",
                    &ns_record("ns.test", "ns1.nshost.test"),
                    &ns_record("ns.test", "ns2.nshost.test"),
                    "--host-record=ns1.nshost.test,192.0.2.41",
                    "--host-record=ns2.nshost.test,192.0.2.42",
                    // permit_mx_backup: this machine (127.0.0.1) as a
                    // backup, as a primary, and a NAT address.
                    "--mx-host=backup.test,mx1.primary.test,10",
                    "--mx-host=backup.test,mx2.primary.test,10",
                    "--mx-host=backup.test,mx.loopback.test,20",
                    "--host-record=mx1.primary.test,192.0.2.51",
                    "--host-record=mx2.primary.test,192.0.2.52",
                    "--host-record=mx.loopback.test,127.0.0.1",
                    "--mx-host=primary.test,mx.loopback.test,10",
                    "--mx-host=primary.test,mx1.primary.test,20",
                    "--mx-host=primary.test,mx.example.com,30",
                    "--mx-host=tied.test,mx1.primary.test,10",
                    "--mx-host=tied.test,mx.loopback.test,10",
                    "--mx-host=byname.test,mx1.primary.test,10",
                    "--mx-host=byname.test,mx.example.com,20",
                    "--mx-host=nat.test,mx1.primary.test,10",
                    "--mx-host=nat.test,mx.nat.test,20",
                    "--host-record=mx.nat.test,198.51.100.7",
                    "--mx-host=lame.test,mail.mx.test,10",
                    "--mx-host=lame.test,mx.loopback.test,20",
                    "--mx-host=lameprimary.test,mx.example.org,10",
                    "--mx-host=lameprimary.test,mx.loopback.test,20",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()?;
            // Ready when it answers a query (bounded); a dnsmasq that
            // could not bind exits, and the next port is tried.
            if answers(port) {
                return Some(DnsServer { child, port });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    fn main_cf(&self) -> String {
        format!("facteur_dns_servers = 127.0.0.1:{}\n", self.port)
    }
}

/// A dnsmasq option for the NS record `owner` NS `host` (the data in
/// wire form: length-prefixed labels).
fn ns_record(owner: &str, host: &str) -> String {
    let mut hex = String::new();
    for label in host.split('.') {
        hex.push_str(&format!("{:02x}", label.len()));
        for b in label.bytes() {
            hex.push_str(&format!("{b:02x}"));
        }
    }
    format!("--dns-rr={owner},2,{hex}00")
}

fn local_client<'a>() -> Facts<'a> {
    Facts {
        client_addr: Some("127.0.0.1".parse().unwrap()),
        ..stranger()
    }
}

/// Whether a DNS server on 127.0.0.1:`port` answers an A query for
/// `a.test` within about five seconds.
fn answers(port: u16) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(std::time::Duration::from_millis(100)));
    let query: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01";
    let mut buf = [0u8; 512];
    for _ in 0..50 {
        if sock.send_to(query, ("127.0.0.1", port)).is_ok() {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n >= 2 && buf[..2] == [0x12, 0x34] {
                    return true;
                }
            }
        }
    }
    false
}

/// The dnsmasq these tests need; scripts/test.sh installs it.
macro_rules! dns_or_skip {
    () => {
        DnsServer::start().expect(
            "dnsmasq (package dnsmasq-base) did not start: run scripts/test.sh, which installs it",
        )
    };
}

#[test]
fn dns_lookups_tell_records_from_not_found() {
    let d = dns_or_skip!();
    let dns = Dns::with_servers(
        &[format!("127.0.0.1:{}", d.port).parse().unwrap()],
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(
        dns.a("1.0.0.127.bl.test").unwrap(),
        vec![std::net::Ipv4Addr::new(127, 0, 0, 2)]
    );
    assert_eq!(dns.a("2.0.0.127.bl.test"), Err(DnsError::NotFound));
    assert_eq!(
        dns.txt("1.0.0.127.bl.test").unwrap(),
        vec!["Listed; see https://bl.test/?127.0.0.1".to_string()]
    );
    let mx = dns.mx("mx.test").unwrap();
    assert_eq!(mx[0].exchange, "mail.mx.test");
    assert!(libmail::dns::is_null_mx(&dns.mx("nullmx.test").unwrap()));
    assert_eq!(dns.mx("a.test"), Err(DnsError::NotFound));
    // In the order of the answer (dnsmasq's, here).
    let mut ns = dns.ns("ns.test").unwrap();
    ns.sort();
    assert_eq!(ns, vec!["ns1.nshost.test", "ns2.nshost.test"]);
    assert_eq!(dns.ns("sub.ns.test"), Err(DnsError::NotFound));
    assert_eq!(dns.ns("a.test"), Err(DnsError::NotFound));
    assert!(matches!(dns.mx("example.org"), Err(DnsError::Temporary(_))));
}

#[test]
fn rbl_client_rejects_a_listed_client_with_the_txt_reason() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = s.rules(&format!(
        "{}smtpd_client_restrictions = reject_rbl_client bl.test",
        d.main_cf()
    ));
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    let f = Facts {
        recipient: Some("alice@example.com"),
        ..local_client()
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using bl.test; \
         Listed; see https://bl.test/?127.0.0.1"
    );
    // Not listed: passes.
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
}

/// XCLIENT `ADDR=[UNAVAILABLE]`: the listed address is no longer the
/// client's, so no DNS list is asked, no network or interface holds it,
/// and it shows as `unknown` in replies and access-table keys.
#[test]
fn an_unknown_client_address_is_in_no_list_network_or_interface() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table("clients", "unknown REJECT by address\n");
    let unknown = |r: &Restrictions, name: &'static str| {
        let f = Facts {
            recipient: Some("alice@example.com"),
            ..Facts::new(None, name, name)
        };
        r.check_rcpt(&f)
    };
    let listed = s.rules(&format!(
        "{}mynetworks = 0.0.0.0/0 [::]/0\n\
         smtpd_recipient_restrictions = reject_rbl_client bl.test, \
         permit_inet_interfaces, permit_mynetworks, permit_dnswl_client wl.test, \
         reject_unknown_client_hostname, check_client_access texthash:{{dir}}/clients",
        d.main_cf()
    ));
    // The same restrictions for 127.0.0.1: the DNSBL refuses it.
    assert!(said(&listed.check_rcpt(&Facts {
        recipient: Some("alice@example.com"),
        ..local_client()
    }))
    .contains("blocked using bl.test"));
    let dec = unknown(&listed, "unknown");
    assert_eq!(
        said(&dec),
        "450 4.7.25 Client host rejected: cannot find your hostname, [unknown]"
    );
    assert!(warnings(&dec).is_empty(), "{:?}", warnings(&dec));
    let dec = unknown(&listed, "client.example");
    assert_eq!(
        said(&dec),
        "554 5.7.1 <client.example[unknown]>: Client host rejected: by address"
    );
}

#[test]
fn rbl_client_address_filter_and_reply_maps() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table("rbl", "other.test 450 4.7.1 $rbl_what is on $rbl_domain\n");
    let f = Facts {
        recipient: Some("alice@example.com"),
        ..local_client()
    };
    let r = s.rules(&format!(
        "{}smtpd_client_restrictions = reject_rbl_client bl.test=127.0.0.[3..5]",
        d.main_cf()
    ));
    assert_eq!(said(&r.check_rcpt(&f)), "permit");
    let r = s.rules(&format!(
        "{}rbl_reply_maps = texthash:{{dir}}/rbl\n\
         smtpd_client_restrictions = reject_rbl_client other.test=127.0.0.9",
        d.main_cf()
    ));
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "450 4.7.1 127.0.0.1 is on other.test"
    );
    // No TXT record: no "; reason".
    let r = s.rules(&format!(
        "{}smtpd_client_restrictions = reject_rbl_client other.test",
        d.main_cf()
    ));
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using other.test"
    );
}

/// No list or class names a DNS restriction, so none makes a resolver at
/// load: an access table's result that names one makes it when first
/// needed (it used to panic the connection's task).
#[test]
fn dns_restriction_named_by_an_access_table_result() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table(
        "access",
        "127.0.0.1 reject_rbl_client bl.test\n192.0.2.1 reject_rbl_client bl.test\n",
    );
    let r = s.rules(&format!(
        "{}smtpd_client_restrictions = check_client_access texthash:{{dir}}/access",
        d.main_cf()
    ));
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    let f = Facts {
        recipient: Some("alice@example.com"),
        ..local_client()
    };
    let listed = r.check_rcpt(&f);
    assert_eq!(
        said(&listed),
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using bl.test; \
         Listed; see https://bl.test/?127.0.0.1"
    );
    assert!(warnings(&listed).is_empty(), "{:?}", warnings(&listed));
    // The same resolver again; a client not listed passes.
    assert_eq!(said(&r.check_rcpt(&f)), said(&listed));
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");

    // A resolver that cannot be made: not fatal at load (nothing listed
    // needs it), and then every lookup is a temporary failure, which an
    // RBL lookup logs and counts as not listed.
    let r = s.rules(
        "facteur_dns_servers = no-such-address\n\
         smtpd_client_restrictions = check_client_access texthash:{dir}/access",
    );
    let d = r.check_rcpt(&f);
    assert_eq!(said(&d), "permit");
    assert_eq!(
        warnings(&d),
        ["1.0.0.127.bl.test: RBL lookup error: \
          facteur_dns_servers: bad server \"no-such-address\": need address[:port]"]
    );
    // Listed in a list, the same error is fatal at load, as before.
    assert_eq!(
        s.load(
            "facteur_dns_servers = no-such-address\n\
             smtpd_client_restrictions = reject_rbl_client bl.test"
        )
        .unwrap_err(),
        "facteur_dns_servers: bad server \"no-such-address\": need address[:port]"
    );
}

#[test]
fn rhsbl_sender_and_dnswl_client() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = s.rules(&format!(
        "{}smtpd_sender_restrictions = reject_rhsbl_sender bl.test",
        d.main_cf()
    ));
    let f = Facts {
        sender: Some("x@bad.example.test"),
        recipient: Some("alice@example.com"),
        ..stranger()
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 Service unavailable; Sender address [bad.example.test] blocked using bl.test"
    );
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
    // A DNSWL-listed client skips the rest of the client list.
    let r = s.rules(&format!(
        "{}smtpd_client_restrictions = permit_dnswl_client wl.test, reject",
        d.main_cf()
    ));
    let f = Facts {
        recipient: Some("alice@example.com"),
        ..local_client()
    };
    assert_eq!(said(&r.check_rcpt(&f)), "permit");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <client.example[192.0.2.1]>: Client host rejected: Access denied"
    );
}

#[test]
fn rhswl_client_permits_a_listed_name_but_never_relays() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = s.rules(&format!(
        "{}smtpd_client_restrictions = permit_rhswl_client wl.test, reject",
        d.main_cf()
    ));
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    let friendly = |rcpt: &'static str| Facts {
        recipient: Some(rcpt),
        ..Facts::new(
            Some("192.0.2.7".parse().unwrap()),
            "friendly.test",
            "friendly.test",
        )
    };
    assert_eq!(
        said(&r.check_rcpt(&friendly("alice@example.com"))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&rcpt("alice@example.com"))),
        "554 5.7.1 <client.example[192.0.2.1]>: Client host rejected: Access denied"
    );
    // In the relay list it permits only what this server takes anyway.
    let r = s.rules(&format!(
        "{}smtpd_relay_restrictions = permit_rhswl_client wl.test, reject_unauth_destination",
        d.main_cf()
    ));
    assert_eq!(
        said(&r.check_rcpt(&friendly("alice@example.com"))),
        "permit"
    );
    let relayed = said(&r.check_rcpt(&friendly("bob@elsewhere.example")));
    assert!(relayed.contains("Relay access denied"), "{relayed}");
}

#[test]
fn maps_rbl_is_reject_rbl_client_for_each_maps_rbl_domain() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = s.rules(&format!(
        "{}maps_rbl_domains = other.test, bl.test\n\
         smtpd_client_restrictions = reject_maps_rbl",
        d.main_cf()
    ));
    assert_eq!(
        r.warnings(),
        [
            "support for restriction \"reject_maps_rbl\" will be removed from Postfix; \
          use \"reject_rbl_client domain-name\" instead"
        ]
    );
    let f = Facts {
        recipient: Some("alice@example.com"),
        ..local_client()
    };
    // The first domain that lists the client decides.
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using other.test"
    );
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
}

#[test]
fn unknown_helo_hostnames_are_deferred() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = s.rules(&format!(
        "{}smtpd_helo_restrictions = reject_unknown_helo_hostname",
        d.main_cf()
    ));
    let helo = |h: &'static str| Facts {
        helo: Some(h),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&helo("nohost.test"))),
        "450 4.7.1 <nohost.test>: Helo command rejected: Host not found"
    );
    assert_eq!(said(&r.check_rcpt(&helo("a.test"))), "permit");
    assert_eq!(said(&r.check_rcpt(&helo("mx.test"))), "permit");
    assert_eq!(said(&r.check_rcpt(&helo("[192.0.2.1]"))), "permit");
}

#[test]
fn unknown_sender_and_recipient_domains() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = s.rules(&format!(
        "{}smtpd_sender_restrictions = reject_unknown_sender_domain\n\
         smtpd_relay_restrictions =\n\
         smtpd_recipient_restrictions = reject_unknown_recipient_domain, \
         reject_unauth_destination",
        d.main_cf()
    ));
    let with = |sender: &'static str, rcpt: &'static str| Facts {
        sender: Some(sender),
        recipient: Some(rcpt),
        ..stranger()
    };
    assert_eq!(
        said(&r.check_rcpt(&with("x@none.test", "alice@example.com"))),
        "450 4.1.8 <x@none.test>: Sender address rejected: Domain not found"
    );
    assert_eq!(
        said(&r.check_rcpt(&with("x@mx.test", "alice@example.com"))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&with("x@a.test", "alice@example.com"))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&with("x@nullmx.test", "alice@example.com"))),
        "550 5.7.27 <x@nullmx.test>: Sender address rejected: Domain nullmx.test \
         does not accept mail (nullMX)"
    );
    // The null sender and local domains are not looked up.
    assert_eq!(
        said(&r.check_rcpt(&with("", "alice@example.com"))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&with("bob@example.com", "alice@example.com"))),
        "permit"
    );
    assert_eq!(
        said(&r.check_rcpt(&with("x@a.test", "y@none.test"))),
        "450 4.1.2 <y@none.test>: Recipient address rejected: Domain not found"
    );
    assert_eq!(
        said(&r.check_rcpt(&with("x@a.test", "y@nullmx.test"))),
        "556 5.1.10 <y@nullmx.test>: Recipient address rejected: Domain nullmx.test \
         does not accept mail (nullMX)"
    );
}

#[test]
fn unknown_sender_domain_defers_on_a_dns_failure() {
    // Nothing listens on the port: a timeout, so a defer_if_permit.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Setup::new();
    let r = s.rules(&format!(
        "facteur_dns_servers = 127.0.0.1:{port}\n\
         smtpd_sender_restrictions = reject_unknown_sender_domain"
    ));
    let f = Facts {
        sender: Some("x@a.test"),
        recipient: Some("alice@example.com"),
        ..stranger()
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "450 4.1.8 <x@a.test>: Sender address rejected: Domain not found"
    );
}

// ----- check_*_{a,mx,ns}_access, against the same dnsmasq -----

/// Rules with `list` as `param`, a `hosts` texthash and a `nets` cidr
/// table in the setup's directory.
fn server_rules(d: &DnsServer, s: &Setup, param: &str, list: &str) -> Restrictions {
    let r = s.rules(&format!("{}{param} = {list}", d.main_cf()));
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    r
}

/// A MAIL FROM (and RCPT) for a stranger.
fn from(sender: &str) -> Facts<'_> {
    Facts {
        sender: Some(sender),
        recipient: Some("alice@example.com"),
        ..stranger()
    }
}

fn forbidden_ok(restriction: &str, target: &str) -> Vec<String> {
    vec![
        format!("restriction {restriction} returns OK for {target}"),
        "this is not allowed for security reasons".to_string(),
        "use DUNNO instead of OK if you want to make an exception".to_string(),
    ]
}

#[test]
fn mx_access_searches_the_mx_hosts_by_name_then_by_address() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let mx = |table: &str| {
        server_rules(
            &d,
            &s,
            "smtpd_sender_restrictions",
            &format!("check_sender_mx_access {table}"),
        )
    };
    // By host name, and by parent domain.
    s.table("hosts", "mx1.spamhost.test REJECT Spam host\n");
    let r = mx("texthash:{dir}/hosts");
    let got = r.check_rcpt(&from("x@spam.test"));
    assert_eq!(
        said(&got),
        "554 5.7.1 <x@spam.test>: Sender address rejected: Spam host"
    );
    assert!(warnings(&got).is_empty(), "{:?}", warnings(&got));
    s.table("parent", "spamhost.test 450 4.7.1 Spam network\n");
    let r = mx("texthash:{dir}/parent");
    assert_eq!(
        said(&r.check_rcpt(&from("x@spam.test"))),
        "450 4.7.1 <x@spam.test>: Sender address rejected: Spam network"
    );
    // By address: the second MX host's, in a CIDR table; an address
    // literal is its own MX host.
    s.table("nets", "192.0.2.22/32 REJECT Listed network\n");
    let r = mx("cidr:{dir}/nets");
    assert_eq!(
        said(&r.check_rcpt(&from("x@spam.test"))),
        "554 5.7.1 <x@spam.test>: Sender address rejected: Listed network"
    );
    assert_eq!(
        said(&r.check_rcpt(&from("x@[192.0.2.22]"))),
        "554 5.7.1 <x@[192.0.2.22]>: Sender address rejected: Listed network"
    );
    assert_eq!(said(&r.check_rcpt(&from("x@good.test"))), "permit");
    // The first key found decides: a DUNNO for the first MX host ends
    // the search before the second is looked at.
    s.table(
        "dunno",
        "mx1.spamhost.test DUNNO\nspamhost.test REJECT Spam network\n",
    );
    let r = mx("texthash:{dir}/dunno");
    assert_eq!(said(&r.check_rcpt(&from("x@spam.test"))), "permit");
    // No MX: the domain is its own mail host, by name and address.
    s.table("own", "a.test REJECT No MX\n");
    let r = mx("texthash:{dir}/own");
    assert_eq!(
        said(&r.check_rcpt(&from("x@a.test"))),
        "554 5.7.1 <x@a.test>: Sender address rejected: No MX"
    );
    s.table("own-net", "192.0.2.10 REJECT\n");
    let r = mx("cidr:{dir}/own-net");
    assert_eq!(
        said(&r.check_rcpt(&from("x@a.test"))),
        "554 5.7.1 <x@a.test>: Sender address rejected: Access denied"
    );
    // The null sender has no domain to look up.
    assert_eq!(said(&r.check_rcpt(&from(""))), "permit");
}

#[test]
fn mx_access_may_not_say_ok() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table("hosts", "mx.goodhost.test OK\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_mx_access texthash:{dir}/hosts",
    );
    let got = r.check_rcpt(&from("x@good.test"));
    assert_eq!(said(&got), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&got),
        forbidden_ok("check_sender_mx_access", "x@good.test")
    );
    // A numeric result is a permit too; DUNNO is the way to an exception.
    s.table("hosts", "mx.goodhost.test 200\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_mx_access texthash:{dir}/hosts, reject",
    );
    assert_eq!(
        said(&r.check_rcpt(&from("x@good.test"))),
        "451 4.3.5 Server configuration error"
    );
    s.table("hosts", "mx.goodhost.test DUNNO\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_mx_access texthash:{dir}/hosts, reject",
    );
    assert_eq!(
        said(&r.check_rcpt(&from("x@good.test"))),
        "554 5.7.1 <x@good.test>: Sender address rejected: Access denied"
    );
}

#[test]
fn mx_access_skips_what_the_dns_cannot_answer() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table("hosts", "spamhost.test REJECT\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_mx_access texthash:{dir}/hosts",
    );
    // NXDOMAIN: the name is its own MX host, which has no address.
    let got = r.check_rcpt(&from("x@none.test"));
    assert_eq!(said(&got), "permit");
    assert_eq!(
        warnings(&got),
        vec![
            "Unable to look up MX host none.test for Sender address x@none.test: \
             Name or service not known"
        ]
    );
    // An MX host without an address.
    let got = r.check_rcpt(&from("x@mx.test"));
    assert_eq!(said(&got), "permit");
    assert_eq!(
        warnings(&got),
        vec![
            "Unable to look up MX host mail.mx.test for Sender address x@mx.test: \
             Name or service not known"
        ]
    );
    // The null MX: quietly skipped.
    let got = r.check_rcpt(&from("x@nullmx.test"));
    assert_eq!(said(&got), "permit");
    assert!(warnings(&got).is_empty(), "{:?}", warnings(&got));
    // A temporary failure (dnsmasq refuses names outside .test): skipped
    // with a warning, not deferred.
    let got = r.check_rcpt(&from("x@example.org"));
    assert_eq!(said(&got), "permit");
    assert_eq!(
        warnings(&got),
        vec!["Unable to look up MX host for example.org: Host not found, try again"]
    );
}

#[test]
fn a_access_searches_the_addresses_only() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let client = |name: &'static str| Facts {
        recipient: Some("alice@example.com"),
        ..Facts::new(Some("192.0.2.1".parse().unwrap()), name, name)
    };
    // The IPv6 address of the client's name, in a CIDR table.
    s.table("nets", "2001:db8::/32 REJECT IPv6 network\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_client_restrictions",
        "check_client_a_access cidr:{dir}/nets",
    );
    assert_eq!(
        said(&r.check_rcpt(&client("mx2.spamhost.test"))),
        "554 5.7.1 <mx2.spamhost.test[192.0.2.1]>: Client host rejected: IPv6 network"
    );
    assert_eq!(said(&r.check_rcpt(&client("mx1.spamhost.test"))), "permit");
    // An address literal is checked as its address.
    let r6 = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_a_access cidr:{dir}/nets",
    );
    assert_eq!(
        said(&r6.check_rcpt(&from("x@[IPv6:2001:DB8::5]"))),
        "554 5.7.1 <x@[IPv6:2001:DB8::5]>: Sender address rejected: IPv6 network"
    );
    assert_eq!(
        said(&r6.check_rcpt(&from("x@[IPv6:2001:db9::5]"))),
        "permit"
    );
    // No name, or a name without addresses: nothing to check, no warning.
    let got = r.check_rcpt(&client("unknown"));
    assert_eq!(said(&got), "permit");
    let got = r.check_rcpt(&client("none.test"));
    assert_eq!(said(&got), "permit");
    assert!(warnings(&got).is_empty(), "{:?}", warnings(&got));
    // Host names are not searched, only addresses (with their shorter
    // forms, as access(5) says).
    s.table(
        "hosts",
        "mx2.spamhost.test REJECT by name\nspamhost.test REJECT by parent\n192.0.2 REJECT Listed net\n",
    );
    let r = server_rules(
        &d,
        &s,
        "smtpd_helo_restrictions",
        "check_helo_a_access texthash:{dir}/hosts",
    );
    let helo = |h: &'static str| Facts {
        helo: Some(h),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&helo("mx2.spamhost.test"))),
        "554 5.7.1 <mx2.spamhost.test>: Helo command rejected: Listed net"
    );
    assert_eq!(
        said(&r.check_rcpt(&helo("[192.0.2.99]"))),
        "554 5.7.1 <[192.0.2.99]>: Helo command rejected: Listed net"
    );
    // The first address found decides (DUNNO included); OK is refused.
    s.table("nets", "192.0.2.22 DUNNO\n2001:db8::/32 REJECT\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_client_restrictions",
        "check_client_a_access cidr:{dir}/nets",
    );
    assert_eq!(said(&r.check_rcpt(&client("mx2.spamhost.test"))), "permit");
    s.table("nets", "192.0.2.0/24 OK\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_client_restrictions",
        "check_client_a_access cidr:{dir}/nets",
    );
    let got = r.check_rcpt(&client("mx1.spamhost.test"));
    assert_eq!(said(&got), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&got),
        forbidden_ok("check_client_a_access", "mx1.spamhost.test")
    );
    // With inet_protocols = ipv4, no AAAA lookup.
    s.table("nets", "2001:db8::/32 REJECT IPv6 network\n");
    let r = s.rules(&format!(
        "{}inet_protocols = ipv4\n\
         smtpd_client_restrictions = check_client_a_access cidr:{{dir}}/nets",
        d.main_cf()
    ));
    assert_eq!(said(&r.check_rcpt(&client("mx2.spamhost.test"))), "permit");
}

#[test]
fn ns_access_searches_the_name_servers_of_the_nearest_domain_with_some() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table(
        "hosts",
        "ns1.nshost.test REJECT Bad DNS\nns2.nshost.test REJECT Bad DNS\n",
    );
    let r = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_ns_access texthash:{dir}/hosts",
    );
    assert_eq!(
        said(&r.check_rcpt(&from("x@ns.test"))),
        "554 5.7.1 <x@ns.test>: Sender address rejected: Bad DNS"
    );
    // No NS records: the parent domains', nearest first.
    assert_eq!(
        said(&r.check_rcpt(&from("x@deep.sub.ns.test"))),
        "554 5.7.1 <x@deep.sub.ns.test>: Sender address rejected: Bad DNS"
    );
    // No name servers anywhere: skipped with a warning naming the address.
    let got = r.check_rcpt(&from("x@none.test"));
    assert_eq!(said(&got), "permit");
    assert_eq!(
        warnings(&got),
        vec!["Unable to look up NS host for x@none.test: Host not found"]
    );
    // A temporary failure: skipped with a warning naming the domain.
    let got = r.check_rcpt(&from("x@example.org"));
    assert_eq!(said(&got), "permit");
    assert_eq!(
        warnings(&got),
        vec!["Unable to look up NS host for example.org: Host not found, try again"]
    );
    // Address literals have no name servers.
    assert_eq!(said(&r.check_rcpt(&from("x@[192.0.2.41]"))), "permit");

    // By address; a host name's DUNNO comes before its addresses.
    s.table("nets", "192.0.2.42 REJECT Listed DNS server\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_ns_access cidr:{dir}/nets",
    );
    assert_eq!(
        said(&r.check_rcpt(&from("x@ns.test"))),
        "554 5.7.1 <x@ns.test>: Sender address rejected: Listed DNS server"
    );
    s.table(
        "dunno",
        "ns1.nshost.test DUNNO\nns2.nshost.test DUNNO\n192.0.2.41 REJECT\n192.0.2.42 REJECT\n",
    );
    let r = server_rules(
        &d,
        &s,
        "smtpd_sender_restrictions",
        "check_sender_ns_access texthash:{dir}/dunno",
    );
    assert_eq!(said(&r.check_rcpt(&from("x@ns.test"))), "permit");

    // The reverse client name and the recipient domain; OK is refused.
    let r = server_rules(
        &d,
        &s,
        "smtpd_client_restrictions",
        "check_reverse_client_hostname_ns_access texthash:{dir}/hosts",
    );
    let f = Facts {
        recipient: Some("alice@example.com"),
        ..Facts::new(Some("192.0.2.1".parse().unwrap()), "unknown", "ns.test")
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 <ns.test>: Unverified Client host rejected: Bad DNS"
    );
    let r = server_rules(
        &d,
        &s,
        "smtpd_relay_restrictions",
        "check_recipient_ns_access texthash:{dir}/hosts, reject_unauth_destination",
    );
    assert_eq!(
        said(&r.check_rcpt(&rcpt("y@sub.ns.test"))),
        "554 5.7.1 <y@sub.ns.test>: Recipient address rejected: Bad DNS"
    );
    s.table("ok", "nshost.test OK\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_relay_restrictions",
        "check_recipient_ns_access texthash:{dir}/ok, reject_unauth_destination",
    );
    let got = r.check_rcpt(&rcpt("y@ns.test"));
    assert_eq!(said(&got), "451 4.3.5 Server configuration error");
    assert_eq!(
        warnings(&got),
        forbidden_ok("check_recipient_ns_access", "y@ns.test")
    );
}

#[test]
fn mx_access_for_client_and_helo_names() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table("hosts", "mx1.spamhost.test REJECT Spam host\n");
    let r = server_rules(
        &d,
        &s,
        "smtpd_client_restrictions",
        "check_client_mx_access texthash:{dir}/hosts",
    );
    let f = Facts {
        recipient: Some("alice@example.com"),
        ..Facts::new(Some("192.0.2.1".parse().unwrap()), "spam.test", "spam.test")
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 <spam.test[192.0.2.1]>: Client host rejected: Spam host"
    );
    let r = server_rules(
        &d,
        &s,
        "smtpd_helo_restrictions",
        "check_helo_mx_access texthash:{dir}/hosts",
    );
    let f = Facts {
        helo: Some("spam.test"),
        ..rcpt("alice@example.com")
    };
    assert_eq!(
        said(&r.check_rcpt(&f)),
        "554 5.7.1 <spam.test>: Helo command rejected: Spam host"
    );
    // With smtpd_delay_reject = no, at the command itself.
    let r = s.rules(&format!(
        "{}smtpd_delay_reject = no\n\
         smtpd_helo_restrictions = check_helo_mx_access texthash:{{dir}}/hosts",
        d.main_cf()
    ));
    assert_eq!(
        said(&r.check(Stage::Helo, &f)),
        "554 5.7.1 <spam.test>: Helo command rejected: Spam host"
    );
}

// ----- permit_mx_backup, against the same dnsmasq -----

/// Rules with `list` as `smtpd_relay_restrictions` (and `extra` lines).
fn mx_backup_rules(d: &DnsServer, s: &Setup, extra: &str, list: &str) -> Restrictions {
    let r = s.rules(&format!(
        "{}{extra}\nsmtpd_relay_restrictions = {list}",
        d.main_cf()
    ));
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    r
}

const RELAY_DENIED: &str = "554 5.7.1 <{}>: Relay access denied";

fn relay_denied(rcpt: &str) -> String {
    RELAY_DENIED.replace("{}", rcpt)
}

#[test]
fn mx_backup_permits_a_backup_mx_never_a_primary() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = mx_backup_rules(
        &d,
        &s,
        "relay_domains = relayed.example",
        "permit_mx_backup, reject_unauth_destination",
    );
    // The DNS makes it a backup restriction: the resolver exists at load
    // and the decision may block.
    assert!(r.may_block());
    assert!(!s
        .rules("smtpd_relay_restrictions = reject_unauth_destination")
        .may_block());
    let check = |to: &str| {
        let d = r.check_rcpt(&rcpt(to));
        assert!(warnings(&d).is_empty(), "{to}: {:?}", warnings(&d));
        said(&d)
    };
    // 127.0.0.1 (an inet_interfaces address: all) is the backup MX.
    assert_eq!(check("x@backup.test"), "permit");
    assert_eq!(check("X@BACKUP.TEST"), "permit");
    // A backup named in mydestination, whatever its addresses.
    assert_eq!(check("x@byname.test"), "permit");
    // This machine as the primary (though a backup too), or tied with
    // it: mail would loop.
    assert_eq!(check("x@primary.test"), relay_denied("x@primary.test"));
    assert_eq!(check("x@tied.test"), relay_denied("x@tied.test"));
    // Not an MX host of the domain at all; no MX; the null MX.
    assert_eq!(check("x@good.test"), relay_denied("x@good.test"));
    assert_eq!(check("x@a.test"), relay_denied("x@a.test"));
    assert_eq!(check("x@none.test"), relay_denied("x@none.test"));
    assert_eq!(check("x@nullmx.test"), relay_denied("x@nullmx.test"));
    // An address literal, and a source route through a backup domain.
    assert_eq!(check("x@[192.0.2.1]"), relay_denied("x@[192.0.2.1]"));
    assert_eq!(
        check("\"x@elsewhere.example\"@backup.test"),
        relay_denied("\"x@elsewhere.example\"@backup.test")
    );
    // The authorized destinations are permitted without the DNS (these
    // names are outside .test: looking them up would fail).
    assert_eq!(check("alice@example.com"), "permit");
    assert_eq!(check("x@relayed.example"), "permit");
    // A backup at an address of proxy_interfaces (a NAT address).
    assert_eq!(check("x@nat.test"), relay_denied("x@nat.test"));
    let nat = mx_backup_rules(
        &d,
        &s,
        "proxy_interfaces = 198.51.100.7",
        "permit_mx_backup, reject_unauth_destination",
    );
    assert_eq!(said(&nat.check_rcpt(&rcpt("x@nat.test"))), "permit");
    // An explicit inet_interfaces list, and proxy_interfaces beside it.
    let listed = mx_backup_rules(
        &d,
        &s,
        "inet_interfaces = 127.0.0.1\nproxy_interfaces = 198.51.100.7",
        "permit_mx_backup, reject_unauth_destination",
    );
    assert_eq!(said(&listed.check_rcpt(&rcpt("x@backup.test"))), "permit");
    assert_eq!(said(&listed.check_rcpt(&rcpt("x@nat.test"))), "permit");
    assert_eq!(
        said(&listed.check_rcpt(&rcpt("x@primary.test"))),
        relay_denied("x@primary.test")
    );
}

#[test]
fn mx_backup_networks_limit_the_primary_mx_hosts() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let rules = |networks: &str| {
        mx_backup_rules(
            &d,
            &s,
            &format!("permit_mx_backup_networks = {networks}"),
            "permit_mx_backup, reject_unauth_destination",
        )
    };
    // Both primaries (192.0.2.51, .52) in the list.
    let r = rules("192.0.2.48/28");
    assert_eq!(said(&r.check_rcpt(&rcpt("x@backup.test"))), "permit");
    // Every address of every primary must be: .52 is not.
    let r = rules("192.0.2.51");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("x@backup.test"))),
        relay_denied("x@backup.test")
    );
    // A network that holds only the backup (this machine).
    let r = rules("127.0.0.0/8");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("x@backup.test"))),
        relay_denied("x@backup.test")
    );
    // By host name, with its parent domains
    // (parent_domain_matches_subdomains names permit_mx_backup_networks).
    let r = rules("primary.test");
    assert_eq!(said(&r.check_rcpt(&rcpt("x@backup.test"))), "permit");
    // The limit does not apply to the authorized destinations, nor to a
    // backup named in mydestination whose primary is listed.
    let r = rules("192.0.2.51");
    assert_eq!(said(&r.check_rcpt(&rcpt("alice@example.com"))), "permit");
    assert_eq!(said(&r.check_rcpt(&rcpt("x@byname.test"))), "permit");
}

#[test]
fn mx_backup_turns_a_later_reject_into_a_deferral_when_the_dns_fails() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = mx_backup_rules(&d, &s, "", "permit_mx_backup, reject_unauth_destination");
    // The MX lookup fails (names outside .test are refused): the reject
    // that follows becomes Postfix's 450 4.4.4.
    let got = r.check_rcpt(&rcpt("x@example.org"));
    assert_eq!(
        said(&got),
        "450 4.4.4 <x@example.org>: Recipient address rejected: Unable to look up \
         mail exchanger information: Host not found, try again"
    );
    assert!(warnings(&got).is_empty(), "{:?}", warnings(&got));
    // A primary that cannot be looked up does not keep this machine
    // from being the backup.
    assert_eq!(said(&r.check_rcpt(&rcpt("x@lame.test"))), "permit");
    assert_eq!(said(&r.check_rcpt(&rcpt("x@lameprimary.test"))), "permit");
    // ... but with permit_mx_backup_networks it cannot be verified.
    let limited = mx_backup_rules(
        &d,
        &s,
        "permit_mx_backup_networks = 192.0.2.0/24",
        "permit_mx_backup, reject_unauth_destination",
    );
    assert_eq!(
        said(&limited.check_rcpt(&rcpt("x@lame.test"))),
        "450 4.4.4 <x@lame.test>: Recipient address rejected: Unable to look up \
         mail exchanger host mail.mx.test: Name or service not known"
    );
    assert_eq!(
        said(&limited.check_rcpt(&rcpt("x@lameprimary.test"))),
        "450 4.4.4 <x@lameprimary.test>: Recipient address rejected: Unable to look up \
         mail exchanger host mx.example.org: Temporary failure in name resolution"
    );
    // When a later restriction permits, the failure changes nothing.
    s.table("ok", "example.org OK\n");
    let r = mx_backup_rules(
        &d,
        &s,
        "",
        "permit_mx_backup, check_recipient_access texthash:{dir}/ok, \
         reject_unauth_destination",
    );
    assert_eq!(said(&r.check_rcpt(&rcpt("x@example.org"))), "permit");
}

#[test]
fn mx_backup_permits_are_logged_when_asked() {
    let d = dns_or_skip!();
    let s = Setup::new();
    let r = mx_backup_rules(
        &d,
        &s,
        "smtpd_log_access_permit_actions = permit_mx_backup",
        "permit_mx_backup, reject_unauth_destination",
    );
    assert_eq!(
        events(&r.check_rcpt(&rcpt("x@backup.test"))),
        vec![
            "NOQUEUE: permit: RCPT from client.example[192.0.2.1]: action=permit_mx_backup \
              for Recipient address=x@backup.test ; from=<sender@example.net> \
              to=<x@backup.test> proto=ESMTP helo=<mx.client.example>"
        ]
    );
    assert!(events(&r.check_rcpt(&rcpt("x@primary.test"))).is_empty());
}

/// An access table's result may name permit_mx_backup though no list
/// does: the resolver and this machine's addresses are made then.
#[test]
fn mx_backup_named_by_an_access_table_result() {
    let d = dns_or_skip!();
    let s = Setup::new();
    s.table(
        "rcpt",
        "backup.test permit_mx_backup\nprimary.test permit_mx_backup\n",
    );
    let r = mx_backup_rules(
        &d,
        &s,
        "",
        "check_recipient_access texthash:{dir}/rcpt, reject_unauth_destination",
    );
    assert_eq!(said(&r.check_rcpt(&rcpt("x@backup.test"))), "permit");
    assert_eq!(
        said(&r.check_rcpt(&rcpt("x@primary.test"))),
        relay_denied("x@primary.test")
    );
}
