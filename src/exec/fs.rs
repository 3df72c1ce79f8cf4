//! Filesystem effects: the tun device, forwarding sysctls, the socket
//! symlink (docs/protocols.md §1, §6).

use crate::machine::PrepStep;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

fn missing(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path).and_then(|_| std::fs::metadata(path)) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Creates `dev/net/tun` (char 10:200, 0600) under `root` when missing.
/// Anything already there is accepted as it is, as upstream.
pub fn ensure_tun(root: &Path) -> io::Result<()> {
    let dir = root.join("dev/net");
    if missing(&dir)? {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)?;
    }
    let tun = dir.join("tun");
    if missing(&tun)? {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &tun,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(10, 200),
        )?;
    }
    Ok(())
}

/// Sets each forwarding sysctl to 1 unless it already is: read first,
/// since many containers may not write sysctls an init container set.
pub fn ensure_forwarding(root: &Path, v4: bool, v6: bool) -> Result<(), String> {
    let mut paths = Vec::new();
    if v4 {
        paths.push(root.join("proc/sys/net/ipv4/ip_forward"));
    }
    if v6 {
        paths.push(root.join("proc/sys/net/ipv6/conf/all/forwarding"));
    }
    for path in paths {
        let value = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {:?}: {e}", path.display().to_string()))?;
        if value.trim() != "1" {
            std::fs::write(&path, b"1")
                .map_err(|e| format!("enabling {:?}: {e}", path.display().to_string()))?;
        }
    }
    Ok(())
}

/// Kernel-mode preparation: the tun device, then forwarding.
pub fn prepare_kernel(root: &Path, v4: bool, v6: bool) -> Result<(), (PrepStep, String)> {
    ensure_tun(root).map_err(|e| (PrepStep::Tun, e.to_string()))?;
    ensure_forwarding(root, v4, v6).map_err(|e| (PrepStep::Forwarding, e))
}

/// Makes `link` a symlink to `target`, creating its directory (0700).
pub fn symlink_socket(link: &Path, target: &Path) -> io::Result<()> {
    if let Some(dir) = link.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::os::unix::fs::symlink(target, link)
}

/// Writes `contents` to `path` atomically: a new temporary file (mode
/// 0600) in the same directory, synced, then renamed over `path`.
///
/// The temporary file is created exclusively (`O_CREAT|O_EXCL`, which never
/// follows a symlink, and `O_NOFOLLOW` besides) under a name nobody can
/// guess ahead (pid, time and a counter), so a link or file planted in a
/// shared directory such as /tmp is never written through; the rename
/// replaces a link at `path` itself rather than following it. A failure
/// leaves no temporary file behind.
pub fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path names no file"))?;
    let (tmp, mut f) = {
        let mut attempt = 0;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(
                ".{}-{nanos:x}-{}.tmp",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let tmp = path.with_file_name(tmp_name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let result = (|| {
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The most of a file containerboot reads into memory (config file,
/// service-account files): far above any real one, far below trouble.
pub const READ_LIMIT: u64 = 4 * 1024 * 1024;

/// Reads `path` whole, refusing one larger than [`READ_LIMIT`] (or endless,
/// like `/dev/zero`) with an error that says so.
pub fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(READ_LIMIT + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > READ_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB, which no such file is: check the path",
                READ_LIMIT / (1024 * 1024)
            ),
        ));
    }
    Ok(data)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_capped(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_is_written_only_when_not_already_on() {
        let root = tempfile::tempdir().unwrap();
        let v4 = root.path().join("proc/sys/net/ipv4/ip_forward");
        let v6 = root.path().join("proc/sys/net/ipv6/conf/all/forwarding");
        std::fs::create_dir_all(v4.parent().unwrap()).unwrap();
        std::fs::create_dir_all(v6.parent().unwrap()).unwrap();
        std::fs::write(&v4, "0\n").unwrap();
        std::fs::write(&v6, "1\n").unwrap();
        ensure_forwarding(root.path(), true, true).unwrap();
        assert_eq!(std::fs::read_to_string(&v4).unwrap(), "1");
        // Untouched: still has its newline.
        assert_eq!(std::fs::read_to_string(&v6).unwrap(), "1\n");
    }

    #[test]
    fn missing_sysctl_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        let err = ensure_forwarding(root.path(), true, false).unwrap_err();
        assert!(err.starts_with("reading \""), "{err}");
        assert!(err.contains("ipv4/ip_forward"), "{err}");
    }

    #[test]
    fn existing_tun_is_accepted_as_is() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev/net")).unwrap();
        std::fs::write(root.path().join("dev/net/tun"), b"").unwrap();
        ensure_tun(root.path()).unwrap();
        assert!(root.path().join("dev/net/tun").is_file());
    }
}
