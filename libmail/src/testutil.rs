//! Helpers of the unit tests.

use std::path::PathBuf;

/// A fresh, empty directory under the system's temporary directory, named
/// after `tag` and this process (a leftover of an earlier run is removed).
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
