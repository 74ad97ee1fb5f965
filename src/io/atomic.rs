//! Atomic output files: write to a temporary file in the target's directory, flush and fsync it,
//! then rename it over the target. A reader sees either the old file or the complete new one,
//! never a half-written file; on any error the temporary file is removed and an existing target
//! is untouched. The permissions of an existing target are kept.
//!
//! Both syncs stay. The `fsync` of the temporary file before the rename is what makes the
//! rename atomic across a crash: without it a file system may commit the rename before the
//! data, and a power loss leaves a truncated or empty target. The `fsync` of the directory
//! after the rename makes the new file durable when the call returns (without it a crash
//! within the file system's commit interval brings back the old, complete file). The cost of
//! the first is reduced, not removed: the writeback of the data is started every MiB while
//! the rest is still being written (`sync_file_range` on Linux), so the `fsync` waits only for
//! the tail.
//!
//! ```
//! use synbal::io::atomic::write_file;
//! let dir = tempfile::tempdir().unwrap();
//! let out = dir.path().join("out.json");
//! write_file(&out, b"{}\n").unwrap();
//! assert_eq!(std::fs::read(&out).unwrap(), b"{}\n");
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// Why an output file could not be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AtomicError {
    /// Writing, syncing or renaming failed.
    #[error("cannot write {}: {error}", path.display())]
    Io {
        /// The target file.
        path: PathBuf,
        /// The I/O error (part of the message, not a separate source).
        error: std::io::Error,
    },
    /// The target is a directory or has no file name.
    #[error("cannot write {}: not a file path", path.display())]
    NotAFile {
        /// The target.
        path: PathBuf,
    },
    /// The directory of the target does not exist.
    #[error("cannot write {}: the directory {} does not exist", path.display(), dir.display())]
    MissingDirectory {
        /// The target.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The target is the input file and overwriting it was not allowed.
    #[error("refusing to overwrite the input file {} (use --in-place to allow it)", path.display())]
    WouldOverwriteInput {
        /// The target (same file as the input).
        path: PathBuf,
    },
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `target` atomically (temporary file in the same directory, flush, fsync,
/// rename; the directory is synced afterwards where the platform allows it).
pub fn write_file(target: &Path, contents: &[u8]) -> Result<(), AtomicError> {
    write_with(target, |w| w.write_all(contents))
}

/// Like [`write_file`], with the contents streamed by `write` into a buffered writer. If `write`
/// fails, the temporary file is removed and `target` is untouched.
///
/// ```
/// use std::io::Write;
/// use synbal::io::atomic::write_with;
/// let dir = tempfile::tempdir().unwrap();
/// let out = dir.path().join("out.txt");
/// write_with(&out, |w| (0..3).try_for_each(|k| write!(w, "{k}"))).unwrap();
/// assert_eq!(std::fs::read(&out).unwrap(), b"012");
/// ```
pub fn write_with(
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), AtomicError> {
    let io_err = |error| AtomicError::Io {
        path: target.to_path_buf(),
        error,
    };
    let Some(file_name) = target.file_name() else {
        return Err(AtomicError::NotAFile {
            path: target.to_path_buf(),
        });
    };
    if target.is_dir() {
        return Err(AtomicError::NotAFile {
            path: target.to_path_buf(),
        });
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let permissions = fs::metadata(target).ok().map(|m| m.permissions());
    // Create a fresh temporary file (never reuse an existing one).
    let (tmp, mut file) = loop {
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".synbal-tmp-{}-{k}", std::process::id()));
        let tmp = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(e)),
        }
    };
    let result = (|| -> std::io::Result<()> {
        let mut buffered = BufWriter::with_capacity(1 << 16, EarlyWriteback::new(&mut file));
        write(&mut buffered)?;
        buffered.flush()?;
        drop(buffered);
        if let Some(p) = permissions {
            file.set_permissions(p)?;
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // Make the rename durable; not every platform can open a directory, so this is best effort.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Bytes written to the temporary file after which the kernel is asked to start writing them
/// to the disk.
const WRITEBACK_EVERY: u64 = 1 << 20;

/// A file writer that starts the disk writeback of every [`WRITEBACK_EVERY`] bytes as soon as
/// they are written (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`: asynchronous, it waits
/// for nothing), so that the `fsync` before the rename only waits for the tail instead of the
/// whole file. The guarantee is still the `fsync`'s; this only moves disk work to the time
/// the rest of the file is being formatted. Elsewhere a plain writer.
struct EarlyWriteback<'f> {
    file: &'f mut File,
    /// Bytes written so far.
    written: u64,
    /// Bytes whose writeback was started.
    started: u64,
}

impl<'f> EarlyWriteback<'f> {
    fn new(file: &'f mut File) -> Self {
        EarlyWriteback {
            file,
            written: 0,
            started: 0,
        }
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) {
        use std::os::unix::io::AsRawFd;
        let len = self.written - self.started;
        // SAFETY: a plain system call on a file descriptor this writer borrows; it reads no
        // memory of this process. Failure (e.g. a file system without support) only means the
        // fsync does all the work, so its result is ignored.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.started as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = self.written;
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) {
        self.started = self.written;
    }
}

impl Write for EarlyWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Checks, before any work is done, that `target` can be a file: it is not a directory and its
/// directory exists.
///
/// ```
/// use synbal::io::atomic::check_target;
/// let dir = tempfile::tempdir().unwrap();
/// assert!(check_target(&dir.path().join("out.json")).is_ok());
/// assert!(check_target(dir.path()).is_err());
/// assert!(check_target(&dir.path().join("missing").join("out.json")).is_err());
/// ```
pub fn check_target(target: &Path) -> Result<(), AtomicError> {
    if target.file_name().is_none() || target.is_dir() {
        return Err(AtomicError::NotAFile {
            path: target.to_path_buf(),
        });
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(AtomicError::MissingDirectory {
            path: target.to_path_buf(),
            dir,
        });
    }
    Ok(())
}

/// Whether `a` and `b` name the same existing file (same device and inode on Unix; same canonical
/// path elsewhere). A path that does not exist is never the same file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
    }
}

/// Whether two output paths name the same file, existing or not: the same existing file, or the
/// same file name in the same (canonical) directory.
///
/// ```
/// use synbal::io::atomic::same_target;
/// let dir = tempfile::tempdir().unwrap();
/// let a = dir.path().join("out.json");
/// let b = dir.path().join(".").join("out.json");
/// assert!(same_target(&a, &b));
/// assert!(!same_target(&a, &dir.path().join("report.json")));
/// ```
pub fn same_target(a: &Path, b: &Path) -> bool {
    if a == b || same_file(a, b) {
        return true;
    }
    let norm = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Some((fs::canonicalize(dir).ok()?, p.file_name()?.to_os_string()))
    };
    matches!((norm(a), norm(b)), (Some(x), Some(y)) if x == y)
}

/// Refuses `output` when it is the same file as `input` (through any path, symlink or hard link),
/// unless `allow_in_place`.
///
/// ```
/// use synbal::io::atomic::check_not_input;
/// let dir = tempfile::tempdir().unwrap();
/// let input = dir.path().join("net.json");
/// std::fs::write(&input, "{}").unwrap();
/// assert!(check_not_input(&input, &input, false).is_err());
/// assert!(check_not_input(&input, &input, true).is_ok());
/// assert!(check_not_input(&input, &dir.path().join("other.json"), false).is_ok());
/// ```
pub fn check_not_input(
    input: &Path,
    output: &Path,
    allow_in_place: bool,
) -> Result<(), AtomicError> {
    if !allow_in_place && same_file(input, output) {
        return Err(AtomicError::WouldOverwriteInput {
            path: output.to_path_buf(),
        });
    }
    Ok(())
}
