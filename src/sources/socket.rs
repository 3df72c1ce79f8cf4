//! Waiting for tailscaled's socket without polling: inotify on the nearest
//! existing directory on the way to it, re-checked after each watch is
//! added so a socket created before the watch is not missed.

use inotify::{Inotify, WatchMask};
use smol::Async;
use std::io;
use std::path::Path;

/// Returns once `stat(path)` succeeds (following symlinks, as upstream)
/// and, when it is a socket, once it takes connections.
pub async fn wait_for(path: &Path) -> io::Result<()> {
    wait_counting_wakeups(path).await?;
    until_accepting(path).await;
    Ok(())
}

/// How long a socket that refuses connections is waited for, at most.
pub const ACCEPT_WAIT_MS: u64 = 10_000;

/// A unix socket's file appears at `bind()`, before the daemon calls
/// `listen()`: a connection in between is refused, which cost the first
/// bus watch a retry 500 ms later (seen in CI with the simulator; Go's
/// `net.Listen` has the same window). A socket file left by an earlier run
/// refuses connections too, until tailscaled replaces it. So a socket that
/// refuses is tried again, 1 ms later and then at doubling intervals up to
/// 50 ms, for at most [`ACCEPT_WAIT_MS`]; anything else (a connection, any
/// other error, a path that is not a socket) ends the wait, and the bus
/// watch reports what it finds. The trial connection is closed at once.
async fn until_accepting(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let (mut wait_ms, mut waited) = (1, 0);
    loop {
        let socket = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket());
        if !socket || waited >= ACCEPT_WAIT_MS {
            return;
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            _ => return,
        }
        smol::Timer::after(std::time::Duration::from_millis(wait_ms)).await;
        waited += wait_ms;
        wait_ms = (wait_ms * 2).min(50);
    }
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
    until_accepting(path).await;
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
    fn a_socket_bound_but_not_yet_listening_is_waited_for() {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketType};
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tailscaled.sock");
        // bind() without listen(): the file is there, connections are
        // refused.
        let fd = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
        rustix::net::bind(&fd, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        assert_eq!(
            std::os::unix::net::UnixStream::connect(&path)
                .unwrap_err()
                .kind(),
            io::ErrorKind::ConnectionRefused
        );
        let listening = std::sync::Arc::new(AtomicBool::new(false));
        let seen = listening.clone();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            smol::block_on(wait_for(&p)).unwrap();
            seen.load(Ordering::SeqCst)
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        listening.store(true, Ordering::SeqCst);
        rustix::net::listen(&fd, 8).unwrap();
        assert!(
            waiter.join().unwrap(),
            "returned before the socket listened"
        );
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
