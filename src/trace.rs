//! The state trace: every step of the machine, kept in a bounded ring and
//! written as JSON lines (a header, then one line per step).
//!
//! The line format is an API boundary: fixtures and users' dumps depend on
//! it. Bump [`FORMAT_VERSION`] when it changes incompatibly.

use crate::machine::{Command, Event, Step};
use crate::settings::Settings;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;

/// Version of the trace line format.
pub const FORMAT_VERSION: u32 = 1;

/// The `format` value of a header line.
pub const FORMAT_NAME: &str = "containerboot-trace";

/// The first line of a dump.
#[derive(Serialize)]
struct Header<'a> {
    format: &'static str,
    version: u32,
    containerboot: &'static str,
    /// Steps the ring let go before the first one kept.
    dropped: u64,
    settings: &'a Settings,
}

/// A bounded record of the run.
pub struct Trace {
    settings: Settings,
    steps: VecDeque<Step>,
    capacity: usize,
    dropped: u64,
}

impl Trace {
    /// An empty trace of `settings` keeping the last `capacity` steps.
    pub fn new(settings: Settings, capacity: usize) -> Self {
        Trace {
            settings,
            steps: VecDeque::with_capacity(capacity.min(64)),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Appends a step, dropping the oldest when full.
    pub fn push(&mut self, step: Step) {
        if self.steps.len() == self.capacity {
            self.steps.pop_front();
            self.dropped += 1;
        }
        self.steps.push_back(step);
    }

    /// The steps kept, oldest first.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter()
    }

    /// How many steps are kept.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no step is kept.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Writes [`Trace::to_jsonl`] to `path` atomically: a temporary file
    /// (mode 0600) in the same directory, renamed over `path`.
    pub fn write_atomically(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("the path names no file"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.to_jsonl().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The last `n` steps in a compact form for people, one per line.
    pub fn render_compact(&self, n: usize) -> String {
        let skip = self.steps.len().saturating_sub(n);
        let mut out = String::new();
        for step in self.steps.iter().skip(skip) {
            out.push_str(&describe_step(step));
            out.push('\n');
        }
        out
    }

    /// How many old steps the ring has let go.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The whole trace as JSON lines: header first.
    pub fn to_jsonl(&self) -> String {
        let header = Header {
            format: FORMAT_NAME,
            version: FORMAT_VERSION,
            containerboot: env!("CARGO_PKG_VERSION"),
            dropped: self.dropped,
            settings: &self.settings,
        };
        let mut out = serde_json::to_string(&header).expect("the header serialises");
        out.push('\n');
        for s in &self.steps {
            out.push_str(&serde_json::to_string(s).expect("a step serialises"));
            out.push('\n');
        }
        out
    }
}

/// One step in one line: `#seq +t State --event--> State: commands`.
pub fn describe_step(step: &Step) -> String {
    let event = step
        .event
        .as_ref()
        .map(describe_event)
        .unwrap_or_else(|| "init".to_string());
    let arrow = if step.state_before == step.state_after {
        format!("{} --{event}-->", step.state_before)
    } else {
        format!("{} --{event}--> {}", step.state_before, step.state_after)
    };
    let commands: Vec<String> = step.commands.iter().map(describe_command).collect();
    let mut line = format!("#{} +{}ms {arrow}", step.seq, step.t_ms);
    if !commands.is_empty() {
        line.push_str(": ");
        line.push_str(&commands.join("; "));
    }
    if let Some(note) = &step.note {
        line.push_str(&format!(" ({note})"));
    }
    line
}

/// The variant name of an event, for diagrams and summaries.
pub fn event_kind(event: &Event) -> &'static str {
    match event {
        Event::Start => "Start",
        Event::KernelPrepared => "KernelPrepared",
        Event::KernelPrepFailed { .. } => "KernelPrepFailed",
        Event::TailscaledSpawnFailed { .. } => "TailscaledSpawnFailed",
        Event::SocketReady => "SocketReady",
        Event::SocketWaitFailed { .. } => "SocketWaitFailed",
        Event::SymlinkFailed { .. } => "SymlinkFailed",
        Event::BusOpened { .. } => "BusOpened",
        Event::BusFailed { .. } => "BusFailed",
        Event::Bus { .. } => "Bus",
        Event::BusEnded { .. } => "BusEnded",
        Event::CliFinished { .. } => "CliFinished",
        Event::RulesApplied { .. } => "RulesApplied",
        Event::TailscaledExited { .. } => "TailscaledExited",
        Event::Signal { .. } => "Signal",
        Event::DeadlineExpired => "DeadlineExpired",
        Event::Timeout { .. } => "Timeout",
        Event::TraceDumped { .. } => "TraceDumped",
        Event::Kube { .. } => "Kube",
    }
}

fn describe_event(event: &Event) -> String {
    match event {
        Event::Bus { watch, message } => {
            let mut parts = Vec::new();
            if let Some(s) = message.state {
                parts.push(format!("state {s}"));
            }
            if let Some(nm) = &message.net_map {
                let addrs: Vec<String> = nm
                    .self_node
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                parts.push(format!("netmap [{}]", addrs.join(" ")));
            }
            format!("Bus#{watch}({})", parts.join(", "))
        }
        Event::CliFinished { cli, outcome } => match outcome {
            crate::machine::CliOutcome::Exited { status, .. } => {
                format!("CliFinished({cli}: {status})")
            }
            crate::machine::CliOutcome::SpawnFailed { message } => {
                format!("CliFinished({cli}: {message})")
            }
        },
        Event::TailscaledExited { status } => format!("TailscaledExited({status})"),
        Event::Signal { signal } => format!("Signal({signal:?})"),
        Event::Timeout { deadline } => format!("Timeout({deadline:?})"),
        Event::BusOpened { watch } => format!("BusOpened#{watch}"),
        Event::BusEnded { watch } => format!("BusEnded#{watch}"),
        Event::BusFailed { watch, error } => format!("BusFailed#{watch}({error})"),
        Event::Kube { call, reply } => {
            format!("Kube({} -> {})", kube_call(call), kube_reply(reply))
        }
        other => event_kind(other).to_string(),
    }
}

fn kube_call(call: &crate::machine::kube::KubeCall) -> String {
    use crate::machine::kube::KubeCall;
    match call {
        KubeCall::Connect => "connect".into(),
        KubeCall::CheckPermission { verb } => format!("can-i {verb}"),
        KubeCall::ReadAuthKey => "get secret (authkey)".into(),
        KubeCall::ProbeSecret => "get secret (probe)".into(),
        KubeCall::StoreDeviceInfo { info } => {
            format!("patch device info {} {}", info.id, info.fqdn)
        }
        KubeCall::RemoveAuthKey => "patch remove authkey".into(),
    }
}

fn kube_reply(reply: &crate::machine::kube::KubeReply) -> String {
    use crate::machine::kube::KubeReply;
    match reply {
        KubeReply::Connected { namespace, .. } => format!("connected, namespace {namespace}"),
        KubeReply::Allowed { allowed } => format!("allowed {allowed}"),
        KubeReply::Secret { authkey } => {
            if authkey.is_some() {
                "secret with authkey".into()
            } else {
                "secret".into()
            }
        }
        KubeReply::Done => "done".into(),
        KubeReply::Status { code, .. } => format!("status {code}"),
        KubeReply::Failed { kind, error } => format!("{kind:?} failure: {error}"),
    }
}

fn describe_command(command: &Command) -> String {
    match command {
        Command::Log { message, .. } => format!("log {message:?}"),
        Command::SpawnTailscaled { argv } => format!("spawn `{}`", argv.join(" ")),
        Command::RunCli { argv, .. } => {
            let v: Vec<String> = argv.iter().map(crate::machine::Arg::redacted).collect();
            format!("run `{}`", v.join(" "))
        }
        Command::WatchBus { watch, mask } => format!("watch bus #{watch} (mask {mask})"),
        Command::WaitSocket { path } => format!("wait for {}", path.display()),
        Command::SymlinkSocket { link, .. } => format!("symlink {}", link.display()),
        Command::PrepareKernel { .. } => "prepare kernel mode".to_string(),
        Command::InstallRules { rules, .. } => format!("install {} rules", rules.len()),
        Command::SignalTailscaled { signal } => format!("signal tailscaled {signal:?}"),
        Command::SignalCli { cli, signal } => format!("signal tailscale {cli} {signal:?}"),
        Command::DumpTrace { path } => format!("dump trace to {}", path.display()),
        Command::Kube { call } => format!("kube {}", kube_call(call)),
        Command::AnnounceStartupComplete => "startup complete".to_string(),
        Command::Exit { code } => format!("exit {code}"),
    }
}
