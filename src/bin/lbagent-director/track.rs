//! keepalived track files: `TRACK_DIR/NAME` holds `0` while the real server should receive
//! traffic and `1` while it should not (`track_file NAME { file ... weight 0 }` with
//! `FILE_CHECK`: 0 is OK, anything else a failure). For a target with `weight=N`,
//! `TRACK_DIR/NAME.weight` holds what keepalived adds to the real server's weight N so that
//! IPVS gets the agent's percent of it (`track_file ... weight 1`): 0 at 100 %, -N/2 at 50 %.
//!
//! keepalived re-reads a file when it is closed after writing or renamed into place, and
//! reads a missing or empty file as 0, that is OK. So a file is never written in place: the
//! new value goes to a temporary file in the same directory, which is renamed over the old
//! one; a reader sees the old content or the new, never a partial or empty file. On a
//! persistent file system the temporary file is also fsync'ed before the rename, so that a
//! crash cannot leave an empty file (read as OK) behind; on tmpfs (`/run`, the recommended
//! place) there is nothing to sync. The directory itself is not synced: after a crash a
//! file holds its previous value or the new one, both valid.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// What a track file says.
pub const OK: &[u8] = b"0\n";
/// What a track file says when the server must not receive traffic.
pub const FAILED: &[u8] = b"1\n";

/// The track directory, locked against a second poller writing into it.
pub struct TrackDir {
    dir: PathBuf,
    sync: bool,
    _lock: Flock<File>,
}

impl TrackDir {
    /// Opens `dir` (which must exist) and takes its lock (`DIR/.lbagent-director.lock`).
    pub fn open(dir: &Path) -> Result<TrackDir, String> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("track directory {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!(
                "track directory {}: not a directory",
                dir.display()
            ));
        }
        let lock_path = dir.join(".lbagent-director.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!(
                "{}: {e}: another lbagent-director writes into {}",
                lock_path.display(),
                dir.display()
            )
        })?;
        let tmpfs = nix::sys::statfs::statfs(dir)
            .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
            .unwrap_or(false);
        Ok(TrackDir {
            dir: dir.to_path_buf(),
            sync: !tmpfs,
            _lock: lock,
        })
    }

    /// True when every write is fsync'ed (the directory is not on tmpfs).
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// The path of a target's track file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What the file says now: `Some(true)` for 0, `Some(false)` for another number, `None`
    /// when it is missing, empty or unreadable (the state is unknown).
    pub fn read(&self, name: &str) -> Option<bool> {
        let mut buf = [0u8; 64];
        let mut file = File::open(self.path(name)).ok()?;
        let n = file.read(&mut buf).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let number = text.split_ascii_whitespace().next()?;
        number.parse::<i64>().ok().map(|v| v == 0)
    }

    /// Replaces the file atomically with `0` (ok) or `1`.
    pub fn write(&self, name: &str, ok: bool) -> io::Result<()> {
        self.write_bytes(name, if ok { OK } else { FAILED })
    }

    /// Replaces the file atomically with a number (a weight file: keepalived adds it to the
    /// real server's weight, `track_file ... weight 1`).
    pub fn write_number(&self, name: &str, value: i64) -> io::Result<()> {
        self.write_bytes(name, format!("{value}\n").as_bytes())
    }

    fn write_bytes(&self, name: &str, content: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(content)?;
        if self.sync {
            file.sync_data()?;
        }
        drop(file);
        std::fs::rename(&tmp, self.path(name)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_lock() {
        let dir = std::env::temp_dir().join(format!("lbagent-track-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let track = TrackDir::open(&dir).unwrap();
        assert_eq!(track.read("rs5"), None);
        track.write("rs5", false).unwrap();
        assert_eq!(std::fs::read(dir.join("rs5")).unwrap(), b"1\n");
        assert_eq!(track.read("rs5"), Some(false));
        track.write("rs5", true).unwrap();
        assert_eq!(track.read("rs5"), Some(true));
        track.write_number("rs5.weight", -45).unwrap();
        assert_eq!(std::fs::read(dir.join("rs5.weight")).unwrap(), b"-45\n");
        std::fs::write(dir.join("rs6"), "").unwrap();
        assert_eq!(track.read("rs6"), None, "empty: unknown");
        std::fs::write(dir.join("rs6"), "  7 and more").unwrap();
        assert_eq!(track.read("rs6"), Some(false));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        // A second poller cannot take the same directory.
        let second = TrackDir::open(&dir).err().unwrap();
        assert!(second.contains("another lbagent-director"), "{second}");
        drop(track);
        assert!(TrackDir::open(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
