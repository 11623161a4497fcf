//! The throwaway Dovecot of `../shared/fixtures/dovecot/` for tests:
//! started under a fresh directory, stopped (and the directory removed)
//! when the [`Fixture`] is dropped, passing or failing. Shared by
//! libmail's SASL tests and smtpd's AUTH tests (`#[path]`-included).
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The fixture script, found beside the repository as CI checks it out
/// (`<workspace>/../shared/fixtures/dovecot/`).
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/dovecot/dovecot-fixture.sh")
}

/// A running Dovecot; stopped (and its directory removed) on drop.
pub struct Fixture {
    pub base: PathBuf,
    pub auth_socket: PathBuf,
    pub pid: u32,
}

impl Fixture {
    pub fn start(name: &str) -> Fixture {
        let mut f = Fixture::fresh("sasl", name);
        f.run_start();
        f
    }

    /// Like [`Fixture::start`], with LMTP also on 127.0.0.1:`port`;
    /// `Err` (with the script's output) when it does not start, e.g. the
    /// port is taken (dropping the fixture then stops whatever started).
    /// The directory is `facteur-lmtp-dovecot-NAME-PID`.
    pub fn try_start_with_lmtp_port(name: &str, port: u16) -> Result<Fixture, String> {
        let mut f = Fixture::fresh("lmtp", name);
        f.start_with(&[&port.to_string()])?;
        Ok(f)
    }

    /// An empty directory for a fixture not started yet; asserts that the
    /// script and Dovecot are there.
    fn fresh(kind: &str, name: &str) -> Fixture {
        let script = script();
        assert!(
            script.is_file(),
            "the Dovecot fixture {} is missing: the shared/ directory must sit beside the \
             repository; run scripts/test.sh",
            script.display()
        );
        assert!(
            Path::new("/usr/sbin/dovecot").exists()
                && Path::new("/usr/bin/doveadm").exists()
                && Path::new("/usr/lib/dovecot/lmtp").exists(),
            "Dovecot is not installed (dovecot-core, dovecot-lmtpd): run scripts/test.sh, \
             which installs it"
        );
        let base = std::env::temp_dir().join(format!(
            "facteur-{kind}-dovecot-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        Fixture {
            base,
            auth_socket: PathBuf::new(),
            pid: 0,
        }
    }

    pub fn run_start(&mut self) {
        if let Err(e) = self.start_with(&[]) {
            panic!("{e}");
        }
    }

    /// Runs `dovecot-fixture.sh start BASEDIR EXTRA...` and reads the
    /// variables it prints.
    fn start_with(&mut self, extra: &[&str]) -> Result<(), String> {
        let (ok, stdout, stderr) = self.script_with("start", extra);
        if !ok {
            return Err(format!("dovecot-fixture.sh start failed: {stdout}{stderr}"));
        }
        let var = |k: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| format!("no {k} in the fixture's output:\n{stdout}"))
        };
        self.auth_socket = PathBuf::from(var("DOVECOT_AUTH_SOCKET")?);
        self.pid = var("DOVECOT_PID")?
            .parse()
            .map_err(|e| format!("DOVECOT_PID: {e}"))?;
        Ok(())
    }

    pub fn stop(&self) {
        let (ok, stdout, stderr) = self.script_with("stop", &[]);
        assert!(ok, "dovecot-fixture.sh stop failed: {stdout}{stderr}");
    }

    /// Runs the fixture script with BASEDIR and `extra` arguments. Its
    /// output goes to files, not pipes: the daemonized Dovecot inherits
    /// the script's stdout and stderr and keeps them open, so reading a
    /// pipe to its end would never finish.
    fn script_with(&self, cmd: &str, extra: &[&str]) -> (bool, String, String) {
        let out = self.base.with_extension("out");
        let err = self.base.with_extension("err");
        let status = Command::new("sh")
            .arg(script())
            .arg(cmd)
            .arg(&self.base)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .status()
            .expect("run dovecot-fixture.sh");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let r = (status.success(), read(&out), read(&err));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&err);
        r
    }

    /// The LMTP UNIX-domain socket.
    pub fn lmtp_socket(&self) -> PathBuf {
        self.base.join("run/lmtp")
    }

    /// Mail for USER lands in `mail_root()/USER/Maildir/new/`.
    pub fn mail_root(&self) -> PathBuf {
        self.base.join("mail")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // `stop` waits until the master process has exited.
        let _ = self.script_with("stop", &[]);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
