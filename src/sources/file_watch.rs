//! Watching a file without polling (the serve config, the tailscaled
//! config file): inotify on its directory, so every way a file is
//! replaced is seen: a write in place (`IN_CLOSE_WRITE`), a temporary file
//! renamed over it (`IN_MOVED_TO`), delete and re-create, and the
//! Kubernetes ConfigMap/Secret layout, where the file is a symlink through
//! `..data` to a timestamped directory and an update renames a new
//! `..data` symlink into place.
//!
//! A directory that does not exist yet, or that is deleted (or moved
//! away) later, is waited for (inotify on the nearest existing ancestor),
//! the file reported missing meanwhile and read again once it is back.
//!
//! Each batch of events is one re-read, sent as the watch's event (the
//! core compares contents, so a burst of events for one change, or a
//! change to another file there, changes nothing). `IN_MODIFY` and the
//! creation of a regular file are not acted on: the file is then
//! half-written; its `IN_CLOSE_WRITE` follows.
//!
//! When inotify is unavailable (the per-user instance limit
//! `fs.inotify.max_user_instances` or watch limit
//! `fs.inotify.max_user_watches` reached, or another failure), the watch
//! says so once (`Event::WatchFallback`) and falls back to reading the
//! file every [`SLOW_CHECK_MS`], sending a read only when it differs
//! from the last one sent. It never gives up.

use crate::machine::Event;
use inotify::{EventMask, Inotify, WatchMask};
use rustix::io::Errno;
use smol::Async;
use smol::channel::Sender;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a file is read when inotify is unavailable.
pub const SLOW_CHECK_MS: u64 = 10_000;

/// What one read of the file came to: its text, or why it could not be
/// read (missing, unreadable, not UTF-8).
pub type Read = Result<String, String>;

/// The event a read becomes (`ServeConfigRead`, `ConfigFileRead`, …).
pub type ToEvent = fn(Read) -> Event;

/// Why the inotify watch cannot go on.
#[derive(Debug)]
enum Failure {
    /// `inotify_init1` failed (EMFILE: the instance limit).
    Init(io::Error),
    /// Adding a watch failed (ENOSPC: the watch limit).
    Add(PathBuf, io::Error),
    /// Reading the events failed.
    Read(io::Error),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Init(e) => format!("creating an inotify instance failed: {e}"),
            Failure::Add(p, e) => format!("watching {} failed: {e}", p.display()),
            Failure::Read(e) => format!("reading inotify events failed: {e}"),
        }
    }

    /// The sysctl whose limit was reached, if one was.
    fn sysctl(&self) -> Option<String> {
        match self {
            Failure::Init(e) if e.raw_os_error() == Some(Errno::MFILE.raw_os_error()) => {
                Some("fs.inotify.max_user_instances".into())
            }
            Failure::Add(_, e) if e.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) => {
                Some("fs.inotify.max_user_watches".into())
            }
            _ => None,
        }
    }
}

/// How one round of the inotify watch ended.
enum Round {
    /// The shell's channel is closed: stop.
    Closed,
    /// The directory went away: watch for it again.
    DirectoryGone,
}

/// Watches `path`: one read now, one after each relevant batch of
/// directory events, until the task is dropped; every read is sent as
/// `to_event` makes it.
pub async fn watch(path: PathBuf, to_event: ToEvent, tx: Sender<Event>) {
    let failure = loop {
        match watch_round(&path, to_event, &tx).await {
            Ok(Round::Closed) => return,
            Ok(Round::DirectoryGone) => continue,
            Err(f) => break f,
        }
    };
    let fallback = Event::WatchFallback {
        path: path.clone(),
        error: failure.describe(),
        sysctl: failure.sysctl(),
        every_ms: SLOW_CHECK_MS,
    };
    if tx.send(fallback).await.is_err() {
        return;
    }
    slow_check(&path, to_event, &tx, Duration::from_millis(SLOW_CHECK_MS)).await;
}

/// Reads `path` every `every`, sending a read when it differs from the
/// last one sent (the first always).
async fn slow_check(path: &Path, to_event: ToEvent, tx: &Sender<Event>, every: Duration) {
    let mut last: Option<Read> = None;
    loop {
        let now = read(path);
        if last.as_ref() != Some(&now) {
            last = Some(now.clone());
            if tx.send(to_event(now)).await.is_err() {
                return;
            }
        }
        smol::Timer::after(every).await;
    }
}

async fn watch_round(path: &Path, to_event: ToEvent, tx: &Sender<Event>) -> Result<Round, Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A fresh instance per round, so the watches of a round before (on a
    // directory gone, on ancestors) wake nothing here.
    let mut inotify = Async::new(Inotify::init().map_err(Failure::Init)?).map_err(Failure::Init)?;
    let mut buf = [0u8; 4096];
    // A directory not there (yet, or any more) is waited for like the
    // socket: inotify on the nearest existing ancestor, looked at again
    // after each watch is added. Watches stay until the instance is
    // dropped; events of the ancestors' watches are not acted on below.
    let mut reported = false;
    while !dir.is_dir() {
        let Some(ancestor) = nearest_existing_ancestor(&dir) else {
            // Only a relative path's "." can vanish entirely: read it as
            // missing and look again at the next slow check.
            return Err(Failure::Add(
                dir.clone(),
                io::Error::new(io::ErrorKind::NotFound, "no existing directory above it"),
            ));
        };
        match inotify.get_ref().watches().add(
            &ancestor,
            WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF,
        ) {
            Ok(_) => {}
            // Gone between the look and the watch: look again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Failure::Add(ancestor, e)),
        }
        if dir.is_dir() {
            break;
        }
        if !reported {
            reported = true;
            if tx.send(to_event(read(path))).await.is_err() {
                return Ok(Round::Closed);
            }
        }
        if nearest_existing_ancestor(&dir).as_ref() != Some(&ancestor) {
            continue;
        }
        // SAFETY: read_events only reads the fd; it does not close or
        // replace it, which is what `Async::read_with_mut` requires.
        unsafe {
            inotify
                .read_with_mut(|i| i.read_events(&mut buf).map(|events| events.count()))
                .await
                .map_err(Failure::Read)?;
        }
    }
    let dir_watch = match inotify.get_ref().watches().add(
        &dir,
        WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    ) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Round::DirectoryGone),
        Err(e) => return Err(Failure::Add(dir, e)),
    };
    // Read after the watch exists, so no change is missed in between.
    if tx.send(to_event(read(path))).await.is_err() {
        return Ok(Round::Closed);
    }
    loop {
        // SAFETY: as above.
        let (relevant, gone) = unsafe {
            inotify
                .read_with_mut(|i| {
                    let events = i.read_events(&mut buf)?;
                    let (mut relevant, mut gone) = (false, false);
                    for e in events {
                        if e.wd != dir_watch {
                            continue;
                        }
                        gone |= e.mask.intersects(
                            EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED,
                        );
                        relevant |= acted_on(&dir, e.mask, e.name);
                    }
                    Ok((relevant, gone))
                })
                .await
                .map_err(Failure::Read)?
        };
        if gone {
            // The directory was deleted or moved away: the file is
            // reported as it reads now (missing), and the directory is
            // waited for again.
            if tx.send(to_event(read(path))).await.is_err() {
                return Ok(Round::Closed);
            }
            return Ok(Round::DirectoryGone);
        }
        if relevant && tx.send(to_event(read(path))).await.is_err() {
            return Ok(Round::Closed);
        }
    }
}

fn nearest_existing_ancestor(path: &Path) -> Option<PathBuf> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if d.is_dir() {
            return Some(d.to_path_buf());
        }
        dir = d.parent();
    }
    None
}

/// Whether an event may have changed what `path` reads as.
fn acted_on(dir: &Path, mask: EventMask, name: Option<&std::ffi::OsStr>) -> bool {
    if mask.contains(EventMask::CREATE) {
        // A new symlink (ConfigMap `..data_tmp`) is complete at once; a
        // regular file is not until its IN_CLOSE_WRITE.
        return name.is_some_and(|n| {
            std::fs::symlink_metadata(dir.join(n)).is_ok_and(|m| m.file_type().is_symlink())
        });
    }
    !mask.contains(EventMask::IGNORED)
}

/// The file's text now.
pub fn read(path: &Path) -> Read {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_read(e: Event) -> Read {
        match e {
            Event::ServeConfigRead { content } => Ok(content),
            Event::ServeConfigUnreadable { error } => Err(error),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn to_event(r: Read) -> Event {
        match r {
            Ok(content) => Event::ServeConfigRead { content },
            Err(error) => Event::ServeConfigUnreadable { error },
        }
    }

    /// Replaces `path` atomically (so no half-written read is possible).
    fn put(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn the_slow_check_sends_a_read_only_when_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        put(&path, "a");
        let (tx, rx) = smol::channel::unbounded();
        let recv = || {
            smol::block_on(async {
                smol::future::or(async { rx.recv().await.ok() }, async {
                    smol::Timer::after(Duration::from_secs(10)).await;
                    None
                })
                .await
            })
            .map(as_read)
            .expect("a read within 10 s")
        };
        let p = path.clone();
        let _task = smol::spawn(async move {
            slow_check(&p, to_event, &tx, Duration::from_millis(20)).await;
        });
        assert_eq!(recv(), Ok("a".to_string()));
        // The same text rewritten: nothing; then a change, then gone.
        put(&path, "a");
        put(&path, "b");
        assert_eq!(recv(), Ok("b".to_string()));
        std::fs::remove_file(&path).unwrap();
        assert!(recv().unwrap_err().contains("No such file"));
        put(&path, "b");
        assert_eq!(recv(), Ok("b".to_string()));
    }
}
