//! `join --resume-file FILE`: the position of the last message printed for each group, kept in
//! a small JSON file so that the next run recovers what was missed in between.
//!
//! ```text
//! {"groups":{"G":{"offset":17,"epoch":"e"}}}
//! ```
//!
//! The file is written whole, to `FILE.tmp` then renamed over `FILE`, so that a reader (or the
//! next run, after a crash) sees either the old positions or the new ones. Positions are only
//! ever those of messages already printed, so a stale file means duplicates on resume, never
//! a gap. Groups of the file that this run does not join are kept as they are.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use protocol::history::{Epoch, Position, Recover};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

/// The shortest time between two writes of the file (but the last one, at exit).
pub const WRITE_INTERVAL: Duration = Duration::from_millis(200);

const SHAPE: &str = r#"expected {"groups":{"GROUP":{"offset":N,"epoch":"E"}}}"#;

/// The positions, and when they must next be written.
#[derive(Debug)]
pub struct ResumeFile {
    path: PathBuf,
    positions: BTreeMap<String, Position>,
    /// Positions changed since the file was last written.
    dirty: bool,
    last_write: Option<Instant>,
}

impl ResumeFile {
    /// Reads `path`: no file is no position yet; a file that cannot be read or is not in the
    /// expected shape is an error.
    pub fn load(path: &Path) -> Result<ResumeFile> {
        let positions = match std::fs::read_to_string(path) {
            Ok(text) => parse(&text)
                .with_context(|| format!("--resume-file {}: malformed", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => bail!("--resume-file {}: cannot read it: {e}", path.display()),
        };
        Ok(ResumeFile {
            path: path.to_owned(),
            positions,
            dirty: false,
            last_write: None,
        })
    }

    /// Where to recover `group` from: its stored position, if any.
    pub fn recover(&self, group: &str) -> Option<Recover> {
        self.positions.get(group).map(|position| Recover {
            offset: position.offset,
            epoch: position.epoch.clone(),
        })
    }

    /// Records `group`'s latest position (written by [`ResumeFile::write_if_due`] or
    /// [`ResumeFile::write`]).
    pub fn set(&mut self, group: &str, position: Position) {
        if self.positions.get(group) != Some(&position) {
            self.positions.insert(group.to_owned(), position);
            self.dirty = true;
        }
    }

    /// When the changed positions may be written: `None` when nothing changed.
    pub fn due(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        Some(match self.last_write {
            Some(last) => last + WRITE_INTERVAL,
            // Never written: right away.
            None => Instant::now(),
        })
    }

    /// Writes the positions if they changed and the last write is [`WRITE_INTERVAL`] old.
    pub fn write_if_due(&mut self, now: Instant) -> Result<()> {
        let due = self
            .last_write
            .is_none_or(|last| now >= last + WRITE_INTERVAL);
        if self.dirty && due {
            self.write(now)?;
        }
        Ok(())
    }

    /// Writes the positions now if they changed (at exit).
    pub fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.write(Instant::now())?;
        }
        Ok(())
    }

    /// Writes the file (atomically: `FILE.tmp`, then renamed), changed or not.
    pub fn write(&mut self, now: Instant) -> Result<()> {
        write_atomically(&self.path, render(&self.positions).as_bytes())
            .with_context(|| format!("--resume-file {}: cannot write it", self.path.display()))?;
        self.dirty = false;
        self.last_write = Some(now);
        Ok(())
    }
}

/// The positions a resume file holds.
pub fn parse(text: &str) -> Result<BTreeMap<String, Position>> {
    let value: Value = serde_json::from_str(text).with_context(|| format!("{SHAPE}: not JSON"))?;
    let Some(groups) = value.get("groups").and_then(Value::as_object) else {
        bail!("{SHAPE}: no \"groups\" object");
    };
    groups
        .iter()
        .map(|(group, entry)| {
            let offset = entry.get("offset").and_then(Value::as_u64);
            let epoch = entry
                .get("epoch")
                .and_then(Value::as_str)
                .and_then(|e| Epoch::new(e).ok());
            match (offset, epoch) {
                (Some(offset), Some(epoch)) => Ok((group.clone(), Position { offset, epoch })),
                _ => bail!("{SHAPE}: group {group:?} has no valid \"offset\" and \"epoch\""),
            }
        })
        .collect()
}

/// The text of a resume file holding `positions`.
pub fn render(positions: &BTreeMap<String, Position>) -> String {
    let groups: Map<String, Value> = positions
        .iter()
        .map(|(group, position)| {
            let entry = json!({"offset": position.offset, "epoch": position.epoch.as_str()});
            (group.clone(), entry)
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&json!({ "groups": groups }))
        .unwrap_or_else(|_| unreachable!("a JSON value always serializes"));
    text.push('\n');
    text
}

/// `path` with `.tmp` after its file name.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes `contents` to `path`.tmp, syncs it, and renames it over `path`.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: Epoch::new(epoch).unwrap(),
        }
    }

    /// A fresh directory under the system's temporary one, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "client-cli-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_and_renders_positions() {
        let positions =
            parse(r#"{"groups":{"g 1":{"offset":17,"epoch":"e-1"},"2":{"offset":0,"epoch":"x"}}}"#)
                .unwrap();
        assert_eq!(
            positions,
            BTreeMap::from([
                ("2".to_owned(), at(0, "x")),
                ("g 1".to_owned(), at(17, "e-1")),
            ])
        );
        assert_eq!(parse(&render(&positions)).unwrap(), positions);
        let value: Value = serde_json::from_str(&render(&positions)).unwrap();
        assert_eq!(
            value,
            json!({"groups":{"g 1":{"offset":17,"epoch":"e-1"},"2":{"offset":0,"epoch":"x"}}})
        );
        assert_eq!(parse(r#"{"groups":{}}"#).unwrap(), BTreeMap::new());
        // Other keys are left for later versions.
        assert_eq!(
            parse(r#"{"version":2,"groups":{"g":{"offset":1,"epoch":"e","at":5}}}"#).unwrap(),
            BTreeMap::from([("g".to_owned(), at(1, "e"))])
        );
    }

    #[test]
    fn malformed_files_are_errors() {
        for bad in [
            "",
            "{",
            "[]",
            "{}",
            r#"{"groups":[]}"#,
            r#"{"groups":{"g":{"offset":1}}}"#,
            r#"{"groups":{"g":{"epoch":"e"}}}"#,
            r#"{"groups":{"g":{"offset":-1,"epoch":"e"}}}"#,
            r#"{"groups":{"g":{"offset":1.5,"epoch":"e"}}}"#,
            r#"{"groups":{"g":{"offset":1,"epoch":"a b"}}}"#,
            r#"{"groups":{"g":{"offset":1,"epoch":""}}}"#,
            r#"{"groups":{"g":7}}"#,
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with(SHAPE), "{bad:?}: {err}");
        }
        let dir = TempDir::new("malformed");
        let path = dir.file("state.json");
        std::fs::write(&path, "{\"groups\":{\"g\":{}}}").unwrap();
        let err = format!("{:#}", ResumeFile::load(&path).unwrap_err());
        assert!(
            err.starts_with(&format!("--resume-file {}: malformed: ", path.display())),
            "{err}"
        );
        assert!(err.contains("\"g\""), "{err}");
        // A directory cannot be read as the file.
        let err = format!("{:#}", ResumeFile::load(&dir.0).unwrap_err());
        assert!(err.contains("cannot read it"), "{err}");
    }

    #[test]
    fn a_missing_file_holds_no_position_and_is_created_on_write() {
        let dir = TempDir::new("missing");
        let path = dir.file("state.json");
        let mut file = ResumeFile::load(&path).unwrap();
        assert_eq!(file.recover("g"), None);
        assert_eq!(file.due(), None);
        file.flush().unwrap();
        assert!(!path.exists(), "nothing changed: nothing written");
        file.set("g", at(3, "e"));
        file.flush().unwrap();
        assert_eq!(
            parse(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            BTreeMap::from([("g".to_owned(), at(3, "e"))])
        );
        assert!(!tmp_path(&path).exists());
        assert_eq!(
            ResumeFile::load(&path).unwrap().recover("g"),
            Some(Recover {
                offset: 3,
                epoch: Epoch::new("e").unwrap()
            })
        );
    }

    #[test]
    fn writes_keep_other_groups_and_replace_the_file() {
        let dir = TempDir::new("keep");
        let path = dir.file("state.json");
        std::fs::write(
            &path,
            r#"{"groups":{"other":{"offset":9,"epoch":"o"},"g":{"offset":1,"epoch":"e"}}}"#,
        )
        .unwrap();
        // A leftover of a run that died while writing is overwritten.
        std::fs::write(tmp_path(&path), "garbage").unwrap();
        let mut file = ResumeFile::load(&path).unwrap();
        file.set("g", at(2, "e"));
        file.set("new", at(0, "n"));
        file.write(Instant::now()).unwrap();
        assert_eq!(
            parse(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            BTreeMap::from([
                ("g".to_owned(), at(2, "e")),
                ("new".to_owned(), at(0, "n")),
                ("other".to_owned(), at(9, "o")),
            ])
        );
        assert!(!tmp_path(&path).exists());
        assert_eq!(tmp_path(Path::new("a/s.json")), Path::new("a/s.json.tmp"));
    }

    #[test]
    fn writes_are_spaced_but_the_last_is_not_lost() {
        let dir = TempDir::new("spaced");
        let path = dir.file("state.json");
        let mut file = ResumeFile::load(&path).unwrap();
        let start = Instant::now();
        file.set("g", at(1, "e"));
        // Never written yet: due now.
        assert!(file.due().is_some_and(|due| due <= Instant::now()));
        file.write_if_due(start).unwrap();
        assert_eq!(file.due(), None);
        let read = || parse(&std::fs::read_to_string(&path).unwrap()).unwrap()["g"].offset;
        assert_eq!(read(), 1);

        // The same position again changes nothing.
        file.set("g", at(1, "e"));
        assert_eq!(file.due(), None);

        file.set("g", at(2, "e"));
        assert_eq!(file.due(), Some(start + WRITE_INTERVAL));
        file.write_if_due(start + WRITE_INTERVAL / 2).unwrap();
        assert_eq!(read(), 1, "too soon after the last write");
        file.set("g", at(3, "e"));
        file.write_if_due(start + WRITE_INTERVAL).unwrap();
        assert_eq!(read(), 3);
        assert_eq!(file.due(), None);

        file.set("g", at(4, "f"));
        file.write_if_due(start + WRITE_INTERVAL).unwrap();
        assert_eq!(read(), 3);
        // At exit, whatever the time.
        file.flush().unwrap();
        assert_eq!(read(), 4);
        assert_eq!(file.recover("g").unwrap().epoch.as_str(), "f");
    }

    #[test]
    fn an_unwritable_file_is_an_error() {
        let dir = TempDir::new("unwritable");
        let path = dir.file("no-such-dir").join("state.json");
        let mut file = ResumeFile::load(&path).unwrap();
        file.set("g", at(1, "e"));
        let err = format!("{:#}", file.flush().unwrap_err());
        assert!(
            err.starts_with(&format!(
                "--resume-file {}: cannot write it",
                path.display()
            )),
            "{err}"
        );
    }
}
