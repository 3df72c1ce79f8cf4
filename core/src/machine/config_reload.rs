//! The tailscaled config file (`EXPERIMENTAL_TS_CONFIGFILE_PATH`) kept
//! live, as a value like `serve.rs`: the file's contents in, `ReloadConfig`
//! commands out, one at a time.
//!
//! Upstream's flow (v1.80 and later): once Running, watch the file; the
//! text read first is what tailscaled has; when it changes, ask tailscaled
//! to load it again (`POST /localapi/v0/reload-config`). Beyond upstream:
//! a new version is checked first (HuJSON, an object, `"Version":
//! "alpha0"`, as at the start) and an invalid one is reported (file,
//! line/column) and not sent, so tailscaled is never asked to load what it
//! would refuse; a tailscaled that does not know the endpoint (404: older
//! than v1.80) is told about once, with the fix (a restart); a call that
//! does not reach tailscaled is retried with backoff; nothing here ends
//! the run (upstream exits on any error).

use super::command::{Command, Level};
use super::ctx::{Backoff, Ctx, Deadline};
#[cfg(doc)]
use crate::settings::check_config_text;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// First wait before repeating a reload that did not reach tailscaled.
pub const RELOAD_RETRY_FIRST_MS: u64 = 500;
/// Longest wait between reload attempts.
pub const RELOAD_RETRY_CAP_MS: u64 = 30_000;

/// What a `ReloadConfig` came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReloadOutcome {
    /// `{"Reloaded":true}`: tailscaled loaded the file again.
    Reloaded,
    /// `{"Reloaded":false}` without an error: tailscaled was not started
    /// with a config file.
    NotReloaded,
    /// 404: this tailscaled does not know the endpoint (older than v1.80).
    NotSupported,
    /// tailscaled answered with an error (its `Err`, another status, or
    /// the empty 200 it sends when the file fails to load).
    Refused {
        /// What it said.
        error: String,
    },
    /// The call did not reach tailscaled (connecting, talking): retried.
    Unreachable {
        /// What failed.
        error: String,
    },
}

/// The config-file reload session (only with `EXPERIMENTAL_TS_CONFIGFILE_PATH`).
#[derive(Debug)]
pub struct ConfigReloadSession {
    /// The file, for the watch and the log.
    path: PathBuf,
    /// `TS_SOCKET`, for the executor.
    socket: PathBuf,
    /// Running was reached: the watch was started.
    started: bool,
    /// The digest of the text tailscaled has loaded, as far as we know:
    /// the first read, then each version it was asked to load.
    loaded: Option<String>,
    /// The digest of the latest valid read, when it differs from `loaded`.
    wanted: Option<String>,
    /// The digest of the version the reload in flight is for.
    in_flight: Option<String>,
    /// A reload that did not reach tailscaled waits for `ConfigReloadRetry`.
    retrying: bool,
    backoff: Backoff,
    /// tailscaled answered 404: it cannot reload; said once.
    unsupported: bool,
    /// The last problem logged (file or call), so a repeat is logged once.
    last_error: Option<String>,
}

impl ConfigReloadSession {
    /// A session for the file at `path`, talking to tailscaled at `socket`.
    pub fn new(path: PathBuf, socket: PathBuf) -> ConfigReloadSession {
        ConfigReloadSession {
            path,
            socket,
            started: false,
            loaded: None,
            wanted: None,
            in_flight: None,
            retrying: false,
            backoff: Backoff::default(),
            unsupported: false,
            last_error: None,
        }
    }

    /// Running: start watching the file.
    pub fn start(&mut self, context: &mut Ctx) {
        if self.started {
            return;
        }
        self.started = true;
        context.info(format!(
            "tailscaled config watch: watching {} for changes; tailscaled is asked to reload it when it changes",
            self.path.display()
        ));
        context.emit(Command::WatchConfigFile {
            path: self.path.clone(),
        });
    }

    /// The file as read after a change (or at the start): the digest of
    /// its text and what [`check_config_text`] found wrong with it, if
    /// anything. The text itself never reaches the core: it may hold the
    /// auth key, and events are kept in the trace.
    pub fn on_file(&mut self, context: &mut Ctx, digest: &str, problem: Option<&str>) {
        let Some(loaded) = &self.loaded else {
            // The first read: what tailscaled started with.
            self.loaded = Some(digest.to_string());
            return;
        };
        // What tailscaled has once the call out (if any) is done.
        let current = self.in_flight.as_ref().unwrap_or(loaded);
        if current == digest {
            self.wanted = None;
            self.last_error = None;
            context.ignore("the tailscaled config file reads as tailscaled has it");
            return;
        }
        if self.wanted.as_deref() == Some(digest) {
            context.ignore("this version of the tailscaled config file is being sent");
            return;
        }
        if let Some(e) = problem {
            self.problem(
                context,
                Level::Error,
                format!(
                    "tailscaled config file {}: {e}; not sent to tailscaled, which keeps the last version it loaded (fix the file and it is reloaded)",
                    self.path.display()
                ),
            );
            return;
        }
        self.last_error = None;
        if self.unsupported {
            context.ignore("this tailscaled cannot reload its config file (said once)");
            return;
        }
        self.wanted = Some(digest.to_string());
        self.advance(context);
    }

    /// The file could not be read (missing, unreadable).
    pub fn on_file_unreadable(&mut self, context: &mut Ctx, error: &str) {
        self.problem(
            context,
            Level::Error,
            format!(
                "tailscaled config file {}: cannot read it: {error} (tailscaled keeps the last version it loaded)",
                self.path.display()
            ),
        );
    }

    /// The answer to the `ReloadConfig` in flight.
    pub fn on_reloaded(&mut self, context: &mut Ctx, outcome: &ReloadOutcome) {
        let Some(text) = self.in_flight.take() else {
            context.ignore("no reload-config was in flight");
            return;
        };
        if !matches!(outcome, ReloadOutcome::Unreachable { .. }) {
            self.backoff.reset();
            // Asked: whatever came of it, this version is not sent again
            // (tailscaled loads the file itself; the next change is).
            self.loaded = Some(text.clone());
        }
        match outcome {
            ReloadOutcome::Reloaded => {
                self.last_error = None;
                context.info(format!(
                    "tailscaled config watch: config was reloaded from {}",
                    self.path.display()
                ));
            }
            ReloadOutcome::NotReloaded => context.log(
                Level::Warn,
                format!(
                    "tailscaled config watch: tailscaled did not reload {}: it says it was not started with a config file",
                    self.path.display()
                ),
            ),
            ReloadOutcome::NotSupported => {
                self.unsupported = true;
                self.wanted = None;
                context.log(
                    Level::Warn,
                    format!(
                        "tailscaled config watch: this tailscaled cannot reload its config file (reload-config answered 404; it needs v1.80 or later): restart the container to apply changes to {}",
                        self.path.display()
                    ),
                );
                return;
            }
            ReloadOutcome::Refused { error } => self.problem(
                context,
                Level::Error,
                format!(
                    "tailscaled config watch: tailscaled could not reload {}: {error} (it keeps the last version it loaded)",
                    self.path.display()
                ),
            ),
            ReloadOutcome::Unreachable { error } => {
                let wait = self.backoff.next(RELOAD_RETRY_FIRST_MS, RELOAD_RETRY_CAP_MS);
                self.problem(
                    context,
                    Level::Warn,
                    format!(
                        "tailscaled config watch: asking tailscaled to reload {} failed: {error}; retrying (the same failure again is not logged)",
                        self.path.display()
                    ),
                );
                // The latest wanted version wins over the one that failed;
                // none wanted unless the file differs from what was loaded.
                if self.wanted.is_none() {
                    self.wanted = Some(text);
                }
                if self.wanted.as_ref() == self.loaded.as_ref() {
                    self.wanted = None;
                }
                self.retrying = true;
                context.arm(Deadline::ConfigReloadRetry, wait);
                return;
            }
        }
        if self.wanted.as_ref() == self.loaded.as_ref() {
            self.wanted = None;
        }
        self.advance(context);
    }

    /// `ConfigReloadRetry` fired.
    pub fn retry_due(&mut self, context: &mut Ctx) {
        if !self.retrying {
            return;
        }
        self.retrying = false;
        self.advance(context);
    }

    fn problem(&mut self, context: &mut Ctx, level: Level, message: String) {
        if self.last_error.as_ref() == Some(&message) {
            context.ignore("the same problem, logged before");
            return;
        }
        context.log(level, message.clone());
        self.last_error = Some(message);
    }

    fn advance(&mut self, context: &mut Ctx) {
        if self.in_flight.is_some() || self.retrying || self.unsupported {
            return;
        }
        let Some(text) = self.wanted.take() else {
            return;
        };
        context.info("tailscaled config watch: ensuring that config is up to date");
        self.in_flight = Some(text);
        context.emit(Command::ReloadConfig {
            socket: self.socket.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "{\"Version\": \"alpha0\", \"Hostname\": \"a\"}";
    const GOOD2: &str =
        "{\n  // comments are fine\n  \"Version\": \"alpha0\",\n  \"Hostname\": \"b\",\n}";

    fn session() -> (ConfigReloadSession, Ctx) {
        (
            ConfigReloadSession::new("/etc/ts/config.hujson".into(), "/run/ts.sock".into()),
            Ctx::default(),
        )
    }

    /// The file read as `content` (its text as its digest).
    fn file(s: &mut ConfigReloadSession, c: &mut Ctx, content: &str) {
        let problem = crate::settings::check_config_text(content).err();
        s.on_file(c, content, problem.as_deref());
    }

    fn reloads(c: &mut Ctx) -> usize {
        std::mem::take(&mut c.commands)
            .into_iter()
            .filter(|c| matches!(c, Command::ReloadConfig { .. }))
            .count()
    }

    fn logs(c: &Ctx, level: Level) -> Vec<String> {
        c.commands
            .iter()
            .filter_map(|c| match c {
                Command::Log { level: l, message } if *l == level => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_changed_valid_file_is_one_reload_and_the_first_read_none() {
        let (mut s, mut c) = session();
        s.start(&mut c);
        assert!(matches!(c.commands[1], Command::WatchConfigFile { .. }));
        file(&mut s, &mut c, GOOD);
        assert_eq!(reloads(&mut c), 0, "the first read is what tailscaled has");
        file(&mut s, &mut c, GOOD);
        assert_eq!(reloads(&mut c), 0);
        file(&mut s, &mut c, GOOD2);
        file(&mut s, &mut c, GOOD2);
        assert_eq!(reloads(&mut c), 1, "one reload for a burst");
        s.on_reloaded(&mut c, &ReloadOutcome::Reloaded);
        assert!(
            logs(&c, Level::Info)
                .iter()
                .any(|l| l.contains("config was reloaded")),
            "{:?}",
            c.commands
        );
        file(&mut s, &mut c, GOOD2);
        assert_eq!(reloads(&mut c), 0);
    }

    #[test]
    fn an_invalid_version_is_reported_with_its_position_and_not_sent() {
        let (mut s, mut c) = session();
        file(&mut s, &mut c, GOOD);
        file(
            &mut s,
            &mut c,
            "{\n  \"Version\": \"alpha0\"\n  \"Hostname\": 1\n}",
        );
        file(
            &mut s,
            &mut c,
            "{\n  \"Version\": \"alpha0\"\n  \"Hostname\": 1\n}",
        );
        let errors = logs(&c, Level::Error);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("/etc/ts/config.hujson")
                && errors[0].contains("line 2 column 22")
                && errors[0].contains("not sent"),
            "{}",
            errors[0]
        );
        file(&mut s, &mut c, "{\"Version\": \"beta9\"}");
        assert_eq!(logs(&c, Level::Error).len(), 2);
        assert_eq!(reloads(&mut c), 0);
        file(&mut s, &mut c, GOOD2);
        assert_eq!(reloads(&mut c), 1);
    }

    #[test]
    fn a_404_is_told_once_and_nothing_is_sent_after_it() {
        let (mut s, mut c) = session();
        file(&mut s, &mut c, GOOD);
        file(&mut s, &mut c, GOOD2);
        assert_eq!(reloads(&mut c), 1);
        s.on_reloaded(&mut c, &ReloadOutcome::NotSupported);
        let warns = logs(&c, Level::Warn);
        assert_eq!(warns.len(), 1);
        assert!(warns[0].contains("restart the container"), "{}", warns[0]);
        file(&mut s, &mut c, GOOD);
        file(
            &mut s,
            &mut c,
            "{\"Version\": \"alpha0\", \"Hostname\": \"c\"}",
        );
        assert_eq!(reloads(&mut c), 0);
        assert_eq!(logs(&c, Level::Warn).len(), 0, "said once");
    }

    #[test]
    fn unreachable_is_retried_with_the_latest_version_and_changes_meanwhile_wait() {
        let (mut s, mut c) = session();
        file(&mut s, &mut c, GOOD);
        file(&mut s, &mut c, GOOD2);
        assert_eq!(reloads(&mut c), 1);
        // A change while the call is out is sent after its answer.
        let good3 = "{\"Version\": \"alpha0\", \"Hostname\": \"c\"}";
        file(&mut s, &mut c, good3);
        assert_eq!(reloads(&mut c), 0);
        s.on_reloaded(
            &mut c,
            &ReloadOutcome::Unreachable {
                error: "connection refused".into(),
            },
        );
        assert!(c.timers.is_armed(Deadline::ConfigReloadRetry));
        assert_eq!(reloads(&mut c), 0);
        s.retry_due(&mut c);
        assert_eq!(reloads(&mut c), 1);
        assert_eq!(s.in_flight.as_deref(), Some(good3));
        s.on_reloaded(&mut c, &ReloadOutcome::Reloaded);
        assert_eq!(reloads(&mut c), 0);
        // Changed back while a reload is out: sent again after it.
        file(&mut s, &mut c, GOOD2);
        assert_eq!(reloads(&mut c), 1);
        file(&mut s, &mut c, good3);
        assert_eq!(reloads(&mut c), 0);
        s.on_reloaded(&mut c, &ReloadOutcome::Reloaded);
        assert_eq!(
            reloads(&mut c),
            1,
            "the file is back to what was loaded before"
        );
    }
}
