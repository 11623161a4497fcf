//! `check_policy_service`: Postfix's policy delegation (SMTPD_POLICY_README).
//!
//! A request is `name=value` lines ended by an empty line; the reply is
//! `action=...` and an empty line. The action is then evaluated exactly as
//! an access(5) table result. Servers are `inet:host:port` or `unix:path`
//! (`local:path`; a relative path is relative to `queue_directory`), or the
//! Postfix 3.7 form `{ inet:host:port, name=value, ... }` with per-service
//! `timeout`, `max_idle`, `max_ttl`, `try_limit`, `retry_delay`,
//! `request_limit`, `default_action` and `policy_context`.
//!
//! The I/O is blocking and bounded: the connect, every write and every
//! read by `smtpd_policy_service_timeout`, reply lines by [`MAX_LINE`],
//! the number of reply attributes by [`MAX_ATTRS`]. Connections are kept
//! (up to [`MAX_POOLED`] per server) and reused while younger than
//! `max_ttl`, idle for less than `max_idle` and under `request_limit`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libmail::config::check::parse_time;
use libmail::config::params::Params;
use libmail::config::registry::TimeUnit;

use super::{value, Cmd, Kind, Tok};

/// Longest reply line accepted, newline included.
pub const MAX_LINE: usize = 4096;
/// Most attributes a reply may hold.
pub const MAX_ATTRS: usize = 64;
/// Most idle connections kept per server.
pub const MAX_POOLED: usize = 8;

/// Where a policy server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Inet(String, u16),
    Unix(PathBuf),
}

/// One policy service, with its settings.
#[derive(Debug, Clone)]
pub struct Service {
    /// The server as configured (`inet:127.0.0.1:10023`): the "table"
    /// name of the access results and warnings, and the pool key.
    pub name: String,
    endpoint: Endpoint,
    timeout: Duration,
    max_idle: Duration,
    max_ttl: Duration,
    try_limit: u32,
    retry_delay: Duration,
    request_limit: u64,
    pub default_action: String,
    pub policy_context: String,
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

struct Conn {
    io: BufReader<Stream>,
    created: Instant,
    last_used: Instant,
    requests: u64,
}

/// The policy services of one configuration and their open connections.
#[derive(Default)]
pub struct Policy {
    services: HashMap<String, Service>,
    pool: Mutex<HashMap<String, Vec<Conn>>>,
    pub compatibility_level: String,
    pub mail_version: String,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn time(params: &Params, name: &str) -> Result<Duration, String> {
    let v = value(params, name)?;
    time_value(name, &v)
}

fn time_value(name: &str, v: &str) -> Result<Duration, String> {
    parse_time(v, TimeUnit::Second)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("bad time configuration: {name} = {v}"))
}

fn count_value(name: &str, v: &str) -> Result<u64, String> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| format!("bad numerical configuration: {name} = {v}"))
}

/// The inside of a `{ ... }` value, or the value itself.
fn unbrace(v: &str) -> &str {
    let t = v.trim();
    if t.len() >= 2 && t.starts_with('{') && t.ends_with('}') {
        t[1..t.len() - 1].trim()
    } else {
        t
    }
}

/// Splits on commas outside braces.
fn split_commas(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in v.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

impl Service {
    /// A `check_policy_service` argument, with the `smtpd_policy_service_*`
    /// defaults.
    pub fn parse(arg: &str, params: &Params) -> Result<Service, String> {
        let (server, options) = if arg.trim_start().starts_with('{') {
            let items = split_commas(unbrace(arg));
            match items.split_first() {
                Some((s, rest)) => (s.to_string(), rest.to_vec()),
                None => return Err(format!("check_policy_service: empty server in {arg}")),
            }
        } else {
            (arg.to_string(), Vec::new())
        };
        let endpoint = match server.split_once(':') {
            Some(("inet", rest)) => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| format!("policy service {server}: need host:port"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("policy service {server}: bad port \"{port}\""))?;
                if host.is_empty() {
                    return Err(format!("policy service {server}: need host:port"));
                }
                Endpoint::Inet(host.to_string(), port)
            }
            Some(("unix" | "local", path)) if !path.is_empty() => {
                // smtpd works in queue_directory (libmail::service): a
                // relative path is relative to it, jailed or not.
                Endpoint::Unix(PathBuf::from(path))
            }
            _ => {
                return Err(format!(
                    "invalid transport name in policy service: {server} \
                     (need inet:host:port or unix:pathname)"
                ))
            }
        };
        let limit =
            |name: &str| -> Result<u64, String> { count_value(name, &value(params, name)?) };
        let mut s = Service {
            name: server.clone(),
            endpoint,
            timeout: time(params, "smtpd_policy_service_timeout")?,
            max_idle: time(params, "smtpd_policy_service_max_idle")?,
            max_ttl: time(params, "smtpd_policy_service_max_ttl")?,
            try_limit: limit("smtpd_policy_service_try_limit")? as u32,
            retry_delay: time(params, "smtpd_policy_service_retry_delay")?,
            request_limit: limit("smtpd_policy_service_request_limit")?,
            default_action: value(params, "smtpd_policy_service_default_action")?,
            policy_context: value(params, "smtpd_policy_service_policy_context")?,
        };
        for opt in options {
            let (n, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("policy service {arg}: need name=value, not \"{opt}\""))?;
            let (n, v) = (n.trim(), unbrace(v));
            match n {
                "timeout" => s.timeout = time_value(n, v)?,
                "max_idle" => s.max_idle = time_value(n, v)?,
                "max_ttl" => s.max_ttl = time_value(n, v)?,
                "retry_delay" => s.retry_delay = time_value(n, v)?,
                "try_limit" => s.try_limit = count_value(n, v)? as u32,
                "request_limit" => s.request_limit = count_value(n, v)?,
                "default_action" => s.default_action = v.to_string(),
                "policy_context" => s.policy_context = v.to_string(),
                _ => return Err(format!("policy service {arg}: unknown attribute \"{n}\"")),
            }
        }
        if s.timeout.is_zero() {
            s.timeout = Duration::from_secs(1);
        }
        s.try_limit = s.try_limit.max(1);
        Ok(s)
    }

    fn connect(&self) -> std::io::Result<Stream> {
        let stream = match &self.endpoint {
            Endpoint::Inet(host, port) => {
                let mut last = None;
                let mut found = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, self.timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match found {
                    Some(s) => s,
                    None => {
                        return Err(last.unwrap_or_else(|| {
                            std::io::Error::new(std::io::ErrorKind::NotFound, "host not found")
                        }))
                    }
                };
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Stream::Unix(s)
            }
        };
        Ok(stream)
    }
}

/// One request/reply exchange on `conn`: the `action` value.
/// The whole reply must arrive within `timeout` of the request.
fn exchange(conn: &mut Conn, request: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    conn.io
        .get_mut()
        .write_all(request.as_bytes())
        .and_then(|_| conn.io.get_mut().flush())
        .map_err(|e| format!("write error: {e}"))?;
    let mut action = None;
    let mut attrs = 0;
    loop {
        let mut line = Vec::new();
        let n = (&mut conn.io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("read error: {e}"))?;
        if n == 0 {
            return Err("premature end-of-input".into());
        }
        if line.last() != Some(&b'\n') {
            return Err(format!("reply line longer than {MAX_LINE} bytes"));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err("timeout while reading the reply".into());
        }
        attrs += 1;
        if attrs > MAX_ATTRS {
            return Err(format!("more than {MAX_ATTRS} attributes in reply"));
        }
        let text = String::from_utf8_lossy(&line);
        match text.split_once('=') {
            Some(("action", v)) if action.is_none() => action = Some(v.to_string()),
            Some((n, _)) => return Err(format!("unexpected attribute {n}")),
            None => return Err(format!("missing '=' after attribute name: {text}")),
        }
    }
    conn.requests += 1;
    conn.last_used = Instant::now();
    match action {
        Some(a) if !a.trim().is_empty() => Ok(a),
        _ => Err("missing or empty action attribute".into()),
    }
}

impl Policy {
    /// Whether any list or class names a policy service.
    pub fn configured(&self) -> bool {
        !self.services.is_empty()
    }

    /// Every `check_policy_service` of the lists and classes, parsed.
    pub fn from_lists<'t>(
        lists: impl IntoIterator<Item = &'t [Tok]>,
        params: &Params,
    ) -> Result<Policy, String> {
        let mut services = HashMap::new();
        for list in lists {
            for (i, t) in list.iter().enumerate() {
                if t.kind != Some(Kind::CheckPolicyService) {
                    continue;
                }
                if let Some(arg) = list.get(i + 1).filter(|a| a.text.contains(':')) {
                    if !services.contains_key(&arg.text) {
                        services.insert(arg.text.clone(), Service::parse(&arg.text, params)?);
                    }
                }
            }
        }
        Ok(Policy {
            services,
            pool: Mutex::new(HashMap::new()),
            compatibility_level: value(params, "compatibility_level")?,
            mail_version: value(params, "mail_version")?,
        })
    }

    pub fn service(&self, arg: &str) -> Option<&Service> {
        self.services.get(arg)
    }

    fn take(&self, svc: &Service) -> Option<Conn> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let conns = pool.get_mut(&svc.name)?;
        let now = Instant::now();
        while let Some(c) = conns.pop() {
            if now.duration_since(c.last_used) < svc.max_idle
                && now.duration_since(c.created) < svc.max_ttl
            {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, svc: &Service, conn: Conn) {
        if svc.request_limit > 0 && conn.requests >= svc.request_limit {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let conns = pool.entry(svc.name.clone()).or_default();
        if conns.len() < MAX_POOLED {
            conns.push(conn);
        }
    }

    /// Sends `request` (up to `try_limit` times, `retry_delay` apart) and
    /// returns the action (`None` when every try failed) and the warnings
    /// about the failed tries.
    pub fn query(&self, svc: &Service, request: &str) -> (Option<String>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut attempt = 1;
        while attempt <= svc.try_limit {
            // A kept connection the server closed while it was idle is
            // replaced silently, without counting a try (Postfix's
            // attr_clnt does not warn about EPIPE/ECONNRESET/EOF either).
            if let Some(mut c) = self.take(svc) {
                match exchange(&mut c, request, svc.timeout) {
                    Ok(a) => {
                        self.put(svc, c);
                        return (Some(a), warnings);
                    }
                    Err(_) => continue,
                }
            }
            let result = match svc.connect() {
                Ok(s) => {
                    let now = Instant::now();
                    let mut c = Conn {
                        io: BufReader::new(s),
                        created: now,
                        last_used: now,
                        requests: 0,
                    };
                    match exchange(&mut c, request, svc.timeout) {
                        Ok(a) => {
                            self.put(svc, c);
                            return (Some(a), warnings);
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => format!("connect error: {e}"),
            };
            warnings.push(format!("{}: {result}", svc.name));
            if attempt < svc.try_limit {
                std::thread::sleep(svc.retry_delay);
            }
            attempt += 1;
        }
        warnings.push(format!("problem talking to server {}", svc.name));
        (None, warnings)
    }
}

/// `protocol_state`: the command being answered.
pub fn protocol_state(cmd: Cmd, esmtp: bool) -> &'static str {
    match cmd {
        Cmd::Connect => "CONNECT",
        Cmd::Helo if esmtp => "EHLO",
        Cmd::Helo => "HELO",
        Cmd::Mail => "MAIL",
        Cmd::Rcpt => "RCPT",
        Cmd::Data => "DATA",
        Cmd::EndOfData => "END-OF-MESSAGE",
        Cmd::Etrn => "ETRN",
    }
}

/// Builds a request: attributes in Postfix's order, newlines in values
/// replaced by spaces, ended by an empty line.
pub fn request(attrs: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (n, v) in attrs {
        out.push_str(n);
        out.push('=');
        out.extend(v.chars().map(|c| if c == '\n' { ' ' } else { c }));
        out.push('\n');
    }
    out.push('\n');
    out
}

impl super::Eval<'_, '_> {
    /// The attributes of a request, in Postfix's order.
    fn policy_request(&self, context: &str) -> String {
        let f = self.f;
        let opt = |v: Option<&str>| v.unwrap_or("").to_string();
        let trusted = f.ccert.filter(|c| c.trusted);
        let rcpt_count = if matches!(self.cmd, Cmd::Data | Cmd::EndOfData) {
            f.rcpt_count
        } else {
            0
        };
        let attrs: Vec<(&str, String)> = vec![
            ("request", "smtpd_access_policy".into()),
            ("protocol_state", protocol_state(self.cmd, f.esmtp).into()),
            (
                "protocol_name",
                if f.esmtp { "ESMTP" } else { "SMTP" }.into(),
            ),
            ("client_address", self.addr_text()),
            ("client_name", f.client_name.to_string()),
            (
                "client_port",
                f.client_port
                    .map_or_else(|| "unknown".to_string(), |p| p.to_string()),
            ),
            ("reverse_client_name", f.reverse_name.to_string()),
            (
                "server_address",
                f.server_addr
                    .map_or_else(|| "unknown".to_string(), |a| a.to_canonical().to_string()),
            ),
            (
                "server_port",
                f.server_port
                    .map_or_else(|| "unknown".to_string(), |p| p.to_string()),
            ),
            ("helo_name", opt(f.helo)),
            ("sender", opt(self.sender)),
            ("recipient", opt(self.recipient)),
            ("recipient_count", rcpt_count.to_string()),
            ("queue_id", opt(f.queue_id)),
            ("instance", opt(f.instance)),
            ("size", f.size.to_string()),
            ("etrn_domain", opt(f.etrn_domain)),
            ("stress", if f.stress { "yes" } else { "" }.into()),
            ("sasl_method", opt(f.sasl_method)),
            ("sasl_username", opt(f.sasl_username)),
            ("sasl_sender", opt(f.sasl_sender)),
            // Postfix sends the names only of a verified certificate.
            (
                "ccert_subject",
                trusted.map_or("", |c| &c.subject_cn).into(),
            ),
            ("ccert_issuer", trusted.map_or("", |c| &c.issuer_cn).into()),
            (
                "ccert_fingerprint",
                f.ccert.map_or("", |c| &c.fingerprint).into(),
            ),
            (
                "ccert_pubkey_fingerprint",
                f.ccert.map_or("", |c| &c.pkey_fingerprint).into(),
            ),
            ("encryption_protocol", opt(f.tls_protocol)),
            ("encryption_cipher", opt(f.tls_cipher)),
            ("encryption_keysize", f.tls_keysize.to_string()),
            ("policy_context", context.to_string()),
            (
                "compatibility_level",
                self.r.policy.compatibility_level.clone(),
            ),
            ("mail_version", self.r.policy.mail_version.clone()),
        ];
        request(&attrs)
    }

    /// check_policy_service: ask the server, then evaluate its action (or
    /// the default action when it cannot be asked) as an access result.
    pub(super) fn policy_service(
        &mut self,
        server: &str,
        name: &str,
        what: super::What,
        def: super::DefAcl,
    ) -> super::Res {
        let r = self.r;
        let Some(svc) = r.policy.service(server) else {
            self.warn(format!("policy service {server} was not configured"));
            return Err(self.server_error());
        };
        let req = self.policy_request(&svc.policy_context);
        let (action, warnings) = r.policy.query(svc, &req);
        for w in warnings {
            self.warn(w);
        }
        let action = action.unwrap_or_else(|| svc.default_action.clone());
        self.table_result(&svc.name, &action, "policy query", name, what, def)
    }
}
