//! Waiting for tailscaled's socket without polling: inotify on the nearest
//! existing directory on the way to it, re-checked after each watch is
//! added so a socket created before the watch is not missed.

use inotify::{Inotify, WatchMask};
use smol::Async;
use std::io;
use std::path::Path;

/// Returns once `stat(path)` succeeds (following symlinks, as upstream).
pub async fn wait_for(path: &Path) -> io::Result<()> {
    wait_counting_wakeups(path).await.map(|_| ())
}

/// [`wait_for`], returning how many times it woke up (for the test that
/// proves it does not spin).
async fn wait_counting_wakeups(path: &Path) -> io::Result<u32> {
    let mut inotify = Async::new(Inotify::init()?)?;
    let mut buf = [0u8; 4096];
    let mut wakeups = 0;
    // Watches stay until the inotify instance is dropped: removing one
    // queues an IN_IGNORED event, which would wake the next read at once.
    loop {
        if exists(path)? {
            return Ok(wakeups);
        }
        let dir = nearest_existing_ancestor(path)?;
        let mut watches = inotify.get_ref().watches();
        watches.add(
            &dir,
            WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF,
        )?;
        if exists(path)? {
            return Ok(wakeups);
        }
        // A deeper directory may have appeared before the watch existed:
        // then this watch would never see the socket. Look again.
        if nearest_existing_ancestor(path)? != dir {
            continue;
        }
        // SAFETY: read_events only reads the fd; it does not close or
        // replace it, which is what `Async::read_with_mut` requires.
        unsafe {
            inotify
                .read_with_mut(|i| i.read_events(&mut buf).map(|events| events.count()))
                .await?;
        }
        wakeups += 1;
    }
}

/// How often the socket is looked for when inotify is unavailable.
pub const SOCKET_CHECK_MS: u64 = 200;

/// The sysctl to raise when `e` (from [`wait_for`]) says an inotify limit
/// was reached: EMFILE from `inotify_init1` (instances), ENOSPC from
/// `inotify_add_watch` (watches). Neither comes from `stat`.
pub fn limit_reached(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(n) if n == rustix::io::Errno::MFILE.raw_os_error() => {
            Some("fs.inotify.max_user_instances")
        }
        Some(n) if n == rustix::io::Errno::NOSPC.raw_os_error() => {
            Some("fs.inotify.max_user_watches")
        }
        _ => None,
    }
}

/// Returns once `stat(path)` succeeds, looking every `every_ms`: the
/// fallback when inotify is unavailable.
pub async fn check_every(path: &Path, every_ms: u64) -> io::Result<()> {
    while !exists(path)? {
        smol::Timer::after(std::time::Duration::from_millis(every_ms)).await;
    }
    Ok(())
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
        // Repeated, since the creator races the watcher through each level.
        for _ in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("a/b/tailscaled.sock");
            let t2 = target.clone();
            let waiter = std::thread::spawn(move || smol::block_on(wait_for(&t2)));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, b"").unwrap();
            waiter.join().unwrap().unwrap();
            assert!(target.exists());
        }
    }

    #[test]
    fn sleeps_until_something_happens() {
        // A spinning wait would wake up thousands of times while the
        // creator sleeps; an event-driven one wakes once per directory
        // event on the way (here: `a` created, then the file).
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/tailscaled.sock");
        let t2 = target.clone();
        let waiter = std::thread::spawn(move || smol::block_on(wait_counting_wakeups(&t2)));
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::write(&target, b"").unwrap();
        let wakeups = waiter.join().unwrap().unwrap();
        assert!(wakeups <= 3, "woke {wakeups} times");
    }

    #[test]
    fn returns_at_once_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        std::fs::write(&target, b"").unwrap();
        smol::block_on(wait_for(&target)).unwrap();
    }
}
