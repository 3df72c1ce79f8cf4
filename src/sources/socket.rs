//! Waiting for tailscaled's socket without polling: inotify on the nearest
//! existing directory on the way to it, re-checked after each watch is
//! added so a socket created before the watch is not missed.

use inotify::{Inotify, WatchMask};
use smol::Async;
use std::io;
use std::path::Path;

/// Returns once `stat(path)` succeeds (following symlinks, as upstream).
pub async fn wait_for(path: &Path) -> io::Result<()> {
    let mut inotify = Async::new(Inotify::init()?)?;
    let mut buf = [0u8; 4096];
    loop {
        if exists(path)? {
            return Ok(());
        }
        let dir = nearest_existing_ancestor(path)?;
        // SAFETY of the borrow: `Async::get_ref` gives the inotify handle;
        // watches are managed through it without touching the fd's mode.
        let mut watches = inotify.get_ref().watches();
        let wd = watches.add(
            &dir,
            WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )?;
        if exists(path)? {
            return Ok(());
        }
        // SAFETY: read_events only reads the fd; it does not close or
        // replace it, which is what `Async::read_with_mut` requires.
        unsafe {
            inotify
                .read_with_mut(|i| i.read_events(&mut buf).map(|events| events.count()))
                .await?;
        }
        let _ = watches.remove(wd);
    }
}

fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn nearest_existing_ancestor(path: &Path) -> io::Result<std::path::PathBuf> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if d.is_dir() {
            return Ok(d.to_path_buf());
        }
        dir = d.parent();
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no existing directory above {}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_file_created_later_in_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/tailscaled.sock");
        let t2 = target.clone();
        let waiter = std::thread::spawn(move || smol::block_on(wait_for(&t2)));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"").unwrap();
        waiter.join().unwrap().unwrap();
        assert!(target.exists());
    }

    #[test]
    fn returns_at_once_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        std::fs::write(&target, b"").unwrap();
        smol::block_on(wait_for(&target)).unwrap();
    }
}
