//! `--daemon` and `--pidfile FILE`.
//!
//! `fork()` in a threaded Rust program is unsound, so `--daemon` re-executes the program: the
//! parent starts the same executable with the same arguments, minus `--daemon`, plus the hidden
//! [`DAEMONIZED_FLAG`], standard streams on `/dev/null`, and exits; the child calls
//! [`become_session_leader`] first thing, leaving the terminal's session. The child keeps the
//! working directory, so relative paths (`updraft.ini`, `--www`) mean the same in both.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The flag asking for a daemon.
pub const DAEMON_FLAG: &str = "--daemon";
/// The hidden flag the re-executed child is started with.
pub const DAEMONIZED_FLAG: &str = "--daemonized";

/// The command that re-executes `program` as a daemon: `args` without [`DAEMON_FLAG`], plus
/// [`DAEMONIZED_FLAG`], standard streams on `/dev/null`.
fn reexec_command(program: impl Into<OsString>, args: &[String]) -> Command {
    let mut command = Command::new(program.into());
    command
        .args(
            args.iter()
                .filter(|a| a.as_str() != DAEMON_FLAG && a.as_str() != DAEMONIZED_FLAG),
        )
        .arg(DAEMONIZED_FLAG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Starts the current executable again with `args` (the command line without the program
/// name) minus `--daemon`, plus `--daemonized`, its standard streams on `/dev/null`; returns
/// the child's pid. The caller then exits 0; the child calls [`become_session_leader`].
///
/// The child is deliberately left in the caller's process group: `setsid()` fails for a
/// process-group leader, so a child started in a group of its own could never leave the
/// terminal's session.
pub fn daemonize_by_reexec(args: &[String]) -> io::Result<u32> {
    let program = std::env::current_exe()?;
    Ok(reexec_command(program, args).spawn()?.id())
}

/// Makes this process the leader of a new session with no controlling terminal (`setsid()`),
/// so a closing terminal's SIGHUP and its Ctrl-C no longer reach it. Already leading a
/// process group (EPERM: `setsid()` is then refused) is not an error.
#[allow(unsafe_code)]
pub fn become_session_leader() -> io::Result<()> {
    // SAFETY: setsid() takes no arguments, touches no memory of ours and is async-signal-safe;
    // it only changes this process's session and process group.
    let result = unsafe { libc::setsid() };
    if result >= 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EPERM) => Ok(()),
        _ => Err(error),
    }
}

/// Whether a process with this pid exists (`/proc/<pid>`).
fn process_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// The pid a pid file names: `Ok(None)` for an empty file, an error for anything that is not
/// a decimal number (a wrong `--pidfile` must not overwrite some other file).
fn parse_pid(path: &Path, text: &str) -> io::Result<Option<u32>> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    trimmed.parse().map(Some).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} exists and is not a pid file; remove it or choose another --pidfile",
                path.display()
            ),
        )
    })
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// A pid file holding this process's pid, removed on drop if it still does.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes `"<pid>\n"` to `path`, complete when it appears (written to a temporary file,
    /// then linked into place). A file naming a live process is refused (`AlreadyExists`, the
    /// message naming the path and the pid); a stale one is replaced.
    pub fn create(path: impl AsRef<Path>) -> io::Result<PidFile> {
        let path = path.as_ref().to_path_buf();
        let pid = std::process::id();
        let tmp = with_suffix(&path, &format!(".tmp.{pid}"));
        let result = Self::write_tmp(&tmp, pid).and_then(|()| Self::link_into_place(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        result.map(|()| PidFile { path, pid })
    }

    fn write_tmp(tmp: &Path, pid: u32) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        file.write_all(format!("{pid}\n").as_bytes())?;
        file.sync_all()
    }

    /// Hard-links `tmp` to `path`, which fails when `path` exists: two servers starting at
    /// once cannot both win. A stale `path` is removed and the link tried once more.
    fn link_into_place(tmp: &Path, path: &Path) -> io::Result<()> {
        match std::fs::hard_link(tmp, path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => return other,
        }
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => parse_pid(path, &text)?,
            // Removed meanwhile: nothing stale to clear.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(other) = existing.filter(|&p| process_alive(p)) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} names process {other}, which is running; is another updraft started?",
                    path.display()
                ),
            ));
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::hard_link(tmp, path)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| parse_pid(&self.path, &text).ok().flatten())
            == Some(self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    /// A pid no Linux system hands out (above the largest `pid_max`, 2^22).
    const DEAD_PID: u32 = 4_000_000_000;
    /// Set in the environment of the child run of [`setsid_makes_a_new_session`].
    const CHILD_ENV: &str = "UPDRAFT_TEST_SETSID_CHILD";

    /// A unique path under the temporary directory (not created).
    fn temp_path(tag: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("updraft-daemon-{tag}-{}-{n}", std::process::id()))
    }

    /// The session id of this process, from `/proc/self/stat`.
    fn own_session() -> u32 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        // After "pid (comm) ": state, ppid, pgrp, session.
        let rest = &stat[stat.rfind(')').expect("comm") + 1..];
        rest.split_whitespace()
            .nth(3)
            .expect("session")
            .parse()
            .expect("number")
    }

    #[test]
    fn create_writes_the_pid_and_drop_removes_it() {
        let path = temp_path("create");
        let pid_file = PidFile::create(&path).expect("create");
        assert_eq!(pid_file.path(), path);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(pid_file);
        assert!(!path.exists());
        // No temporary file left behind.
        assert!(!with_suffix(&path, &format!(".tmp.{}", std::process::id())).exists());
    }

    #[test]
    fn stale_pid_file_is_replaced() {
        let path = temp_path("stale");
        for stale in [format!("{DEAD_PID}\n"), String::new()] {
            std::fs::write(&path, stale).expect("write");
            let pid_file = PidFile::create(&path).expect("replace stale");
            let text = std::fs::read_to_string(&path).expect("read");
            assert_eq!(text, format!("{}\n", std::process::id()));
            drop(pid_file);
            assert!(!path.exists());
        }
    }

    #[test]
    fn live_pid_file_is_refused_and_left_alone() {
        let path = temp_path("live");
        let own = format!("{}\n", std::process::id());
        std::fs::write(&path, &own).expect("write");
        let e = PidFile::create(&path).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let message = e.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), own);
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn foreign_file_is_not_overwritten() {
        let path = temp_path("foreign");
        std::fs::write(&path, "root:x:0:0\n").expect("write");
        let e = PidFile::create(&path).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "root:x:0:0\n"
        );
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn drop_leaves_a_file_that_names_another_process() {
        let path = temp_path("replaced");
        let pid_file = PidFile::create(&path).expect("create");
        std::fs::write(&path, format!("{DEAD_PID}\n")).expect("overwrite");
        drop(pid_file);
        assert_eq!(
            std::fs::read_to_string(&path).expect("kept"),
            format!("{DEAD_PID}\n")
        );
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn reexec_drops_daemon_and_adds_daemonized() {
        let args: Vec<String> = ["--config", "a.ini", "--daemon", "--pidfile", "p"]
            .map(String::from)
            .to_vec();
        let command = reexec_command("/usr/local/bin/updraft", &args);
        assert_eq!(command.get_program(), "/usr/local/bin/updraft");
        let got: Vec<_> = command.get_args().collect();
        assert_eq!(got, ["--config", "a.ini", "--pidfile", "p", "--daemonized"]);
    }

    #[test]
    fn reexec_child_runs_detached_on_dev_null() {
        let out = temp_path("reexec");
        // `sh -c SCRIPT --daemon` becomes `sh -c SCRIPT --daemonized`: $0 is the added flag.
        let script = format!(
            "i=$(readlink /proc/$$/fd/0); o=$(readlink /proc/$$/fd/1); e=$(readlink /proc/$$/fd/2); \
             printf '%s\\n' \"$i\" \"$o\" \"$e\" \"$0\" > {0}.part && mv {0}.part {0}",
            out.display()
        );
        let args = ["-c".to_string(), script, DAEMON_FLAG.to_string()];
        let mut child = reexec_command("/bin/sh", &args).spawn().expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
        let text = std::fs::read_to_string(&out).expect("child output");
        std::fs::remove_file(&out).expect("cleanup");
        assert_eq!(text, "/dev/null\n/dev/null\n/dev/null\n--daemonized\n");
    }

    /// Run twice: as the test, it re-runs itself in a child process with [`CHILD_ENV`] set;
    /// there, it calls [`become_session_leader`] and checks it leads a new session.
    #[test]
    fn setsid_makes_a_new_session() {
        if std::env::var_os(CHILD_ENV).is_some() {
            become_session_leader().expect("setsid");
            assert_eq!(own_session(), std::process::id());
            // A second call (now a group leader: EPERM) is not an error.
            become_session_leader().expect("already leader");
            return;
        }
        let exe = std::env::current_exe().expect("exe");
        let output = Command::new(exe)
            .args([
                "--exact",
                "ops::daemon::tests::setsid_makes_a_new_session",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::null())
            .output()
            .expect("run child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
