//! The one describer of steps, events and commands for people: the
//! failure dump, `trace render`, the demo and the core tests all use it.

use crate::ipn::mask;
use crate::machine::kube::{KubeCall, KubeReply};
use crate::machine::{Arg, Command, Event, ReconcileOutcome, Step};

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
        Event::RulesReconciled { .. } => "RulesReconciled",
        Event::TailscaledExited { .. } => "TailscaledExited",
        Event::Signal { .. } => "Signal",
        Event::DeadlineExpired => "DeadlineExpired",
        Event::Timeout { .. } => "Timeout",
        Event::TraceDumped { .. } => "TraceDumped",
        Event::Kube { .. } => "Kube",
        Event::ServeConfigRead { .. } => "ServeConfigRead",
        Event::ServeConfigUnreadable { .. } => "ServeConfigUnreadable",
        Event::ServeConfigSet { .. } => "ServeConfigSet",
        Event::DnsConfigFetched { .. } => "DnsConfigFetched",
        Event::WatchFallback { .. } => "WatchFallback",
        Event::ConfigFileRead { .. } => "ConfigFileRead",
        Event::ConfigFileUnreadable { .. } => "ConfigFileUnreadable",
        Event::ConfigReloaded { .. } => "ConfigReloaded",
    }
}

/// One event in a few words.
pub fn describe_event(event: &Event) -> String {
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
        Event::RulesReconciled {
            outcome: ReconcileOutcome::Done {
                backend, counts, ..
            },
        } => format!(
            "RulesReconciled({backend}: {} added, {} removed, {} kept)",
            counts.added, counts.removed, counts.kept
        ),
        Event::RulesReconciled {
            outcome: ReconcileOutcome::Failed { error },
        } => format!("RulesReconciled(failed: {error})"),
        Event::BusOpened { watch } => format!("BusOpened#{watch}"),
        Event::BusEnded { watch } => format!("BusEnded#{watch}"),
        Event::BusFailed { watch, error } => format!("BusFailed#{watch}({error})"),
        Event::Kube { call, reply } => {
            format!("Kube({} -> {})", kube_call(call), kube_reply(reply))
        }
        Event::ServeConfigRead { content } => format!("ServeConfigRead({} bytes)", content.len()),
        Event::ServeConfigUnreadable { error } => format!("ServeConfigUnreadable({error})"),
        Event::ServeConfigSet { error: Some(e) } => format!("ServeConfigSet(failed: {e})"),
        Event::DnsConfigFetched { error: Some(e), .. } => format!("DnsConfigFetched(failed: {e})"),
        Event::DnsConfigFetched {
            cert_domain: Some(d),
            ..
        } => format!("DnsConfigFetched({d})"),
        Event::DnsConfigFetched { .. } => "DnsConfigFetched(no cert domain)".to_string(),
        Event::ConfigFileRead {
            digest,
            problem: None,
        } => format!("ConfigFileRead({})", &digest[..digest.len().min(12)]),
        Event::ConfigFileRead {
            digest,
            problem: Some(p),
        } => format!(
            "ConfigFileRead({}, invalid: {p})",
            &digest[..digest.len().min(12)]
        ),
        Event::ConfigFileUnreadable { error } => format!("ConfigFileUnreadable({error})"),
        Event::ConfigReloaded { outcome } => format!("ConfigReloaded({outcome:?})"),
        Event::WatchFallback { path, every_ms, .. } => {
            format!("WatchFallback({} every {every_ms} ms)", path.display())
        }
        other => event_kind(other).to_string(),
    }
}

/// A Kubernetes call in a few words.
fn kube_call(call: &KubeCall) -> String {
    use KubeCall;
    match call {
        KubeCall::Connect { target } => format!("connect {}:{}", target.host, target.port),
        KubeCall::CheckPermission { verb } => format!("can-i {verb}"),
        KubeCall::ReadAuthKey => "get secret (authkey)".into(),
        KubeCall::ProbeSecret => "get secret (probe)".into(),
        KubeCall::StoreDeviceInfo { info } => {
            format!("patch device info {} {}", info.id, info.fqdn)
        }
        KubeCall::RemoveAuthKey => "patch remove authkey".into(),
        KubeCall::StoreHttpsEndpoint {
            endpoint: Some(endpoint),
        } => format!("patch https_endpoint {endpoint}"),
        KubeCall::StoreHttpsEndpoint { endpoint: None } => "patch remove https_endpoint".into(),
    }
}

fn kube_reply(reply: &KubeReply) -> String {
    use KubeReply;
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

/// One command in a few words (secrets redacted).
pub fn describe_command(command: &Command) -> String {
    match command {
        Command::Log { message, .. } => format!("log {message:?}"),
        Command::SpawnTailscaled { argv } => format!("spawn {}", argv.join(" ")),
        Command::RunCli { argv, .. } => {
            let v: Vec<String> = argv.iter().map(Arg::redacted).collect();
            format!("cli {}", v.join(" "))
        }
        Command::WatchBus { watch, mask, .. } => {
            format!("watch#{watch} mask={}", mask::names(*mask).join("|"))
        }
        Command::WaitSocket { path } => format!("wait {}", path.display()),
        Command::SymlinkSocket { link, target } => {
            format!("symlink {} -> {}", link.display(), target.display())
        }
        Command::PrepareKernel {
            ipv4_forwarding,
            ipv6_forwarding,
            ..
        } => format!("prepare v4={ipv4_forwarding} v6={ipv6_forwarding}"),
        Command::ReconcileRules { backend, rules } => {
            let r: Vec<String> = rules.iter().map(|r| r.iptables_argv().join(" ")).collect();
            format!("reconcile {backend} [{}]", r.join("; "))
        }
        Command::SignalTailscaled { signal } => format!("signal {signal:?}"),
        Command::SignalCli { cli, signal } => format!("signal cli {cli} {signal:?}"),
        Command::DumpTrace { path } => format!("dump {}", path.display()),
        Command::Kube {
            call: KubeCall::Connect { target },
        } => format!(
            "kube Connect {}:{} secret {}",
            target.host, target.port, target.secret
        ),
        Command::Kube { call } => format!("kube {call:?}"),
        Command::WatchServeConfig { path } => format!("watch serve config {}", path.display()),
        Command::SetServeConfig { config, .. } => format!("set serve config {config}"),
        Command::FetchDnsConfig { .. } => "fetch dns-config".to_string(),
        Command::WatchConfigFile { path } => format!("watch config file {}", path.display()),
        Command::ReloadConfig { .. } => "reload config".to_string(),
        Command::AnnounceStartupComplete => "startup complete".to_string(),
        Command::Exit { code } => format!("exit {code}"),
    }
}
