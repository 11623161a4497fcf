//! Shared by the integration tests that need a Facteur instance on disk: a
//! private config directory (main.cf with the queue under a temporary
//! directory, owned by whoever runs the tests) and, when asked, the queue
//! itself, made by `facteur set-permissions`. Removed when dropped.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;

pub struct Setup {
    pub top: PathBuf,
    /// The config directory, for `-c` / `-C`.
    pub etc: String,
    /// `queue_directory`.
    pub queue: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.top);
    }
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A fresh instance named after `tag`; `extra` is appended to main.cf.
pub fn setup(tag: &str, extra: &str, create_queue: bool) -> Setup {
    let top = std::env::temp_dir().join(format!("facteur-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&top);
    let etc = top.join("etc");
    fs::create_dir_all(&etc).unwrap();
    let queue = top.join("queue");
    fs::write(
        etc.join("main.cf"),
        format!(
            "queue_directory = {}\nmail_owner = {}\nsetgid_group = {}\n{extra}",
            queue.display(),
            id("-un"),
            id("-gn")
        ),
    )
    .unwrap();
    fs::write(etc.join("master.cf"), "").unwrap();
    let etc = etc.to_str().unwrap().to_string();
    if create_queue {
        let out = Command::new(env!("CARGO_BIN_EXE_facteur"))
            .args(["-c", &etc, "set-permissions"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    Setup { top, etc, queue }
}
