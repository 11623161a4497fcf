//! Real peers on loopback for the outbound agents' tests (smtp(8),
//! lmtp(8)): what Facteur's delivery agents talk to.
//!
//! - [`SmtpSink`]: Postfix's `smtp-sink`, options passed through, every
//!   message dumped to a file and counted.
//! - [`Scripted`]: `tests/data/scripted_smtpd.py` (aiosmtpd), a server
//!   whose every reply is chosen by the test ([`ScriptedConfig`]), SMTP or
//!   LMTP, TCP or a UNIX socket, recording each transaction as JSON.
//! - [`Dns`]: dnsmasq serving the test's zone ([`DnsZone`]); `main_cf()`
//!   points Facteur's resolver at it.
//! - [`PostfixRelay`]: a real Postfix (root only) as the relayhost, with
//!   STARTTLS and SASL (through Dovecot) when asked, delivering all it
//!   accepts into one Maildir.
//! - [`DovecotLmtp`]: the Dovecot fixture of `../shared/fixtures/dovecot`
//!   with LMTP on its UNIX socket and on a loopback port.
//!
//! Every peer is a process stopped by PID when dropped (SIGTERM, a bounded
//! wait, SIGKILL), its temporary directory then removed; every wait is
//! bounded and polls for the condition it waits for. A missing package is
//! a panic that says to run `scripts/test.sh`. Several peers can listen on
//! the same port on different loopback addresses (127.0.0.2, 127.0.0.3, ...):
//! that is how MX hosts are told apart when `smtp_tcp_port` is one port
//! ([`free_port_on`]).
#![allow(dead_code)]

// Also included by smtpd_sasl.rs (as its own module): two copies there.
#[allow(clippy::duplicate_mod)]
#[path = "../../../libmail/tests/support/dovecot.rs"]
mod dovecot;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use super::wait_for;

/// How long a peer may take to come up.
const START_SECS: u64 = 20;
/// How long the `wait_*` helpers wait for mail.
pub const WAIT_SECS: u64 = 30;

const FIX: &str = "run scripts/test.sh, which installs it";

// ----- shared plumbing -----

/// Whether the tests run as root (Postfix's master needs it).
pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// A fresh directory (mode 0755: the peers' users must traverse it) under
/// the system's temporary directory, unique in this process. The caller
/// removes it; [`TempDir`] does that when dropped.
pub fn temp_dir(tag: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("facteur-peer-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    dir
}

/// A [`temp_dir`] removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir {
            path: temp_dir(tag),
        }
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A TCP port free on every one of `addrs` now (so that peers on
/// 127.0.0.2 and 127.0.0.3 can share it, as MX hosts with one
/// `smtp_tcp_port` must).
pub fn free_port_on(addrs: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let held: Vec<_> = addrs
            .iter()
            .filter(|a| **a != Ipv4Addr::LOCALHOST)
            .map(|a| TcpListener::bind((*a, port)))
            .collect();
        if held.iter().all(|h| h.is_ok()) {
            return port;
        }
    }
    panic!("no TCP port free on all of {addrs:?} after 50 tries");
}

/// Whether something listens on TCP `addr` (read from /proc/net/tcp: no
/// connection is made, so nothing is counted by the peer).
pub fn tcp_listening(addr: SocketAddrV4) -> bool {
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    );
    let any = format!("{:08X}:{:04X}", 0u32, addr.port());
    fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "0A" && (f[1] == want || f[1] == any)
        })
}

/// A child process stopped by PID on drop: SIGTERM, up to 5 s, SIGKILL.
pub struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    fn new(child: Child, what: &str) -> Proc {
        Proc {
            child: Some(child),
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Panics (with `log`'s text) if the process has exited.
    fn assert_alive(&mut self, log: &Path) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!(
                    "{} exited ({st}) before it was ready:\n{}",
                    self.what,
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A self-signed certificate and its key (openssl CLI), for STARTTLS.
#[derive(Debug, Clone)]
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    /// A new RSA key and a certificate for `cn` (valid one day) in `dir`.
    pub fn generate(dir: &Path, cn: &str) -> TestCert {
        let cert = dir.join(format!("{cn}.crt"));
        let key = dir.join(format!("{cn}.key"));
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={cn}")])
            .args(["-addext", &format!("subjectAltName=DNS:{cn}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("openssl (package openssl): {e}; {FIX}"));
        assert!(out.status.success(), "openssl req: {out:?}");
        // Readable by unprivileged daemons (Postfix's smtpd reads it as root,
        // aiosmtpd as the test user): test keys only.
        chmod(&key, 0o644);
        TestCert { cert, key }
    }
}

/// The files of a directory, sorted by name.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ----- smtp-sink -----

/// Postfix's `smtp-sink` on a loopback address. It runs with `-c` (its
/// counters, read by [`SmtpSink::count`]) and `-d` (one dump file per
/// transaction, read by [`SmtpSink::dumps`]), plus the options given: `-f`/
/// `-r`/`-q`/`-Q` (reject or drop at a command), `-A`, `-w`, `-W`, `-L`
/// (LMTP), `-e`, `-8`, `-E`, `-p`, `-N` (no ESMTP, 8BITMIME, enhanced codes,
/// pipelining, DSN), `-h hostname`, ... (`man 1 smtp-sink`). As root it
/// runs with `-u nobody` unless `-u` is given.
pub struct SmtpSink {
    proc: Proc,
    pub addr: SocketAddrV4,
    pub dir: PathBuf,
    dumps: PathBuf,
    out: PathBuf,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!(
                "smtp-sink {} output:\n{}",
                self.addr,
                fs::read_to_string(&self.out).unwrap_or_default()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One transaction as smtp-sink dumped it (`-d`).
#[derive(Debug, Clone)]
pub struct SinkDump {
    pub path: PathBuf,
    /// `X-Client-Proto`: SMTP, ESMTP or LMTP.
    pub proto: String,
    /// `X-Helo-Args`: the HELO/EHLO/LHLO argument.
    pub helo: Option<String>,
    /// `X-Mail-Args`: `<sender> PARAMS`.
    pub mail: String,
    /// `X-Rcpt-Args`, one per RCPT: `<rcpt> PARAMS`.
    pub rcpts: Vec<String>,
    /// The message as received (dot-unstuffed, LF line ends).
    pub message: String,
}

impl SmtpSink {
    /// On 127.0.0.1, a free port.
    pub fn start(args: &[&str]) -> SmtpSink {
        let port = free_port_on(&[Ipv4Addr::LOCALHOST]);
        SmtpSink::start_at(Ipv4Addr::LOCALHOST, port, args)
    }

    /// On `ip`:`port` (a 127.0.0.0/8 address).
    pub fn start_at(ip: Ipv4Addr, port: u16, args: &[&str]) -> SmtpSink {
        let bin = Path::new("/usr/sbin/smtp-sink");
        assert!(
            bin.exists(),
            "{} is missing (package postfix): {FIX}",
            bin.display()
        );
        assert!(ip.is_loopback(), "peers listen on loopback only, not {ip}");
        let dir = temp_dir("sink");
        let dumps = dir.join("dumps");
        fs::create_dir_all(&dumps).unwrap();
        // smtp-sink writes dumps after dropping privileges.
        chmod(&dumps, 0o777);
        let out = dir.join("output");
        let addr = SocketAddrV4::new(ip, port);
        let mut cmd = Command::new(bin);
        cmd.arg("-c");
        if is_root() && !args.contains(&"-u") {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dumps.display()))
            .args(args)
            .arg(format!("{ip}:{port}"))
            .arg("100")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(Stdio::from(
                File::options().append(true).open(&out).unwrap(),
            ));
        let child = cmd.spawn().expect("run smtp-sink");
        let mut sink = SmtpSink {
            proc: Proc::new(child, &format!("smtp-sink on {addr}")),
            addr,
            dir,
            dumps,
            out,
        };
        let end = Instant::now() + Duration::from_secs(START_SECS);
        while !tcp_listening(addr) {
            sink.proc.assert_alive(&sink.out);
            assert!(
                Instant::now() < end,
                "smtp-sink did not listen on {addr} within {START_SECS}s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sink
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `relayhost` (or a transport's nexthop) naming this sink.
    pub fn relayhost(&self) -> String {
        format!("[{}]:{}", self.addr.ip(), self.addr.port())
    }

    /// smtp-sink's last `-c` counters: (sessions, QUITs, messages).
    /// A message counts once its final dot was read.
    pub fn counters(&self) -> (u64, u64, u64) {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let last = text
            .split(['\r', '\n'])
            .rfind(|l| l.contains("mesg="))
            .unwrap_or("");
        let field = |k: &str| {
            last.split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.parse().ok())
                .unwrap_or(0)
        };
        (field("sess="), field("quit="), field("mesg="))
    }

    /// Messages received (final dot seen).
    pub fn count(&self) -> u64 {
        self.counters().2
    }

    /// Waits (bounded) until `n` messages were received.
    pub fn wait_count(&self, n: u64) {
        wait_for(
            WAIT_SECS,
            &format!("{n} messages at smtp-sink {}", self.addr),
            || self.count() >= n,
        );
    }

    /// The dump files, parsed, oldest name first. A dump is created at MAIL
    /// time: call this after [`SmtpSink::wait_count`] to see whole messages.
    pub fn dumps(&self) -> Vec<SinkDump> {
        let mut paths: Vec<(std::time::SystemTime, PathBuf)> = files_in(&self.dumps)
            .into_iter()
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|(_, p)| parse_dump(&p))
            .collect()
    }

    /// Waits for `n` messages; returns the dumps.
    pub fn wait_messages(&self, n: u64) -> Vec<SinkDump> {
        self.wait_count(n);
        self.dumps()
    }
}

fn parse_dump(path: &Path) -> Option<SinkDump> {
    let text = String::from_utf8_lossy(&fs::read(path).ok()?).into_owned();
    let mut d = SinkDump {
        path: path.to_path_buf(),
        proto: String::new(),
        helo: None,
        mail: String::new(),
        rcpts: Vec::new(),
        message: String::new(),
    };
    let mut rest = text.as_str();
    loop {
        let (line, tail) = rest.split_once('\n')?;
        rest = tail;
        if let Some(v) = line.strip_prefix("X-Client-Proto: ") {
            d.proto = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Helo-Args: ") {
            d.helo = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            d.mail = v.to_string();
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            d.rcpts.push(v.to_string());
        } else if line.starts_with("Received: ") {
            // Its two continuation lines end smtp-sink's own headers.
            for _ in 0..2 {
                rest = rest.split_once('\n')?.1;
            }
            break;
        }
    }
    // smtp-sink appends an empty line after the message.
    d.message = rest.strip_suffix('\n').unwrap_or(rest).to_string();
    Some(d)
}

// ----- JSON (the scripted server's configuration and records) -----

/// `null` read as the type's default (Python writes `None` for what is not
/// known yet).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `data_b64` decoded.
fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    Ok(base64_decode(s.as_deref().unwrap_or_default()))
}

/// `lmtp_replies`: `[{"rcpt": ..., "reply": ...}, ...]` as pairs.
fn lmtp_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    #[derive(Deserialize)]
    struct Reply {
        rcpt: String,
        reply: String,
    }
    let v: Vec<Reply> = Vec::deserialize(d)?;
    Ok(v.into_iter().map(|r| (r.rcpt, r.reply)).collect())
}

/// A record file: the typed record and the whole JSON value.
fn parse_record<T: serde::de::DeserializeOwned>(path: &Path) -> (T, Value) {
    let text = fs::read_to_string(path).unwrap();
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let record = T::deserialize(&value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (record, value)
}

/// Standard base64 (with padding) to bytes.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

// ----- the scripted server -----

/// Where the scripted server stalls or drops the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    /// EHLO, HELO or LHLO.
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    /// The reply to DATA (before the content).
    Data,
    /// During the content (see [`ScriptedConfig::drop_mid_data`]).
    DataMid,
    /// After the final dot.
    Dot,
    Rset,
    Quit,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Auth => "auth",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::DataMid => "data_mid",
            Stage::Dot => "dot",
            Stage::Rset => "rset",
            Stage::Quit => "quit",
        }
    }
}

/// What the scripted server answers; builder style. Replies are whole
/// lines ("550 5.1.1 <x@y>: no such user"); several lines are separated by
/// `\n`, the code given once. By default: every command accepted, SIZE
/// 10240000, 8BITMIME, SMTPUTF8, DSN, PIPELINING and ENHANCEDSTATUSCODES
/// offered, no STARTTLS, no AUTH. Parameters of MAIL/RCPT belonging to an
/// extension not offered are refused with 555.
#[derive(Debug, Clone)]
pub struct ScriptedConfig {
    json: Map<String, Value>,
}

impl Default for ScriptedConfig {
    fn default() -> Self {
        ScriptedConfig::new()
    }
}

impl ScriptedConfig {
    /// SMTP, everything accepted.
    pub fn new() -> ScriptedConfig {
        ScriptedConfig { json: Map::new() }
    }

    fn set(mut self, key: &str, v: Value) -> Self {
        self.json.insert(key.to_string(), v);
        self
    }

    /// The object at `key` (made, or made from a plain string reply as its
    /// "default"), with `sub` set to `v`.
    fn set_in(mut self, key: &str, sub: &str, v: Value) -> Self {
        let t = self
            .json
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::String(s) = t {
            *t = json!({ "default": s });
        }
        if let Value::Object(m) = t {
            m.insert(sub.to_string(), v);
        }
        self
    }

    fn table(self, key: &str, sub: &str, reply: &str) -> Self {
        self.set_in(key, &sub.to_lowercase(), json!(reply))
    }

    fn str(self, key: &str, v: &str) -> Self {
        self.set(key, json!(v))
    }

    /// LMTP: LHLO, and one reply per accepted recipient after the dot.
    pub fn lmtp(self) -> Self {
        self.set("lmtp", json!(true))
    }

    /// The name in the greeting and the EHLO reply.
    pub fn hostname(self, name: &str) -> Self {
        self.str("hostname", name)
    }

    /// The greeting (421 hangs up after it; another non-2xx one answers
    /// everything but QUIT with 503).
    pub fn greeting(self, reply: &str) -> Self {
        self.str("greeting", reply)
    }

    /// A non-2xx reply to EHLO/HELO/LHLO.
    pub fn ehlo(self, reply: &str) -> Self {
        self.str("ehlo", reply)
    }

    /// Offer (or not) an extension: "8BITMIME", "SMTPUTF8", "DSN",
    /// "PIPELINING", "ENHANCEDSTATUSCODES".
    pub fn extension(self, name: &str, on: bool) -> Self {
        self.set_in("extensions", name, json!(on))
    }

    /// SIZE with this limit, or no SIZE.
    pub fn size(self, limit: Option<u64>) -> Self {
        self.set_in("extensions", "SIZE", json!(limit))
    }

    /// The reply to every MAIL.
    pub fn mail(self, reply: &str) -> Self {
        self.table("mail", "default", reply)
    }

    /// The reply to MAIL FROM:<`sender`>.
    pub fn mail_for(self, sender: &str, reply: &str) -> Self {
        self.table("mail", sender, reply)
    }

    /// The reply to every RCPT not named by [`ScriptedConfig::rcpt_for`].
    pub fn rcpt(self, reply: &str) -> Self {
        self.table("rcpt", "default", reply)
    }

    /// The reply to RCPT TO:<`rcpt`> (case-insensitive).
    pub fn rcpt_for(self, rcpt: &str, reply: &str) -> Self {
        self.table("rcpt", rcpt, reply)
    }

    /// The reply to DATA (not 354: the transaction ends there).
    pub fn data(self, reply: &str) -> Self {
        self.str("data", reply)
    }

    /// The reply after the final dot (LMTP: the default per recipient).
    pub fn dot(self, reply: &str) -> Self {
        self.str("dot", reply)
    }

    /// LMTP: the reply for `rcpt` after the final dot.
    pub fn dot_for(self, rcpt: &str, reply: &str) -> Self {
        self.table("dot_rcpt", rcpt, reply)
    }

    /// Offer STARTTLS with this certificate.
    pub fn starttls(self, cert: &TestCert) -> Self {
        self.set(
            "starttls",
            json!({
                "cert": cert.cert.display().to_string(),
                "key": cert.key.display().to_string(),
            }),
        )
    }

    /// Offer STARTTLS, answer it with 454.
    pub fn refuse_starttls(self) -> Self {
        self.str("starttls", "refuse")
    }

    /// Offer AUTH PLAIN LOGIN, accepting this user and password only.
    pub fn auth(self, user: &str, password: &str) -> Self {
        self.set_in("auth", "user", json!(user))
            .set_in("auth", "password", json!(password))
    }

    /// The mechanisms offered (PLAIN, LOGIN).
    pub fn auth_mechanisms(self, mechs: &[&str]) -> Self {
        self.set_in("auth", "mechanisms", json!(mechs))
    }

    /// MAIL before a successful AUTH gets 530.
    pub fn auth_required(self) -> Self {
        self.set_in("auth", "required", json!(true))
    }

    /// AUTH offered (and accepted) only after STARTTLS.
    pub fn auth_requires_tls(self) -> Self {
        self.set_in("auth", "require_tls", json!(true))
    }

    /// No reply for `secs` seconds at `stage`, then the usual one.
    pub fn stall(self, stage: Stage, secs: u64) -> Self {
        self.set("stall", json!({ "stage": stage.name(), "seconds": secs }))
    }

    /// Close the connection instead of replying at `stage`.
    pub fn drop_at(self, stage: Stage) -> Self {
        self.set("drop", json!({ "stage": stage.name() }))
    }

    /// Close the connection once `after_bytes` bytes of content were read
    /// (after the 354, before the final dot).
    pub fn drop_mid_data(self, after_bytes: u64) -> Self {
        self.set(
            "drop",
            json!({ "stage": Stage::DataMid.name(), "after_bytes": after_bytes }),
        )
    }

    /// Seconds without a command before the server hangs up (300).
    pub fn idle_timeout(self, secs: u64) -> Self {
        self.set("idle_timeout", json!(secs))
    }

    /// The first connections use these configurations, one each, in order;
    /// later ones use this one (e.g. a 421 greeting, then normal service).
    pub fn first_sessions(self, configs: Vec<ScriptedConfig>) -> Self {
        let v = configs.into_iter().map(|c| Value::Object(c.json)).collect();
        self.set("sessions", Value::Array(v))
    }

    /// The configuration file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.json).unwrap()
    }
}

/// One recipient of a recorded transaction.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RcptRecord {
    pub address: String,
    /// RCPT parameters as sent (NOTIFY=..., ORCPT=...).
    pub params: Vec<String>,
    /// What the server answered.
    pub reply: String,
}

/// One transaction as the scripted server recorded it (from an accepted
/// MAIL to its end).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Transaction {
    pub seq: u64,
    /// The connection (1, 2, ... in accept order).
    pub session: u64,
    /// SMTP, ESMTP or LMTP.
    pub protocol: String,
    /// The client's EHLO/HELO/LHLO name.
    pub helo: Option<String>,
    pub tls: bool,
    pub tls_version: Option<String>,
    pub auth_user: Option<String>,
    pub mail_from: String,
    /// MAIL parameters as sent (SIZE=..., BODY=..., RET=..., SMTPUTF8).
    pub mail_params: Vec<String>,
    pub rcpts: Vec<RcptRecord>,
    /// The reply given to DATA, when DATA was sent.
    pub data_reply: Option<String>,
    /// Whether the final dot was read.
    pub complete: bool,
    /// The content read (dot-unstuffed, CRLF line ends), whole or partial.
    #[serde(rename = "data_b64", deserialize_with = "from_base64")]
    pub data: Vec<u8>,
    /// SMTP: the reply after the dot.
    pub final_reply: Option<String>,
    /// LMTP: (recipient, reply) after the dot, in RCPT order.
    #[serde(deserialize_with = "lmtp_pairs")]
    pub lmtp_replies: Vec<(String, String)>,
    /// How it ended: "dot", "data refused", "rset", "ehlo", "starttls",
    /// "quit", "disconnect" (the client went away), "dropped" (the server
    /// hung up as configured).
    pub end: String,
    /// The whole record.
    #[serde(skip)]
    pub json: Value,
}

impl Transaction {
    /// The content as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The recipients the server accepted at RCPT.
    pub fn accepted(&self) -> Vec<String> {
        self.rcpts
            .iter()
            .filter(|r| r.reply.starts_with('2'))
            .map(|r| r.address.clone())
            .collect()
    }
}

/// One connection as the scripted server recorded it (written when it
/// ends).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SessionRecord {
    pub session: u64,
    /// "ADDR:PORT" (empty when the connection ended before the greeting).
    #[serde(deserialize_with = "null_default")]
    pub peer: String,
    pub helo: Option<String>,
    pub tls: bool,
    pub auth_user: Option<String>,
    pub auth_failures: u64,
    /// ('C', command) and ('S', reply line), in order. AUTH exchanges
    /// after the command line are not in it.
    pub transcript: Vec<(char, String)>,
    /// Commands after which more input had already arrived before their
    /// reply was sent: the client pipelined them. (A pipelined command may
    /// be missed when the rest arrived late; one never is listed wrongly.)
    pub pipelined: Vec<String>,
    /// The `seq` of its transactions.
    pub transactions: Vec<u64>,
    /// "quit", "disconnect", "dropped at STAGE", "closed after greeting".
    pub end: String,
    /// The whole record.
    #[serde(skip)]
    pub json: Value,
}

impl SessionRecord {
    /// The commands the client sent, in order.
    pub fn commands(&self) -> Vec<String> {
        self.transcript
            .iter()
            .filter(|(w, _)| *w == 'C')
            .map(|(_, l)| l.clone())
            .collect()
    }
}

/// Where a scripted server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddrV4),
    Unix(PathBuf),
}

/// `tests/data/scripted_smtpd.py` running under /usr/bin/python3 (where
/// Debian's python3-aiosmtpd is).
pub struct Scripted {
    proc: Proc,
    pub listen: Listen,
    pub dir: PathBuf,
    record: PathBuf,
    log: PathBuf,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.proc.stop();
        if std::thread::panicking() {
            eprintln!(
                "scripted server {:?} stderr:\n{}",
                self.listen,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The interpreter that has Debian's python3-aiosmtpd.
const PYTHON: &str = "/usr/bin/python3";

impl Scripted {
    /// On 127.0.0.1, a port the kernel chooses.
    pub fn start(cfg: &ScriptedConfig) -> Scripted {
        Scripted::spawn(cfg, "--listen=127.0.0.1:0", None)
    }

    /// On `ip`:`port` (a 127.0.0.0/8 address).
    pub fn start_at(ip: Ipv4Addr, port: u16, cfg: &ScriptedConfig) -> Scripted {
        assert!(ip.is_loopback(), "peers listen on loopback only, not {ip}");
        Scripted::spawn(cfg, &format!("--listen={ip}:{port}"), None)
    }

    /// On a UNIX-domain socket in its directory (see [`Scripted::socket`]).
    pub fn start_unix(cfg: &ScriptedConfig) -> Scripted {
        let dir = temp_dir("scripted");
        let sock = dir.join("socket");
        Scripted::spawn(cfg, &format!("--unix={}", sock.display()), Some(dir))
    }

    fn spawn(cfg: &ScriptedConfig, listen: &str, dir: Option<PathBuf>) -> Scripted {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/scripted_smtpd.py");
        assert!(
            Path::new(PYTHON).exists(),
            "{PYTHON} is missing (package python3): {FIX}"
        );
        let dir = dir.unwrap_or_else(|| temp_dir("scripted"));
        let conf = dir.join("config.json");
        fs::write(&conf, cfg.to_json()).unwrap();
        let record = dir.join("records");
        let log = dir.join("stderr");
        let mut child = Command::new(PYTHON)
            .arg(&script)
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--record={}", record.display()))
            .arg(listen)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{PYTHON} {}: {e}", script.display()));
        let stdout = child.stdout.take().unwrap();
        let mut proc = Proc::new(child, "scripted_smtpd.py");
        // The ready line, read on a thread so that the wait is bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(START_SECS))
            .unwrap_or_default();
        let Some(at) = line.trim().strip_prefix("READY ") else {
            proc.stop();
            let err = fs::read_to_string(&log).unwrap_or_default();
            let hint = if err.contains("aiosmtpd") {
                format!("python3-aiosmtpd is missing: {FIX}")
            } else {
                String::new()
            };
            panic!("scripted_smtpd.py did not start ({line:?}) {hint}\n{err}");
        };
        let listen = match at.strip_prefix("unix:") {
            Some(p) => Listen::Unix(PathBuf::from(p)),
            None => Listen::Tcp(at.parse().unwrap()),
        };
        Scripted {
            proc,
            listen,
            dir,
            record,
            log,
        }
    }

    pub fn addr(&self) -> SocketAddrV4 {
        match &self.listen {
            Listen::Tcp(a) => *a,
            Listen::Unix(p) => panic!("the scripted server listens on {}", p.display()),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// The UNIX-domain socket (from [`Scripted::start_unix`]).
    pub fn socket(&self) -> PathBuf {
        match &self.listen {
            Listen::Unix(p) => p.clone(),
            Listen::Tcp(a) => panic!("the scripted server listens on {a}"),
        }
    }

    /// `relayhost` (or a transport's nexthop) naming this server.
    pub fn relayhost(&self) -> String {
        format!("[{}]:{}", self.addr().ip(), self.port())
    }

    fn record_files(&self, prefix: &str) -> Vec<PathBuf> {
        files_in(&self.record)
            .into_iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with(prefix) && n.ends_with(".json")
            })
            .collect()
    }

    /// Every transaction recorded so far, in order.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.record_files("txn-")
            .iter()
            .map(|p| {
                let (t, json) = parse_record(p);
                Transaction { json, ..t }
            })
            .collect()
    }

    /// Waits (bounded) until `n` transactions were recorded.
    pub fn wait_transactions(&self, n: usize) -> Vec<Transaction> {
        wait_for(WAIT_SECS, &format!("{n} recorded transactions"), || {
            self.record_files("txn-").len() >= n
        });
        self.transactions()
    }

    /// Every connection that has ended, in order.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.record_files("session-")
            .iter()
            .map(|p| {
                let (s, json) = parse_record(p);
                SessionRecord { json, ..s }
            })
            .collect()
    }

    /// Waits (bounded) until `n` connections have ended.
    pub fn wait_sessions(&self, n: usize) -> Vec<SessionRecord> {
        wait_for(WAIT_SECS, &format!("{n} ended sessions"), || {
            self.record_files("session-").len() >= n
        });
        self.sessions()
    }
}

// ----- DNS -----

/// The records a [`Dns`] serves; every other name is NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct DnsZone {
    args: Vec<String>,
}

impl DnsZone {
    pub fn new() -> DnsZone {
        DnsZone::default()
    }

    /// An MX record: `domain` MX `preference` `host`.
    pub fn mx(mut self, domain: &str, preference: u16, host: &str) -> Self {
        self.args
            .push(format!("--mx-host={domain},{host},{preference}"));
        self
    }

    /// An A record (one per call; several make several records).
    pub fn a(mut self, name: &str, addr: Ipv4Addr) -> Self {
        self.args.push(format!("--host-record={name},{addr}"));
        self
    }

    /// An AAAA record.
    pub fn aaaa(mut self, name: &str, addr: std::net::Ipv6Addr) -> Self {
        self.args.push(format!("--host-record={name},{addr}"));
        self
    }

    /// The null MX of RFC 7505 (`domain` MX 0 `.`).
    pub fn null_mx(mut self, domain: &str) -> Self {
        self.args.push(format!("--dns-rr={domain},15,000000"));
        self
    }

    /// A CNAME: `alias` → `target` (the target must be in the zone).
    pub fn cname(mut self, alias: &str, target: &str) -> Self {
        self.args.push(format!("--cname={alias},{target}"));
        self
    }

    /// A TXT record.
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        self.args.push(format!("--txt-record={name},{text}"));
        self
    }

    /// Any other dnsmasq option.
    pub fn raw(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }
}

/// dnsmasq on 127.0.0.1:`port` (UDP and TCP), answering from its zone
/// only: NXDOMAIN for every other name, no upstream server.
pub struct Dns {
    proc: Proc,
    pub port: u16,
    dir: PathBuf,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Dns {
    pub fn start(zone: &DnsZone) -> Dns {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("dnsmasq is missing (package dnsmasq-base): {FIX}"));
        let dir = temp_dir("dns");
        let log = dir.join("log");
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new(bin)
                .args([
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--pid-file=",
                    "--user=root",
                    "--group=root",
                    // Every name is ours: NXDOMAIN unless the zone has it.
                    "--local=/#/",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .args(&zone.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .expect("run dnsmasq");
            let mut proc = Proc::new(child, "dnsmasq");
            // Ready when it answers (NXDOMAIN is an answer); one that could
            // not bind exits, and another port is tried.
            if dns_answers(port, &mut proc) {
                return Dns { proc, port, dir };
            }
        }
        panic!(
            "dnsmasq did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The main.cf line that makes Facteur's resolver ask this server.
    pub fn main_cf(&self) -> String {
        format!("facteur_dns_servers = 127.0.0.1:{}\n", self.port)
    }

    /// Facteur's resolver, asking this server.
    pub fn resolver(&self) -> libmail::dns::Dns {
        libmail::dns::Dns::with_servers(&[self.addr()], Duration::from_secs(5)).unwrap()
    }
}

/// Whether 127.0.0.1:`port` answers a query within about 5 s.
fn dns_answers(port: u16, proc: &mut Proc) -> bool {
    let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    // ID 0x5a5a, RD, one question: ready.invalid A IN.
    let query: &[u8] =
        b"\x5a\x5a\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x07invalid\x00\x00\x01\x00\x01";
    let mut buf = [0u8; 512];
    for _ in 0..50 {
        if let Some(c) = proc.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                return false;
            }
        }
        if sock.send_to(query, ("127.0.0.1", port)).is_ok() {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n >= 2 && buf[..2] == [0x5a, 0x5a] {
                    return true;
                }
            }
        }
    }
    false
}

// ----- Dovecot LMTP -----

/// The Dovecot fixture's users (`passwd.example`): (user, password).
pub const DOVECOT_USERS: [(&str, &str); 4] = [
    ("alice@example.test", "alicepw"),
    ("bob@example.test", "bobpw"),
    ("carol@example.test", "carolpw"),
    ("full@example.test", "fullpw"),
];

/// The Dovecot fixture (`../shared/fixtures/dovecot`): LMTP on its UNIX
/// socket and on 127.0.0.1:`port`, SASL on its auth socket; mail for a
/// user lands in `mail_root()/USER/Maildir/new/`. Runs as root or not.
pub struct DovecotLmtp {
    fixture: dovecot::Fixture,
    inet: SocketAddr,
}

impl DovecotLmtp {
    /// `tag` names its directory (keep it short: socket paths are limited),
    /// with a number unique in this process.
    pub fn start(tag: &str) -> DovecotLmtp {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port_on(&[Ipv4Addr::LOCALHOST]);
            let name = format!("{tag}{}", SEQ.fetch_add(1, Ordering::SeqCst));
            match dovecot::Fixture::try_start_with_lmtp_port(&name, port) {
                Ok(fixture) => {
                    let inet = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                    let end = Instant::now() + Duration::from_secs(START_SECS);
                    while !tcp_listening(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
                        assert!(Instant::now() < end, "Dovecot does not listen on {inet}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return DovecotLmtp { fixture, inet };
                }
                Err(e) => last = e,
            }
        }
        panic!("the Dovecot fixture did not start: {last}");
    }

    pub fn base(&self) -> &Path {
        &self.fixture.base
    }

    /// The LMTP UNIX-domain socket.
    pub fn lmtp_socket(&self) -> PathBuf {
        self.fixture.lmtp_socket()
    }

    /// LMTP over TCP.
    pub fn lmtp_inet(&self) -> SocketAddr {
        self.inet
    }

    /// `lmtp:unix:/path` (for virtual_transport, mailbox_transport, ...).
    pub fn transport_unix(&self) -> String {
        format!("lmtp:unix:{}", self.lmtp_socket().display())
    }

    /// `lmtp:inet:127.0.0.1:PORT`.
    pub fn transport_inet(&self) -> String {
        format!("lmtp:inet:{}", self.inet)
    }

    /// The SASL socket (`smtpd_sasl_type = dovecot`).
    pub fn auth_socket(&self) -> &Path {
        &self.fixture.auth_socket
    }

    pub fn mail_root(&self) -> PathBuf {
        self.fixture.mail_root()
    }

    /// The files in `user`'s Maildir/new, sorted by name.
    pub fn maildir_files(&self, user: &str) -> Vec<PathBuf> {
        files_in(&self.mail_root().join(user).join("Maildir/new"))
    }

    /// `user`'s delivered messages.
    pub fn messages(&self, user: &str) -> Vec<String> {
        self.maildir_files(user)
            .iter()
            .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned())
            .collect()
    }

    /// Waits (bounded) for `n` messages for `user`.
    pub fn wait_messages(&self, user: &str, n: usize) -> Vec<String> {
        wait_for(
            WAIT_SECS,
            &format!("{n} messages for {user} in Dovecot"),
            || self.maildir_files(user).len() >= n,
        );
        self.messages(user)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.fixture.base.join("log/dovecot.log")).unwrap_or_default()
    }
}

// ----- a real Postfix as the relayhost -----

/// How a [`PostfixRelay`] is set up.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// STARTTLS offered (`smtpd_tls_security_level = may`) with a fresh
    /// self-signed certificate for relay.example.test.
    pub tls: bool,
    /// AUTH through a Dovecot fixture of its own (users: [`DOVECOT_USERS`]);
    /// relaying then needs it (`permit_sasl_authenticated,
    /// reject_unauth_destination`: every domain is foreign), and
    /// with `tls` too AUTH is offered only after STARTTLS. Without `sasl`,
    /// 127.0.0.0/8 may relay.
    pub sasl: bool,
    /// More main.cf lines (last definition wins).
    pub main_cf: String,
}

/// A real Postfix (root only) on 127.0.0.1:`port` that accepts mail for
/// any domain from those allowed to relay and delivers all of it with
/// virtual(8) into one Maildir (`maildir()`); each delivery has a
/// `Delivered-To:` header naming its recipient. Its log is `log_text()`.
pub struct PostfixRelay {
    pub top: PathBuf,
    pub etc: PathBuf,
    pub port: u16,
    pub cert: Option<TestCert>,
    /// The Dovecot behind SASL (when `sasl`); stopped after Postfix.
    pub dovecot: Option<DovecotLmtp>,
}

impl Drop for PostfixRelay {
    fn drop(&mut self) {
        let pid = fs::read_to_string(self.top.join("queue/pid/master.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        // `postfix stop`, bounded: a Postfix whose postlogd is stuck
        // never answers it.
        if let Ok(mut stop) = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            let end = Instant::now() + Duration::from_secs(10);
            while matches!(stop.try_wait(), Ok(None)) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(stop.try_wait(), Ok(None)) {
                let _ = stop.kill();
                let _ = stop.wait();
            }
        }
        if let Some(pid) = pid {
            // SAFETY: probing and signalling the master this instance started
            // (its PID from its own pid file) and that master's children.
            let alive = || unsafe { libc::kill(pid, 0) == 0 };
            let end = Instant::now() + Duration::from_secs(10);
            while alive() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive() {
                for child in children_of(pid) {
                    unsafe { libc::kill(child, libc::SIGKILL) };
                }
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::thread::panicking() {
            eprintln!("--- relay maillog ---\n{}", self.log_text());
        }
        let _ = fs::remove_dir_all(&self.top);
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|st| {
                    let after = &st[st.rfind(')')? + 2..];
                    after.split(' ').nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// `base` with the settings of `extra` in place of its own: one line per
/// name. Every Postfix program warns about a name set twice, and postlogd
/// sends its own warnings to its own socket: with a few of them queued
/// it blocks for good, and the whole instance with it.
pub fn override_main_cf(base: &str, extra: &str) -> String {
    let name = |line: &str| -> Option<String> {
        if line.starts_with(|c: char| c.is_whitespace() || c == '#') {
            return None;
        }
        Some(line.split('=').next()?.trim().to_string())
    };
    let set: Vec<String> = extra.lines().filter_map(name).collect();
    let mut out: String = base
        .lines()
        .filter(|l| name(l).is_none_or(|n| !set.contains(&n)))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(extra);
    out.push('\n');
    out
}

const POSTFIX_MASTER_CF: &str = "\
# chroot (5th column) n everywhere: absolute paths stay valid.
127.0.0.1:@PORT@ inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
virtual    unix  - n n -  - virtual
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
";

impl PostfixRelay {
    /// None (having said why) when not root: Postfix's master needs root.
    pub fn start(opts: RelayOptions) -> Option<PostfixRelay> {
        if !is_root() {
            eprintln!("skipped: a real Postfix (PostfixRelay) needs root");
            return None;
        }
        let postfix = Path::new("/usr/sbin/postfix");
        assert!(
            postfix.exists(),
            "{} is missing (package postfix): {FIX}",
            postfix.display()
        );
        let top = temp_dir("postfix");
        let etc = top.join("etc");
        for d in ["etc", "data", "queue", "mail"] {
            fs::create_dir_all(top.join(d)).unwrap();
        }
        let chown = |who: &str, p: &Path| {
            let out = Command::new("chown").arg(who).arg(p).output().unwrap();
            assert!(out.status.success(), "chown {who} {}: {out:?}", p.display());
        };
        chown("postfix", &top.join("data"));
        chown("nobody:nogroup", &top.join("mail"));
        let dovecot = opts.sasl.then(|| DovecotLmtp::start("relay"));
        let cert = opts
            .tls
            .then(|| TestCert::generate(&top, "relay.example.test"));
        let port = free_port_on(&[Ipv4Addr::LOCALHOST]);
        let t = top.display();
        let mut main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {t}/queue\n\
             data_directory = {t}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = relay.example.test\n\
             mydomain = example.test\n\
             myorigin = $myhostname\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             biff = no\n\
             smtpd_banner = $myhostname ESMTP\n\
             maillog_file = {t}/maillog\n\
             maillog_file_prefixes = {t}\n\
             smtp_dns_support_level = disabled\n\
             # Everything it accepts (bounces too) goes to one Maildir.\n\
             default_transport = virtual\n\
             relay_transport = virtual\n\
             virtual_mailbox_base = {t}/mail\n\
             virtual_mailbox_maps = static:inbox/\n\
             # (its default, $virtual_mailbox_maps, would make every domain local)\n\
             virtual_mailbox_domains =\n\
             virtual_uid_maps = static:65534\n\
             virtual_gid_maps = static:65534\n\
             smtpd_recipient_restrictions =\n"
        );
        match &dovecot {
            Some(d) => main.push_str(&format!(
                "mynetworks =\n\
                 smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination\n\
                 smtpd_sasl_auth_enable = yes\n\
                 smtpd_sasl_type = dovecot\n\
                 smtpd_sasl_path = {}\n",
                d.auth_socket().display()
            )),
            None => main.push_str(
                "mynetworks = 127.0.0.0/8\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n",
            ),
        }
        if let Some(c) = &cert {
            main.push_str(&format!(
                "smtpd_tls_security_level = may\n\
                 smtpd_tls_cert_file = {}\n\
                 smtpd_tls_key_file = {}\n\
                 smtpd_tls_received_header = yes\n\
                 smtpd_tls_auth_only = {}\n",
                c.cert.display(),
                c.key.display(),
                if opts.sasl { "yes" } else { "no" }
            ));
        }
        let main = override_main_cf(&main, &opts.main_cf);
        fs::write(etc.join("main.cf"), main).unwrap();
        fs::write(
            etc.join("master.cf"),
            POSTFIX_MASTER_CF.replace("@PORT@", &port.to_string()),
        )
        .unwrap();
        let relay = PostfixRelay {
            top,
            etc,
            port,
            cert,
            dovecot,
        };
        for cmd in ["check", "start"] {
            let out = Command::new(postfix)
                .arg("-c")
                .arg(&relay.etc)
                .arg(cmd)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "postfix {cmd}: {out:?}\n{}",
                relay.log_text()
            );
        }
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_for(START_SECS, &format!("Postfix to listen on {addr}"), || {
            tcp_listening(addr)
        });
        Some(relay)
    }

    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port)
    }

    /// `relayhost = ` this.
    pub fn relayhost(&self) -> String {
        format!("[127.0.0.1]:{}", self.port)
    }

    /// A line for the client's smtp_sasl_password_maps (a `texthash:`
    /// file, say): this relayhost and `user`'s password.
    pub fn sasl_password_line(&self, user: &str) -> String {
        let pw = DOVECOT_USERS
            .iter()
            .find(|(u, _)| *u == user)
            .unwrap_or_else(|| panic!("{user} is not a Dovecot fixture user"))
            .1;
        format!("{} {user}:{pw}\n", self.relayhost())
    }

    /// The Maildir everything is delivered to.
    pub fn maildir(&self) -> PathBuf {
        self.top.join("mail/inbox")
    }

    /// Every delivered message, oldest name first.
    pub fn messages(&self) -> Vec<String> {
        files_in(&self.maildir().join("new"))
            .iter()
            .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned())
            .collect()
    }

    /// The messages delivered to `rcpt` (by their Delivered-To header).
    pub fn messages_for(&self, rcpt: &str) -> Vec<String> {
        let want = format!("\ndelivered-to: {}\n", rcpt.to_lowercase());
        self.messages()
            .into_iter()
            .filter(|m| format!("\n{}", m.to_lowercase()).contains(&want))
            .collect()
    }

    /// Waits (bounded) for `n` messages to `rcpt`; returns them.
    pub fn wait_messages_for(&self, rcpt: &str, n: usize) -> Vec<String> {
        wait_for(
            WAIT_SECS,
            &format!("{n} messages to {rcpt} at the relay"),
            || self.messages_for(rcpt).len() >= n,
        );
        self.messages_for(rcpt)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(self.top.join("maillog")).unwrap_or_default()
    }

    /// Waits (bounded) for a log line matching `pattern` (a regex).
    pub fn wait_log(&self, pattern: &str) -> String {
        let re = regex::Regex::new(pattern).unwrap();
        let mut found = String::new();
        wait_for(
            WAIT_SECS,
            &format!("a relay log line matching {pattern}"),
            || match self.log_text().lines().find(|l| re.is_match(l)) {
                Some(l) => {
                    found = l.to_string();
                    true
                }
                None => false,
            },
        );
        found
    }
}
