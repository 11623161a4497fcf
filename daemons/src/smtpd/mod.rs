//! smtpd(8): the SMTP server. [`session`] is the protocol (no I/O),
//! [`server`] the tokio shell around it; the access restrictions are the
//! session's [`session::Gate`]. The client limits Postfix keeps in
//! anvil(8) live in this process ([`anvil`]): one process serves every
//! connection of its master.cf service.

pub mod anvil;
pub mod gate;
pub mod hosts;
pub mod restrict;
pub mod server;
pub mod session;
pub mod standalone;

use std::sync::Arc;
use std::time::Duration;

use libmail::address::networks::NetworkList;
use libmail::address::resolve::Resolver;
use libmail::config::params::Params;
use libmail::service::{bool_param, num_param, time_param, Service};

use libmail::table::search::Maps;
use session::{CommandList, Controls, Settings, Shared};

/// smtpd's main: configuration and restrictions first (any error is
/// fatal before master hears "ready", so master throttles a broken
/// configuration instead of restarting it in a loop), then the server.
pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-S") {
        std::process::exit(stand_alone(&args));
    }
    let svc = Service::start("smtpd");
    let p = &svc.params;
    let restrictions = restrictions(p);
    let level = libmail::tls::Level::from_params(p).unwrap_or_else(|e| libmail::log::fatal(&e));
    let wrapper = bool_param(p, "smtpd_tls_wrappermode", false);
    // TLS is mandatory under encrypt and in wrapper mode: the
    // smtpd_tls_mandatory_* parameters then apply.
    let tls = if level != libmail::tls::Level::None || wrapper {
        match libmail::tls::server_config(p, wrapper || level == libmail::tls::Level::Encrypt) {
            Ok(Some(c)) => Some(tokio_rustls::TlsAcceptor::from(c)),
            Ok(None) => {
                libmail::warning!("No server certs available. TLS won't be enabled");
                None
            }
            Err(e) => {
                libmail::warning!("{e}: disabling TLS support");
                None
            }
        }
    } else {
        None
    };
    let mandatory = wrapper || level == libmail::tls::Level::Encrypt;
    if bool_param(p, "smtpd_tls_req_ccert", false) && !mandatory {
        libmail::warning!("Can't require client certs unless TLS is required");
    }
    let ccerts = match &tls {
        Some(_)
            if bool_param(p, "smtpd_tls_ask_ccert", false)
                || (mandatory && bool_param(p, "smtpd_tls_req_ccert", false)) =>
        {
            // server_config read the same parameters: no error here.
            libmail::tls::ClientCerts::from_params(p).ok()
        }
        _ => None,
    };
    let mut settings = Settings::from_params(p);
    settings.tls.level = level;
    settings.tls.ask_ccert = ccerts.is_some();
    settings.tls.available = tls.is_some();
    let bare_lf_exclusions = bare_lf_exclusions(p, settings.bare_lf);
    let ipc_timeout = Duration::from_secs(time_param(p, "ipc_timeout", 3600).max(1));
    let shell = server::Shell {
        settings: Arc::new(settings),
        tls,
        ccerts,
        wrapper,
        starttls_timeout: Duration::from_secs(time_param(p, "smtpd_starttls_timeout", 300).max(1)),
        gate: Arc::new(gate::RestrictionGate(Arc::new(restrictions))),
        timeout: Duration::from_secs(time_param(p, "smtpd_timeout", 300).max(1)),
        line_limit: num_param(p, "line_length_limit", 2048).clamp(512, 1 << 20) as usize,
        peername_lookup: bool_param(p, "smtpd_peername_lookup", true),
        hosts: hosts::Hosts::system(),
        ipc_timeout,
        cleanups: server::CleanupPool::new(svc.layout.root().to_path_buf(), ipc_timeout),
        sasl: sasl_config(p, svc.layout.root()),
        limits: client_limits(p, &svc.name),
        bare_lf_exclusions,
    };
    server::run(svc, shell);
}

/// The anvil(8) limits, kept in this process (None: all off).
fn client_limits(p: &Params, service: &str) -> Option<Arc<anvil::ClientLimits>> {
    let l =
        anvil::ClientLimits::from_params(p, service).unwrap_or_else(|e| libmail::log::fatal(&e));
    if let Some(l) = &l {
        for w in l.warnings() {
            libmail::warning!("{w}");
        }
    }
    l.map(Arc::new)
}

/// `smtpd_forbid_bare_newline_exclusions`, needed only under `reject`.
fn bare_lf_exclusions(p: &Params, mode: session::BareLf) -> Option<Arc<NetworkList>> {
    if mode != session::BareLf::Reject {
        return None;
    }
    let l = NetworkList::from_param(p, "smtpd_forbid_bare_newline_exclusions")
        .unwrap_or_else(|e| libmail::log::fatal(&e.to_string()));
    for w in l.warnings() {
        libmail::warning!("{w}");
    }
    Some(Arc::new(l))
}

/// The restrictions, or a fatal error naming what is wrong.
fn restrictions(p: &Params) -> restrict::Restrictions {
    let resolver =
        Arc::new(Resolver::new(p).unwrap_or_else(|e| libmail::log::fatal(&format!("{e}"))));
    let r = restrict::Restrictions::from_params(p, resolver)
        .unwrap_or_else(|e| libmail::log::fatal(&e));
    for w in r.warnings() {
        libmail::warning!("{w}");
    }
    r
}

/// `smtpd -S [-c DIR]`: one session on standard input and output
/// (`sendmail -bs`), not started by master.
fn stand_alone(args: &[String]) -> i32 {
    let dir = standalone::config_dir(args);
    let params = match Params::load(&dir.to_string_lossy()) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("smtpd: fatal: {}", d.postfix_located());
            return 1;
        }
    };
    if let Err(e) = libmail::log::init("smtpd", &params, false) {
        eprintln!("smtpd: fatal: {e}");
        return 1;
    }
    let gate = Arc::new(gate::RestrictionGate(Arc::new(restrictions(&params))));
    let mut settings = Settings::from_params(&params);
    // As Postfix: no XCLIENT or XFORWARD in stand-alone mode.
    settings.controls.xclient_hosts = None;
    settings.controls.xforward_hosts = None;
    standalone::run(&params, settings, gate)
}

impl Settings {
    /// smtpd's parameters, with Postfix's defaults.
    pub fn from_params(p: &Params) -> Settings {
        let v = |n: &str| p.value(n).unwrap_or_default();
        let size = v("message_size_limit")
            .trim()
            .parse::<u64>()
            .unwrap_or(10_240_000);
        Settings {
            myhostname: v("myhostname"),
            mail_name: {
                let m = v("mail_name");
                if m.is_empty() {
                    "Postfix".into()
                } else {
                    m
                }
            },
            banner: v("smtpd_banner"),
            message_size_limit: size,
            recipient_limit: num_param(p, "smtpd_recipient_limit", 1000).max(1) as usize,
            soft_error_limit: num_param(p, "smtpd_soft_error_limit", 10).max(0) as usize,
            hard_error_limit: num_param(p, "smtpd_hard_error_limit", 20).max(1) as usize,
            error_sleep: std::time::Duration::from_secs(time_param(p, "smtpd_error_sleep_time", 1)),
            junk_command_limit: num_param(p, "smtpd_junk_command_limit", 100).max(1) as usize,
            helo_required: bool_param(p, "smtpd_helo_required", false),
            disable_vrfy: bool_param(p, "disable_vrfy_command", false),
            smtputf8: bool_param(p, "smtputf8_enable", true),
            discard_ehlo: libmail::config::params::split_list(&v("smtpd_discard_ehlo_keywords"))
                .into_iter()
                .map(|s| s.to_string())
                .collect(),
            soft_bounce: bool_param(p, "soft_bounce", false),
            tls: session::TlsPolicy {
                level: libmail::tls::Level::from_params(p).unwrap_or_default(),
                available: false,
                loglevel: num_param(p, "smtpd_tls_loglevel", 0),
                received_header: bool_param(p, "smtpd_tls_received_header", false),
                ask_ccert: bool_param(p, "smtpd_tls_ask_ccert", false),
            },
            auth_tls_only: bool_param(p, "smtpd_tls_auth_only", false),
            broken_sasl_clients: bool_param(p, "broken_sasl_auth_clients", false),
            sasl_authenticated_header: bool_param(p, "smtpd_sasl_authenticated_header", false),
            bare_lf: {
                let b = v("smtpd_forbid_bare_newline");
                session::BareLf::parse(&b).unwrap_or_else(|| {
                    libmail::log::fatal(&format!(
                        "invalid smtpd_forbid_bare_newline value: \"{b}\" \
                         (expected no, normalize, yes or reject)"
                    ))
                })
            },
            bare_lf_reject_code: num_param(p, "smtpd_forbid_bare_newline_reject_code", 550)
                .clamp(400, 599) as u16,
            content_filter: v("content_filter").trim().to_string(),
            controls: controls(p),
        }
    }
}

/// XCLIENT, XFORWARD and the smaller controls; a list or table that
/// cannot be opened is fatal.
fn controls(p: &Params) -> Controls {
    let v = |n: &str| p.value(n).unwrap_or_default();
    let hosts = |name: &str| {
        let l = NetworkList::from_param(p, name)
            .unwrap_or_else(|e| libmail::log::fatal(&e.to_string()));
        for w in l.warnings() {
            libmail::warning!("{w}");
        }
        (!l.is_empty()).then(|| Shared(Arc::new(l)))
    };
    let forbidden = CommandList::parse("smtpd_forbidden_commands", &v("smtpd_forbidden_commands"))
        .unwrap_or_else(|e| libmail::log::fatal(&e.to_string()));
    let discard_maps = Maps::from_param(p, "smtpd_discard_ehlo_keyword_address_maps")
        .unwrap_or_else(|e| libmail::log::fatal(&e));
    let footer_maps =
        Maps::from_param(p, "smtpd_reject_footer_maps").unwrap_or_else(|e| libmail::log::fatal(&e));
    Controls {
        xclient_hosts: hosts("smtpd_authorized_xclient_hosts"),
        xforward_hosts: hosts("smtpd_authorized_xforward_hosts"),
        forbidden_commands: Shared(Arc::new(forbidden)),
        // A raw parameter: its $names are the session's, expanded per reply.
        reject_footer: p
            .raw("smtpd_reject_footer")
            .unwrap_or_default()
            .trim()
            .to_string(),
        reject_footer_maps: footer_maps.map(|m| Shared(Arc::new(m))),
        discard_ehlo_maps: discard_maps.map(|m| Shared(Arc::new(m))),
        recipient_overshoot_limit: num_param(p, "smtpd_recipient_overshoot_limit", 1000).max(0)
            as usize,
        forbid_unauth_pipelining: bool_param(p, "smtpd_forbid_unauth_pipelining", false),
        strict_rfc821_envelopes: bool_param(p, "strict_rfc821_envelopes", false),
        cleanup_flags: libmail::ipc::cleanup::receive_override_flags(&v(
            "receive_override_options",
        )),
        ipv6: libmail::config::host::protocols(&v("inet_protocols"))
            .map(|(_, v6)| v6)
            .unwrap_or(false),
    }
}

/// How to reach the SASL server, when `smtpd_sasl_auth_enable = yes`:
/// only Dovecot's protocol (`smtpd_sasl_type = dovecot`); Cyrus, Postfix's
/// default type, is refused at start with a message that says what to set.
fn sasl_config(p: &Params, queue_directory: &std::path::Path) -> Option<server::SaslConfig> {
    if !bool_param(p, "smtpd_sasl_auth_enable", false) {
        return None;
    }
    let v = |n: &str| p.value(n).unwrap_or_default();
    let kind = v("smtpd_sasl_type");
    if kind != "dovecot" {
        libmail::log::fatal(&format!(
            "SASL server implementation {kind:?} is not supported: set smtpd_sasl_type = dovecot \
             (and smtpd_sasl_path to Dovecot's auth socket)"
        ));
    }
    let endpoint = libmail::sasl::dovecot::Endpoint::parse(&v("smtpd_sasl_path"), queue_directory)
        .unwrap_or_else(|e| libmail::log::fatal(&format!("smtpd_sasl_path: {e}")));
    let policy = libmail::sasl::SecurityPolicy::parse(
        &v("smtpd_sasl_security_options"),
        &v("smtpd_sasl_tls_security_options"),
    )
    .unwrap_or_else(|e| libmail::log::fatal(&format!("smtpd_sasl_security_options: {e:?}")));
    Some(server::SaslConfig { endpoint, policy })
}

#[cfg(test)]
mod tests;
