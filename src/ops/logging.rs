//! Cumulus-compatible logging on top of `tracing`.
//!
//! Cumulus takes `--log=0..8` (0 nothing, 1 fatal, 2 critical, 3 error, 4 warning, 5 notice,
//! 6 information, 7 debug, 8 trace) and, with a `[logs]` section, writes to
//! `<directory>/<name>.0`, rotating at 1 MB per file and keeping `<name>.0` … `<name>.10`.
//! [`init`] installs the global subscriber that does the same; [`LogHandle::reopen`] reopens the
//! file after an external `logrotate` moved it (SIGHUP).

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing_subscriber::filter::{Directive, EnvFilter, LevelFilter};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::MakeWriter;

/// The Cumulus level used when `--log` is not given (6: information).
pub const DEFAULT_LEVEL: u8 = 6;
/// The highest Cumulus level (8: trace).
pub const MAX_LEVEL: u8 = 8;
/// Size at which the current file is rotated (Cumulus: 1 MB per file).
pub const ROTATE_BYTES: u64 = 1024 * 1024;
/// Files kept: `<name>.0` (current) to `<name>.10` (oldest).
pub const MAX_FILES: usize = 11;

/// Maps a Cumulus `--log` level to a `tracing` level filter.
///
/// 0 is off; 1 (fatal), 2 (critical) and 3 (error) are ERROR; 4 (warning) is WARN; 5 (notice)
/// and 6 (information) are INFO; 7 is DEBUG; 8 is TRACE. Anything above 8 is an error.
pub fn level_filter(cumulus_level: u8) -> Result<LevelFilter, String> {
    Ok(match cumulus_level {
        0 => LevelFilter::OFF,
        1..=3 => LevelFilter::ERROR,
        4 => LevelFilter::WARN,
        5 | 6 => LevelFilter::INFO,
        7 => LevelFilter::DEBUG,
        MAX_LEVEL => LevelFilter::TRACE,
        other => {
            return Err(format!(
                "--log={other}: the log level must be 0 (nothing) to {MAX_LEVEL} (trace)"
            ))
        }
    })
}

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTarget {
    /// Directory of the rotated files (`logs.directory`); `None` writes to standard error.
    pub directory: Option<PathBuf>,
    /// File name stem (`logs.name`): files are `<name>.0` … `<name>.10`.
    pub name: String,
}

/// The open current file and what has been written to it.
#[derive(Debug)]
struct RotatingFile {
    directory: PathBuf,
    name: String,
    /// `None` after a failed (re)open: the next write tries again.
    file: Option<File>,
    written: u64,
}

impl RotatingFile {
    /// `<directory>/<name>.<index>`.
    fn path(&self, index: usize) -> PathBuf {
        self.directory.join(format!("{}.{index}", self.name))
    }

    /// Opens (appending to) the current file, creating the directory when missing.
    fn open_current(&mut self) -> io::Result<()> {
        self.file = None;
        std::fs::create_dir_all(&self.directory)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(0))?;
        self.written = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Shifts `.9` to `.10` … `.0` to `.1`, dropping the oldest, and starts a fresh `.0`.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        ignore_missing(std::fs::remove_file(self.path(MAX_FILES - 1)))?;
        for index in (0..MAX_FILES - 1).rev() {
            ignore_missing(std::fs::rename(self.path(index), self.path(index + 1)))?;
        }
        self.open_current()
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if self.file.is_none() {
            self.open_current()?;
        }
        if self.written > 0 && self.written.saturating_add(len) > ROTATE_BYTES {
            self.rotate()?;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))?;
        file.write_all(buf)?;
        self.written = self.written.saturating_add(len);
        Ok(buf.len())
    }
}

/// `Ok` for a missing file, the error otherwise.
fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A cloneable handle on `<directory>/<name>.0` that rotates it at [`ROTATE_BYTES`].
///
/// Each `write` call is one log line from the formatter and is never split across files.
#[derive(Debug, Clone)]
pub struct RotatingWriter {
    inner: Arc<Mutex<RotatingFile>>,
}

impl RotatingWriter {
    /// Opens `<directory>/<name>.0` for appending, creating the directory when missing.
    pub fn open(directory: &Path, name: &str) -> io::Result<RotatingWriter> {
        let mut file = RotatingFile {
            directory: directory.to_path_buf(),
            name: name.to_string(),
            file: None,
            written: 0,
        };
        file.open_current()?;
        Ok(RotatingWriter {
            inner: Arc::new(Mutex::new(file)),
        })
    }

    /// Closes and reopens the current file: after an external tool renamed it, a new one
    /// is created.
    pub fn reopen(&self) -> io::Result<()> {
        self.lock().open_current()
    }

    fn lock(&self) -> MutexGuard<'_, RotatingFile> {
        // A panic while holding the lock leaves at worst a partial line: keep logging.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Write for RotatingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.lock().file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for RotatingWriter {
    type Writer = RotatingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// What [`init`] installed, for SIGHUP.
#[derive(Debug, Clone)]
pub struct LogHandle {
    /// The rotating file, when logging to files.
    file: Option<RotatingWriter>,
}

impl LogHandle {
    /// Closes and reopens the current log file (SIGHUP, after `logrotate` moved it); nothing
    /// to do when logging to standard error. The error names the file.
    pub fn reopen(&self) -> Result<(), String> {
        match &self.file {
            Some(writer) => writer.reopen().map_err(|e| {
                let path = writer.lock().path(0);
                format!("cannot reopen log file {}: {e}", path.display())
            }),
            None => Ok(()),
        }
    }
}

/// The subscriber [`init`] installs, and its handle, without installing it.
fn build(
    level: u8,
    target: &LogTarget,
    env_override: Option<String>,
) -> Result<(impl tracing::Subscriber + Send + Sync, LogHandle), String> {
    let filter = match env_override {
        Some(spec) => EnvFilter::try_new(&spec).map_err(|e| format!("UPDRAFT_LOG={spec}: {e}"))?,
        None => EnvFilter::default().add_directive(Directive::from(level_filter(level)?)),
    };
    let (writer, file, ansi) = match &target.directory {
        Some(directory) => {
            let file = RotatingWriter::open(directory, &target.name).map_err(|e| {
                format!(
                    "cannot open log file {}: {e}",
                    directory.join(format!("{}.0", target.name)).display()
                )
            })?;
            (BoxMakeWriter::new(file.clone()), Some(file), false)
        }
        // Colours only for a person at a terminal, not for journald or a redirect.
        None => (
            BoxMakeWriter::new(io::stderr),
            None,
            io::stderr().is_terminal(),
        ),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi)
        .finish();
    Ok((subscriber, LogHandle { file }))
}

/// Installs the global subscriber: Cumulus `level` (0..=8), unless `env_override` (the
/// `UPDRAFT_LOG` filter, e.g. `debug,rtmfp=trace`) is given, which wins; to standard error or
/// to rotated files. The error names the bad level, filter or path.
pub fn init(
    level: u8,
    target: &LogTarget,
    env_override: Option<String>,
) -> Result<LogHandle, String> {
    let (subscriber, handle) = build(level, target, env_override)?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("updraft-logging-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The names of the files in `dir`, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn level_mapping_follows_cumulus() {
        let table = [
            (0, LevelFilter::OFF),
            (1, LevelFilter::ERROR),
            (2, LevelFilter::ERROR),
            (3, LevelFilter::ERROR),
            (4, LevelFilter::WARN),
            (5, LevelFilter::INFO),
            (6, LevelFilter::INFO),
            (7, LevelFilter::DEBUG),
            (8, LevelFilter::TRACE),
        ];
        for (level, want) in table {
            assert_eq!(level_filter(level), Ok(want), "--log={level}");
        }
        assert_eq!(level_filter(DEFAULT_LEVEL), Ok(LevelFilter::INFO));
        for bad in [9, 200, u8::MAX] {
            let e = level_filter(bad).unwrap_err();
            assert!(e.contains(&format!("--log={bad}")) && e.contains("0") && e.contains("8"));
        }
    }

    #[test]
    fn rotates_past_one_mebibyte_into_dot_one() {
        let dir = TempDir::new("rotate");
        let writer = RotatingWriter::open(&dir.0.join("logs"), "updraft").expect("open");
        let line = [b'x'; 1000];
        let mut total = 0u64;
        while total <= ROTATE_BYTES {
            writer.make_writer().write_all(&line).expect("write");
            total += line.len() as u64;
        }
        let logs = dir.0.join("logs");
        assert_eq!(files(&logs), ["updraft.0", "updraft.1"]);
        let old = std::fs::metadata(logs.join("updraft.1"))
            .expect("meta")
            .len();
        let new = std::fs::metadata(logs.join("updraft.0"))
            .expect("meta")
            .len();
        assert!(old <= ROTATE_BYTES, "{old}");
        assert_eq!(old + new, total);
        // Whole writes only: no line split across files.
        assert_eq!(old % line.len() as u64, 0);
    }

    #[test]
    fn never_keeps_more_than_eleven_files() {
        let dir = TempDir::new("max");
        let writer = RotatingWriter::open(&dir.0, "log").expect("open");
        let chunk = vec![b'y'; 256 * 1024];
        let mut w = writer.make_writer();
        for _ in 0..(13 * ROTATE_BYTES as usize / chunk.len()) {
            w.write_all(&chunk).expect("write");
        }
        w.flush().expect("flush");
        let names = files(&dir.0);
        let want: Vec<String> = (0..MAX_FILES).map(|i| format!("log.{i}")).collect();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(names, want_sorted);
        for name in &want[1..] {
            assert_eq!(
                std::fs::metadata(dir.0.join(name)).expect("meta").len(),
                ROTATE_BYTES
            );
        }
    }

    #[test]
    fn reopen_after_external_rename_creates_a_new_file() {
        let dir = TempDir::new("reopen");
        let writer = RotatingWriter::open(&dir.0, "updraft").expect("open");
        writer.make_writer().write_all(b"before\n").expect("write");
        std::fs::rename(dir.0.join("updraft.0"), dir.0.join("moved")).expect("rename");
        writer
            .make_writer()
            .write_all(b"still old\n")
            .expect("write");
        let handle = LogHandle {
            file: Some(writer.clone()),
        };
        handle.reopen().expect("reopen");
        writer.make_writer().write_all(b"after\n").expect("write");
        let moved = std::fs::read_to_string(dir.0.join("moved")).expect("moved");
        assert_eq!(moved, "before\nstill old\n");
        let current = std::fs::read_to_string(dir.0.join("updraft.0")).expect("current");
        assert_eq!(current, "after\n");
        // Standard error has nothing to reopen.
        assert_eq!(LogHandle { file: None }.reopen(), Ok(()));
    }

    #[test]
    fn subscriber_writes_plain_lines_at_the_cumulus_level() {
        let dir = TempDir::new("subscriber");
        let target = LogTarget {
            directory: Some(dir.0.join("nested")),
            name: "updraft".into(),
        };
        let (subscriber, handle) = build(4, &target, None).expect("build");
        assert!(handle.file.is_some());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(port = 1935, "warned");
            tracing::info!("not shown at level 4");
        });
        let text = std::fs::read_to_string(dir.0.join("nested/updraft.0")).expect("log");
        assert!(
            text.contains("WARN") && text.contains("warned port=1935"),
            "{text}"
        );
        assert!(!text.contains("not shown"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "no ANSI colours in files: {text:?}"
        );
    }

    #[test]
    fn env_override_wins_over_the_level() {
        let dir = TempDir::new("env");
        let target = LogTarget {
            directory: Some(dir.0.clone()),
            name: "u".into(),
        };
        let (subscriber, _handle) = build(0, &target, Some("debug".into())).expect("build");
        tracing::subscriber::with_default(subscriber, || tracing::debug!("details"));
        let text = std::fs::read_to_string(dir.0.join("u.0")).expect("log");
        assert!(text.contains("details"), "{text}");
        let e = build(6, &target, Some("=[bad".into()))
            .err()
            .expect("bad filter");
        assert!(e.starts_with("UPDRAFT_LOG==[bad"), "{e}");
        assert!(build(9, &target, None)
            .err()
            .expect("bad level")
            .contains("--log=9"));
    }

    #[test]
    fn unusable_directory_is_an_error_naming_the_path() {
        let dir = TempDir::new("bad");
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let blocker = dir.0.join("file");
        std::fs::write(&blocker, b"not a directory").expect("write");
        let target = LogTarget {
            directory: Some(blocker.join("logs")),
            name: "updraft".into(),
        };
        let e = build(6, &target, None).err().expect("error");
        assert!(
            e.contains(&blocker.join("logs").display().to_string()),
            "{e}"
        );
    }
}
