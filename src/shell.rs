//! The shell: one loop taking events from one channel, handing them to the
//! machine, carrying out the commands, recording each step in the trace.
//!
//! Commands go to one of two rooms: subscriptions (`Command::WaitSocket`,
//! `Command::WatchServeConfig`, `Command::WatchConfigFile`,
//! `Command::WatchBus`) to the event sources, every other one to the
//! executors. This is the only module that knows `exec`, `sources` and
//! `children` alike; they do not import each other.

use crate::exec::Executors;
use crate::machine::{Command, Event, Machine};
use crate::settings::Settings;
use crate::sources::Subscriptions;
use crate::trace::Trace;
use smol::future::FutureExt;
use std::time::{Duration, Instant};

/// How a run is wired beyond its settings.
#[derive(Default)]
pub struct Options {
    /// Told once startup is complete (after its log line); the demo stops
    /// the run then. Dropped when the run ends.
    pub startup_complete: Option<smol::channel::Sender<()>>,
}

/// What a run ended with.
pub struct Outcome {
    /// The process exit code.
    pub code: i32,
    /// The record of the run.
    pub trace: Trace,
}

/// Runs containerboot to its end.
pub fn run(settings: Settings, options: Options) -> Outcome {
    let mut trace = Trace::new(settings.clone(), settings.trace_steps);
    let signals = match crate::sources::signals::install() {
        Ok(s) => s,
        Err(e) => {
            log::error!("installing signal handlers: {e}");
            return Outcome { code: 1, trace };
        }
    };
    smol::block_on(async move {
        let start = Instant::now();
        let now_ms = || start.elapsed().as_millis() as u64;
        let (tx, rx) = smol::channel::unbounded::<Event>();
        let reaper = std::sync::Arc::new(crate::children::Reaper::default());
        crate::children::become_subreaper();
        smol::spawn(crate::sources::signals::forward(
            signals,
            tx.clone(),
            reaper.clone(),
        ))
        .detach();

        let mut exec = Executors::new(tx.clone(), reaper);
        let mut subscriptions = Subscriptions::new(&settings.socket, tx.clone());
        let (mut machine, init) = Machine::new(settings);
        trace.push(init);
        let _ = tx.try_send(Event::Start);

        loop {
            let event = match machine.next_deadline() {
                None => rx.recv().await.ok(),
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                    let timer = async {
                        smol::Timer::after(wait).await;
                        Some(Event::DeadlineExpired)
                    };
                    async { rx.recv().await.ok() }.or(timer).await
                }
            };
            let Some(event) = event else {
                log::error!("internal error: the event channel closed");
                return Outcome { code: 1, trace };
            };
            let step = machine.handle(now_ms(), event);
            let commands = step.commands.clone();
            trace.push(step);
            for command in commands {
                match command {
                    // The trace is the shell's; so is writing it.
                    Command::DumpTrace { path } => {
                        let error = crate::exec::fs::write_atomically(&path, &trace.to_jsonl())
                            .err()
                            .map(|e| e.to_string());
                        let _ = tx.try_send(Event::TraceDumped {
                            path,
                            steps: trace.len(),
                            error,
                        });
                    }
                    Command::WaitSocket { path } => subscriptions.wait_socket(path),
                    Command::WatchBus { watch, mask, fqdn } => {
                        subscriptions.watch_bus(watch, mask, fqdn)
                    }
                    Command::WatchServeConfig { path } => subscriptions.watch_serve_config(path),
                    Command::WatchConfigFile { path } => subscriptions.watch_config_file(path),
                    command => {
                        let announced = command == Command::AnnounceStartupComplete;
                        if let Some(code) = exec.execute(command) {
                            // Closes the bus watch and any socket wait.
                            drop(subscriptions);
                            return Outcome { code, trace };
                        }
                        if announced && let Some(startup_complete) = &options.startup_complete {
                            let _ = startup_complete.try_send(());
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file at or under `path`, with its text.
    fn rust_files(path: &Path) -> Vec<(PathBuf, String)> {
        if path.is_file() {
            return vec![(path.to_path_buf(), std::fs::read_to_string(path).unwrap())];
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() || p.extension().is_some_and(|e| e == "rs") {
                files.extend(rust_files(&p));
            }
        }
        files
    }

    /// The shell's three rooms: executors and event sources never import
    /// each other, and the reaper they share imports neither; only this
    /// module knows all three. (A path is also reachable through a grouped
    /// `use crate::{…}`; none is used for these modules.)
    #[test]
    fn exec_and_sources_do_not_import_each_other() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let rooms: [(&str, &[&str]); 3] = [
            ("exec", &["crate::sources", "super::sources"]),
            ("sources", &["crate::exec", "super::exec"]),
            ("children.rs", &["crate::exec", "crate::sources"]),
        ];
        let mut found = Vec::new();
        for (room, forbidden) in rooms {
            let files = rust_files(&src.join(room));
            assert!(!files.is_empty(), "no Rust files at src/{room}");
            for (path, text) in files {
                for (n, line) in text.lines().enumerate() {
                    if forbidden.iter().any(|f| line.contains(f)) {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "exec/, sources/ and children.rs must not import each other \
             (only shell.rs wires them):\n{}",
            found.join("\n")
        );
    }
}
