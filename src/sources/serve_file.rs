//! Watching the serve config file without polling: inotify on its
//! directory, so every way a file is replaced is seen: a write in place
//! (`IN_CLOSE_WRITE`), a temporary file renamed over it (`IN_MOVED_TO`),
//! delete and re-create, and the Kubernetes ConfigMap layout, where the
//! file is a symlink through `..data` to a timestamped directory and an
//! update renames a new `..data` symlink into place.
//!
//! A directory that does not exist yet is waited for (inotify on the
//! nearest existing ancestor), the file reported missing meanwhile.
//!
//! Each batch of events is one re-read, sent as `ServeConfigRead` (or
//! `ServeConfigUnreadable`); the core compares contents, so a burst of
//! events for one change, or a change to another file there, posts
//! nothing new. `IN_MODIFY` and the creation of a regular file are not
//! acted on: the file is then half-written; its `IN_CLOSE_WRITE` follows.

use crate::machine::Event;
use inotify::{EventMask, Inotify, WatchMask};
use smol::Async;
use smol::channel::Sender;
use std::io;
use std::path::{Path, PathBuf};

/// Watches `path`: one read now, one after each relevant batch of
/// directory events, until the task is dropped.
pub async fn watch(path: PathBuf, tx: Sender<Event>) {
    if let Err(e) = watch_inner(&path, &tx).await {
        let _ = tx
            .send(Event::ServeConfigUnreadable {
                error: format!(
                    "watching its directory failed: {e}; later changes to the file are not seen"
                ),
            })
            .await;
    }
}

async fn watch_inner(path: &Path, tx: &Sender<Event>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut inotify = Async::new(Inotify::init()?)?;
    let mut buf = [0u8; 4096];
    // A directory not there yet (a volume mounted later) is waited for
    // like the socket: inotify on the nearest existing ancestor, looked
    // at again after each watch is added. Watches stay until the instance
    // is dropped; events of the ancestors' watches are not acted on below.
    let mut reported = false;
    while !dir.is_dir() {
        let ancestor = nearest_existing_ancestor(&dir)?;
        inotify.get_ref().watches().add(
            &ancestor,
            WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::DELETE_SELF | WatchMask::MOVE_SELF,
        )?;
        if dir.is_dir() {
            break;
        }
        if !reported {
            reported = true;
            if tx.send(read(path)).await.is_err() {
                return Ok(());
            }
        }
        if nearest_existing_ancestor(&dir)? != ancestor {
            continue;
        }
        // SAFETY: read_events only reads the fd; it does not close or
        // replace it, which is what `Async::read_with_mut` requires.
        unsafe {
            inotify
                .read_with_mut(|i| i.read_events(&mut buf).map(|events| events.count()))
                .await?;
        }
    }
    let dir_watch = inotify.get_ref().watches().add(
        &dir,
        WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF,
    )?;
    // Read after the watch exists, so no change is missed in between.
    if tx.send(read(path)).await.is_err() {
        return Ok(());
    }
    loop {
        // SAFETY: as above.
        let relevant = unsafe {
            inotify
                .read_with_mut(|i| {
                    let events = i.read_events(&mut buf)?;
                    let mut relevant = false;
                    for e in events {
                        relevant |= e.wd == dir_watch && acted_on(&dir, e.mask, e.name);
                    }
                    Ok(relevant)
                })
                .await?
        };
        if relevant && tx.send(read(path)).await.is_err() {
            return Ok(());
        }
    }
}

fn nearest_existing_ancestor(path: &Path) -> io::Result<PathBuf> {
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

fn read(path: &Path) -> Event {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(content) => Event::ServeConfigRead { content },
            Err(_) => Event::ServeConfigUnreadable {
                error: "it is not UTF-8 text".to_string(),
            },
        },
        Err(e) => Event::ServeConfigUnreadable {
            error: e.to_string(),
        },
    }
}
