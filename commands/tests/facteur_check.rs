//! `facteur check` on broken configurations: each problem gives one clear
//! message naming the file and line, and the exit status is non-zero.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str, main_cf: &str, master_cf: &str) -> Dir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!(
            "facteur-check-{}-{}-{}",
            tag,
            std::process::id(),
            n
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("main.cf"), main_cf).unwrap();
        fs::write(d.join("master.cf"), master_cf).unwrap();
        Dir(d)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const MASTER_OK: &str = "smtp      inet  n       -       n       -       -       smtpd\n\
pickup    unix  n       -       n       60      1       pickup\n\
cleanup   unix  n       -       n       -       0       cleanup\n\
qmgr      unix  n       -       n       300     1       qmgr\n\
local     unix  -       n       n       -       -       local\n";

/// Run `facteur -c DIR check`; return (exit code, stderr lines).
fn check(dir: &Dir) -> (i32, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_facteur"))
        .args(["-c", dir.path(), "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    (
        out.status.code().unwrap_or(-1),
        stderr.lines().map(|l| l.to_string()).collect(),
    )
}

/// The lines that report a problem (not the closing summary).
fn problems(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| !l.starts_with("facteur: fatal:"))
        .collect()
}

fn assert_one_error(main_cf: &str, master_cf: &str, file: &str, line: usize, needle: &str) {
    let dir = Dir::new(&format!("{file}{line}"), main_cf, master_cf);
    let (code, lines) = check(&dir);
    assert_eq!(code, 1, "exit status for {main_cf:?}: {lines:#?}");
    let probs = problems(&lines);
    assert_eq!(probs.len(), 1, "exactly one problem expected: {lines:#?}");
    let expected_place = format!("facteur: error: {}/{}, line {}: ", dir.path(), file, line);
    assert!(
        probs[0].starts_with(&expected_place),
        "{:?} does not start with {:?}",
        probs[0],
        expected_place
    );
    assert!(
        probs[0].contains(needle),
        "{:?} lacks {:?}",
        probs[0],
        needle
    );
    assert!(
        lines.last().unwrap().contains("1 error(s)"),
        "summary line: {lines:#?}"
    );
}

#[test]
fn clean_configuration_passes_silently() {
    let dir = Dir::new(
        "clean",
        "compatibility_level = 3.6\nmyhostname = mx.example.com\nsmtpd_helo_required = yes\n",
        MASTER_OK,
    );
    let (code, lines) = check(&dir);
    assert_eq!(code, 0, "{lines:#?}");
    assert!(lines.is_empty(), "{lines:#?}");
}

#[test]
fn syntax_error_names_file_and_line() {
    assert_one_error(
        "myhostname = mx.example.com\n# comment\nthis line has no equals sign\n",
        MASTER_OK,
        "main.cf",
        3,
        "missing '=' after attribute name",
    );
}

#[test]
fn expansion_loop_names_the_chain() {
    assert_one_error(
        "myhostname = mx.example.com\nmyorigin = $mydomain\nmydomain = $myorigin\n",
        MASTER_OK,
        "main.cf",
        2,
        "expansion loop: $myorigin -> $mydomain -> $myorigin",
    );
}

#[test]
fn bad_number() {
    assert_one_error(
        "message_size_limit = 10M\n",
        MASTER_OK,
        "main.cf",
        1,
        "bad numerical configuration: message_size_limit = 10M",
    );
}

#[test]
fn number_out_of_range() {
    assert_one_error(
        "\n\nsmtpd_recipient_limit = 0\n",
        MASTER_OK,
        "main.cf",
        3,
        "invalid smtpd_recipient_limit parameter value 0 < 1",
    );
}

#[test]
fn bad_boolean() {
    assert_one_error(
        "smtpd_helo_required =\n    true\n",
        MASTER_OK,
        "main.cf",
        1,
        "bad boolean configuration: smtpd_helo_required = true",
    );
}

#[test]
fn bad_time_unit() {
    assert_one_error(
        "maximal_queue_lifetime = 5days\n",
        MASTER_OK,
        "main.cf",
        1,
        "bad time configuration: maximal_queue_lifetime = 5days",
    );
}

#[test]
fn master_cf_bad_column() {
    let master = format!(
        "{MASTER_OK}# a comment\nrelay     unix  -       maybe   n       -       -       smtp\n"
    );
    assert_one_error("", &master, "master.cf", 7, "maybe");
}

#[test]
fn master_cf_bad_type() {
    let master =
        format!("{MASTER_OK}relay     tcp   -       -       n       -       -       smtp\n");
    assert_one_error("", &master, "master.cf", 6, "tcp");
}

#[test]
fn missing_table_file_names_the_postmap_command() {
    assert_one_error(
        "transport_maps = hash:/nonexistent/facteur/transport\n",
        MASTER_OK,
        "main.cf",
        1,
        "postmap hash:/nonexistent/facteur/transport",
    );
}

#[test]
fn typo_is_a_warning_not_an_error() {
    let dir = Dir::new("typo", "relyhost = [smtp.example.net]:587\n", MASTER_OK);
    let (code, lines) = check(&dir);
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with(&format!(
        "facteur: warning: {}/main.cf, line 1: unused parameter: relyhost=",
        dir.path()
    )));
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let dir = Dir::new(
        "many",
        "smtpd_helo_required = maybe\nbroken line\nmessage_size_limit = big\n",
        MASTER_OK,
    );
    let (code, lines) = check(&dir);
    assert_eq!(code, 1);
    assert_eq!(problems(&lines).len(), 3, "{lines:#?}");
    assert!(lines.last().unwrap().contains("3 error(s)"));
}
