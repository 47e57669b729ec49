//! The operator's state file (`state_file=PATH`): the override set through the control socket,
//! kept across restarts of the server.
//!
//! The monitor thread writes it after every change an operator makes (a temporary file in the
//! same directory, synced, renamed over the old one, and the directory synced: a reader, or a
//! restart after a crash, sees the old override or the new one, never a part). The agent
//! reads it at start. A file that cannot be read as written here is an error that names it,
//! and the agent does not start: a server an operator took out never comes back UP silently.
//! A missing file is no override (the first start).
//!
//! ```text
//! # lbagent operator override (control=, lbagent-ctl): written by lbagent, read at start
//! state=drain
//! until_unix_ms=1767225600000
//! reason=kernel update
//! ```
//!
//! `state` is `none`, `drain` or `maint`; `until_unix_ms` (optional) is when it ends, in
//! milliseconds since the Unix epoch (an override that ended while the server was down is not
//! applied); `reason` (optional) is the operator's text.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::state::State;
use crate::status::Text;

/// The longest state file read, in bytes.
const MAX_LEN: usize = 4096;

/// What a state file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// Drain or maint (`None` for `state=none`).
    pub state: Option<State>,
    /// When it ends (`None`: until cleared).
    pub until: Option<SystemTime>,
    /// The operator's reason.
    pub reason: Text,
}

impl Saved {
    /// No override.
    pub const NONE: Saved = Saved {
        state: None,
        until: None,
        reason: Text::EMPTY,
    };

    /// How long it still lasts at `now`: `Some(None)` until cleared, `Some(Some(left))`, or
    /// `None` when there is no override or it has ended.
    pub fn left(&self, now: SystemTime) -> Option<Option<Duration>> {
        self.state?;
        match self.until {
            None => Some(None),
            Some(until) => until
                .duration_since(now)
                .ok()
                .filter(|d| !d.is_zero())
                .map(Some),
        }
    }
}

/// Reads the state file at `path`: `Ok(None)` when it does not exist, an error naming the
/// file and the line otherwise.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    parse(&bytes).map(Some)
}

/// Parses a state file's content.
pub fn parse(bytes: &[u8]) -> Result<Saved, String> {
    if bytes.len() > MAX_LEN {
        return Err(format!("longer than {MAX_LEN} bytes: not a state file"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let mut state: Option<Option<State>> = None;
    let mut until = None;
    let mut reason = Text::EMPTY;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {n}: expected key=value, got \"{line}\""))?;
        match key {
            "state" => {
                state = Some(match value {
                    "none" => None,
                    "drain" => Some(State::Drain),
                    "maint" => Some(State::Maint),
                    _ => {
                        return Err(format!(
                            "line {n}: state \"{value}\": expected none, drain or maint"
                        ));
                    }
                })
            }
            "until_unix_ms" => {
                let ms: u64 = value.parse().map_err(|_| {
                    format!("line {n}: until_unix_ms \"{value}\": expected milliseconds")
                })?;
                until = Some(UNIX_EPOCH + Duration::from_millis(ms));
            }
            "reason" => reason = Text::from_reason(value.as_bytes()),
            _ => {
                return Err(format!(
                    "line {n}: unknown key \"{key}\" (expected state, until_unix_ms, reason)"
                ));
            }
        }
    }
    let state = state.ok_or_else(|| "no state= line (an empty or cut file?)".to_string())?;
    Ok(Saved {
        state,
        until,
        reason,
    })
}

/// The file's content for `saved`.
pub fn render(saved: &Saved) -> String {
    let mut out = String::from(
        "# lbagent operator override (control=, lbagent-ctl): written by lbagent, read at start\n",
    );
    out.push_str(&format!(
        "state={}\n",
        saved.state.map_or("none", |s| s.name())
    ));
    if let Some(until) = saved.until {
        let ms = until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        out.push_str(&format!("until_unix_ms={ms}\n"));
    }
    if !saved.reason.as_bytes().is_empty() {
        out.push_str(&format!("reason={}\n", saved.reason.as_str()));
    }
    out
}

/// Replaces the state file atomically with `saved`.
pub fn store(path: &Path, saved: &Saved) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("the path has no directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(render(saved).as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clear_errors() {
        let until = UNIX_EPOCH + Duration::from_millis(1_767_225_600_000);
        let saved = Saved {
            state: Some(State::Drain),
            until: Some(until),
            reason: Text::from_static("kernel update"),
        };
        assert_eq!(parse(render(&saved).as_bytes()), Ok(saved));
        let none = Saved::NONE;
        assert_eq!(parse(render(&none).as_bytes()), Ok(none));
        assert_eq!(saved.left(until + Duration::from_secs(1)), None);
        assert_eq!(
            saved.left(until - Duration::from_secs(2)),
            Some(Some(Duration::from_secs(2)))
        );
        for (bad, says) in [
            (&b""[..], "no state= line"),
            (b"state=up\n", "expected none, drain or maint"),
            (
                b"state=drain\nuntil_unix_ms=soon\n",
                "line 2: until_unix_ms",
            ),
            (
                b"state=drain\ncolour=red\n",
                "line 2: unknown key \"colour\"",
            ),
            (b"drain\n", "line 1: expected key=value"),
            (b"\xff\xfe", "not UTF-8"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn stored_atomically_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lbagent-state-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("override");
        assert_eq!(load(&path), Ok(None), "missing: no override");
        let saved = Saved {
            state: Some(State::Maint),
            until: None,
            reason: Text::EMPTY,
        };
        store(&path, &saved).unwrap();
        assert_eq!(load(&path), Ok(Some(saved)));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("override")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
