//! Crash-safe file writing, and streaming checksums.
//!
//! Writing a file in place (`File::create` then `write`) is not crash-safe: a crash, a full disk
//! or a killed process in the middle leaves a *torn* file, part new and part missing, under the
//! name readers trust. Everything this crate keeps on disk for later runs (model generations,
//! the registry's `CURRENT` pointer) is therefore written the classic way:
//!
//! 1. write the new content to a temporary file in the *same directory* (so the rename below
//!    stays within one file system and is atomic),
//! 2. `fsync` the temporary file, so its content is on disk before its name is,
//! 3. `rename` it over the destination, which atomically swaps which inode the name points to,
//! 4. `fsync` the directory, so the rename itself survives a power loss.
//!
//! After a crash at any point a reader finds either the complete old file or the complete new
//! one, never a torn one. What can be left behind is a temporary file named
//! `.{file_name}.tmp-{pid}-{counter}`: hidden, never read, and recognisable (with the writer's
//! process id) by whoever wants to clean it up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest;

/// Distinguishes temporary files of concurrent writers within one process (the process id
/// distinguishes processes).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Buffer size for [`sha256_file`].
const HASH_BUFFER_BYTES: usize = 64 * 1024;

/// The directory `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The prefix every temporary file for `file_name` starts with: `.{file_name}.tmp-`. A cleaner
/// can match leftovers with it; the rest of the name is `{pid}-{counter}`.
pub fn tmp_prefix(file_name: &str) -> String {
    format!(".{file_name}.tmp-")
}

/// Atomically replaces (or creates) `path` with `bytes`: after a crash the file holds either its
/// old content or `bytes`, never a mix. See the module documentation for how.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |file| io::Write::write_all(file, bytes))
}

/// Like [`write_atomic`], for content produced by a streaming writer: `write` receives the
/// temporary file and writes the full new content to it. If it wraps the file in a buffer
/// (`BufWriter`), it must flush that buffer before returning; the file itself is synced here.
///
/// If `write` fails (or anything later does), the temporary file is removed and `path` is left
/// untouched.
pub fn write_atomic_with<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut File) -> io::Result<()>,
{
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = parent_dir(path);
    let tmp: PathBuf = dir.join(format!(
        "{}{}-{}",
        tmp_prefix(&file_name.to_string_lossy()),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    // `create_new` so that we never write through a file someone else is writing.
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = write(&mut file).and_then(|()| file.sync_all());
    drop(file);
    let result = written
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        // Best effort: after a failed rename the temporary file is still there; after a failed
        // directory sync it is already gone, and removing it fails harmlessly.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Flushes a directory's entries (file creations, renames, removals in it) to disk.
///
/// `fsync` on a file makes its content durable, but not its *name*: that lives in the directory,
/// which needs its own `fsync`. Without it a rename can be lost on power failure even though the
/// renamed file's data survived. On non-Unix platforms directories cannot be opened for syncing
/// and this does nothing.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Flushes an existing file's content to disk (`fsync`), e.g. after a third party wrote it.
pub fn sync_file(path: &Path) -> io::Result<()> {
    // Windows refuses to flush a handle opened only for reading; Unix does not care.
    let file = OpenOptions::new()
        .read(true)
        .write(cfg!(windows))
        .open(path)?;
    file.sync_all()
}

/// Reads a small file whole: it must be a regular file (not a FIFO, which would block the reader
/// until someone writes to it, nor a device or a directory) of at most `max_bytes`. For the
/// pointers and manifests a server reads on a timer, so that a file swapped for something else
/// is an error, not a hang or an unbounded read.
pub fn read_small(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a regular file ({:?})", meta.file_type()),
        ));
    }
    if meta.len() > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes, more than the {max_bytes} expected", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)?
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("grew past the {max_bytes} bytes expected while being read"),
        ));
    }
    Ok(bytes)
}

/// The SHA-256 of a file's content (lowercase hex) and its length in bytes, read in 64 KiB
/// chunks so that files of any size (model weights) hash in constant memory.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    let mut total: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finish()), total))
}

/// The SHA-256 of a byte slice, lowercase hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// The SHA-256 of a byte slice.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes")
}

/// Scratch directories for unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TestDir(pub(crate) PathBuf);

    impl TestDir {
        pub(crate) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "hch-unit-{}-{}-{name}",
                std::process::id(),
                DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use test_support::TestDir;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sha256_gives_the_standard_digests() {
        // FIPS 180-2's examples, and a file hashed in chunks equal to the slice hashed at once.
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_bytes(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let dir = TestDir::new("sha");
        let path = dir.0.join("big");
        let content: Vec<u8> = (0..HASH_BUFFER_BYTES * 2 + 7).map(|i| i as u8).collect();
        fs::write(&path, &content).unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            (sha256_bytes(&content), content.len() as u64)
        );
    }

    #[test]
    fn write_atomic_creates_then_replaces_content() {
        let dir = TestDir::new("replace");
        let path = dir.0.join("data.json");
        write_atomic(&path, b"old content that is longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old content that is longer");
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn write_atomic_leaves_no_temporary_files() {
        let dir = TestDir::new("no-temp");
        let path = dir.0.join("CURRENT");
        for i in 0..5 {
            write_atomic(&path, format!("{i}").as_bytes()).unwrap();
        }
        assert_eq!(entries(&dir.0), vec!["CURRENT".to_string()]);
    }

    #[test]
    fn write_into_missing_directory_fails_and_leaves_nothing() {
        let dir = TestDir::new("missing-dir");
        let path = dir.0.join("does-not-exist").join("file.bin");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(entries(&dir.0).is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn failing_streaming_writer_keeps_old_file_and_removes_temp() {
        let dir = TestDir::new("failing-writer");
        let path = dir.0.join("weights.bin");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"partial new content")?;
            Err(io::Error::other("writer gave up"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("writer gave up"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(entries(&dir.0), vec!["weights.bin".to_string()]);
    }

    #[test]
    fn streaming_writer_replaces_content() {
        let dir = TestDir::new("streaming");
        let path = dir.0.join("out.txt");
        write_atomic_with(&path, |f| {
            let mut w = io::BufWriter::new(f);
            for i in 0..3 {
                writeln!(w, "line {i}")?;
            }
            w.flush()
        })
        .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "line 0\nline 1\nline 2\n"
        );
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn sha256_file_matches_known_vector_and_streams_large_files() {
        let dir = TestDir::new("sha");
        let small = dir.0.join("abc");
        fs::write(&small, b"abc").unwrap();
        assert_eq!(
            sha256_file(&small).unwrap(),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
                3
            )
        );

        // Larger than several buffers and not a multiple of the buffer size.
        let data: Vec<u8> = (0..(3 * HASH_BUFFER_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let big = dir.0.join("big");
        fs::write(&big, &data).unwrap();
        let (hex, len) = sha256_file(&big).unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(hex, sha256_bytes(&data));

        assert_eq!(
            sha256_file(&dir.0.join("absent")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
