//! Replacing a small file so that a crash leaves either the old content or
//! the new one, never a mix, and the new one survives once the call returns.
//!
//! The vote, snapshots and `node.id` all go through [`replace`]: the bytes are
//! written to `NAME.tmp`, fsynced, renamed over `NAME`, and the directory is
//! fsynced so the rename itself is durable. A write that fails removes its
//! `.tmp` file; one cut short by a crash leaves it, and start-up removes it
//! (`wal::remove_leftover_tmp`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary file `replace` writes before renaming: `NAME.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `parts`, one after the other, as the new content of `path`
/// (write `.tmp`, fsync, rename, fsync the directory).
pub(crate) fn replace(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    replace_with(path, |f| {
        for part in parts {
            f.write_all(part)?;
        }
        Ok(())
    })
}

/// [`replace`] with the content written by `write` (which may seek), for
/// content too large to build in memory first.
pub(crate) fn replace_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Do not leave a partial file behind (a full disk).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    super::wal::sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_writes_all_parts_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap-7.snap");
        replace(&path, &[b"ab", b"", b"cd"]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        replace(&path, &[b"new"]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(tmp_path(&path), dir.path().join("snap-7.snap.tmp"));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("snap-7.snap")]);
    }

    #[test]
    fn a_failed_replace_keeps_the_old_content_and_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        replace(&path, &[b"old"]).unwrap();
        // A directory where the file should be: the rename fails.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        assert!(replace(&blocked, &[b"new"]).is_err());
        assert!(!tmp_path(&blocked).exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
