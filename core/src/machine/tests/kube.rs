//! The Kubernetes secret session: checks, auth key, device info, retries.

use super::harness::*;

#[test]
fn kube_secret_empty_means_no_kubernetes_calls() {
    let mut r = Run::new(&[IN_KUBE, ("TS_KUBE_SECRET", ""), ("TS_AUTHKEY", "k")]);
    let fx = r.boot_to_bus();
    assert!(fx.iter().all(|f| !f.starts_with("kube")), "{fx:?}");
    assert!(fx[0].contains("--state=mem:"), "{fx:?}");
    assert_eq!(
        r.fx(ok(Cli::Up)),
        ["watch#2 mask=InitialState|InitialNetMap"]
    );
    assert_eq!(
        r.fx(bus(2, Some(IpnState::Running), None)),
        ["watch#3 mask=InitialState|InitialNetMap"]
    );
    assert_eq!(
        r.fx(bus(3, None, Some(netmap(&["100.64.0.1/32"])))),
        ["startup complete"]
    );
}

#[test]
fn kube_auth_key_from_secret_then_removed_and_device_info_stored() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTH_ONCE", "true")]);
    assert_eq!(r.kube_checks(true, true, true), ["kube ReadAuthKey"]);
    let s = r.step(kube(
        KubeCall::ReadAuthKey,
        KubeReply::Secret {
            authkey: Some(crate::secret::Secret::new("tskey-from-secret")),
        },
    ));
    assert!(logs(&s).contains(&"Using authkey found in kube secret".to_string()));
    assert_eq!(
        effects(&s),
        [
            "spawn tailscaled --socket=/tmp/tailscaled.sock --state=kube:tailscale --statedir=/tmp --tun=userspace-networking",
            "wait /tmp/tailscaled.sock",
        ]
    );
    r.boot_to_bus_after_start();
    assert_eq!(
        r.fx(state(IpnState::NeedsLogin)),
        ["cli tailscale --socket=/tmp/tailscaled.sock up --accept-dns=false --authkey=<redacted>"]
    );
    // The key never reaches the trace.
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("tskey-from-secret"), "{json}");

    assert_eq!(
        r.fx(ok(Cli::Up)),
        ["watch#2 mask=InitialState|InitialNetMap"]
    );
    assert_eq!(r.fx(bus(2, Some(IpnState::Running), None)).len(), 1);
    let s = r.step(ok(Cli::Set));
    assert!(logs(&s).contains(&"Deleting authkey from kube secret".to_string()));
    assert_eq!(
        effects(&s),
        [
            "kube RemoveAuthKey",
            "watch#3 mask=InitialState|InitialNetMap"
        ]
    );

    // The netmap waits for the removal; startup is not complete yet.
    let a = info("nSELF", "a.ts.net.", &["100.64.0.1"]);
    assert!(
        r.fx(bus(
            3,
            Some(IpnState::Running),
            Some(node("nSELF", "a.ts.net.", &["100.64.0.1/32"]))
        ))
        .is_empty()
    );
    assert_eq!(
        r.fx(kube(KubeCall::RemoveAuthKey, KubeReply::Done)),
        ["kube ProbeSecret"]
    );
    assert_eq!(
        r.fx(kube(
            KubeCall::ProbeSecret,
            KubeReply::Secret { authkey: None }
        )),
        [store_fx(&a)]
    );
    assert_eq!(
        r.fx(kube(
            KubeCall::StoreDeviceInfo { info: a.clone() },
            KubeReply::Done
        )),
        ["startup complete"]
    );
    // Same (id, name): nothing to write, also when only addresses change
    // (upstream's rule).
    assert!(
        r.fx(bus(
            3,
            None,
            Some(node("nSELF", "a.ts.net.", &["100.64.0.1/32"]))
        ))
        .is_empty()
    );
    assert!(
        r.fx(bus(
            3,
            None,
            Some(node("nSELF", "a.ts.net.", &["100.64.0.9/32"]))
        ))
        .is_empty()
    );
    // A new name is written.
    assert_eq!(
        r.fx(bus(
            3,
            None,
            Some(node("nSELF", "b.ts.net.", &["100.64.0.9/32"]))
        )),
        ["kube ProbeSecret"]
    );
    let b = info("nSELF", "b.ts.net.", &["100.64.0.9"]);
    assert_eq!(
        r.fx(kube(
            KubeCall::ProbeSecret,
            KubeReply::Secret { authkey: None }
        )),
        [store_fx(&b)]
    );
    assert!(
        r.fx(kube(KubeCall::StoreDeviceInfo { info: b }, KubeReply::Done))
            .is_empty()
    );
}

#[test]
fn kube_missing_required_verbs_are_fatal_and_named() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k")]);
    let fx = r.kube_checks(false, false, true);
    assert_eq!(fx, ["exit 1"]);
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k")]);
    r.fx(Event::Start);
    r.fx(connected());
    r.fx(allowed(Verb::Get, true));
    let s = r.step(allowed(Verb::Update, false));
    assert_eq!(
        logs(&s),
        [
            "Some Kubernetes permissions are missing, please check your RBAC configuration: missing update permission on secret \"tailscale\" in namespace \"ns\""
        ]
    );
    assert_eq!(effects(&s), ["exit 1"]);
}

#[test]
fn kube_without_patch_never_writes() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k"), ("TS_AUTH_ONCE", "true")]);
    let fx = r.kube_checks(true, true, false);
    assert!(
        fx[0].starts_with("spawn tailscaled"),
        "no auth key read: {fx:?}"
    );
    assert_eq!(
        r.auth_once_to_set_done(),
        ["watch#3 mask=InitialState|InitialNetMap"]
    );
    assert_eq!(
        r.fx(bus(
            3,
            Some(IpnState::Running),
            Some(netmap(&["100.64.0.1/32"]))
        )),
        ["startup complete"]
    );
}

#[test]
fn kube_auth_key_in_secret_without_patch_is_fatal() {
    let mut r = Run::new(&[IN_KUBE]);
    assert_eq!(r.kube_checks(true, true, false), ["kube ReadAuthKey"]);
    let s = r.step(kube(
        KubeCall::ReadAuthKey,
        KubeReply::Secret {
            authkey: Some(crate::secret::Secret::new("k")),
        },
    ));
    assert_eq!(
        logs(&s),
        [
            "authkey found in TS_KUBE_SECRET, but the pod doesn't have patch permissions on the secret to manage the authkey."
        ]
    );
    assert_eq!(effects(&s), ["exit 1"]);
}

#[test]
fn kube_missing_secret_names_it() {
    let mut r = Run::new(&[IN_KUBE]);
    r.kube_checks(true, true, true);
    let s = r.step(kube(
        KubeCall::ReadAuthKey,
        KubeReply::Status {
            code: 404,
            message: "secrets \"tailscale\" not found".into(),
        },
    ));
    assert!(logs(&s)[0].starts_with("Getting authkey from kube secret: secret \"tailscale\" not found in namespace \"ns\": create it"), "{:?}", logs(&s));
    assert_eq!(effects(&s), ["exit 1"]);
}

#[test]
fn kube_transient_failures_retry_with_backoff_and_log_once() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k")]);
    r.fx(Event::Start);
    r.fx(connected());
    let get = KubeCall::CheckPermission { verb: Verb::Get };
    let s = r.step(transient(get.clone(), "connection refused"));
    assert!(effects(&s).is_empty());
    assert_eq!(logs(&s).len(), 1);
    assert!(
        logs(&s)[0].starts_with(
            "Kubernetes API: checking get permission failed: connection refused; retrying in "
        ),
        "{:?}",
        logs(&s)
    );
    let mut waits = Vec::new();
    for _ in 0..6 {
        let t0 = r.now;
        let s = r.advance_to_next_deadline();
        waits.push(r.now - t0);
        assert_eq!(effects(&s), ["kube CheckPermission { verb: Get }"]);
        // The same failure again: no new log line.
        let s = r.step(transient(get.clone(), "connection refused"));
        assert!(logs(&s).is_empty(), "{:?}", logs(&s));
        assert!(s.note.is_some());
    }
    // Exponential, capped at 4 s while booting, with at most 25 % jitter.
    assert!(waits[1] > waits[0] && waits[2] > waits[1], "{waits:?}");
    assert!(
        waits.iter().all(|w| *w <= KUBE_RETRY_CAP_BOOT_MS),
        "{waits:?}"
    );
    assert!(waits[5] >= KUBE_RETRY_CAP_BOOT_MS * 3 / 4 - 20, "{waits:?}");
    // A different error is logged; recovery is logged.
    r.advance_to_next_deadline();
    let s = r.step(transient(get.clone(), "503 Service Unavailable"));
    assert_eq!(logs(&s).len(), 1);
    r.advance_to_next_deadline();
    let s = r.step(allowed(Verb::Get, true));
    assert!(
        logs(&s)[0].contains("went through after 8 failed attempts"),
        "{:?}",
        logs(&s)
    );
    assert_eq!(effects(&s), ["kube CheckPermission { verb: Update }"]);
}

#[test]
fn kube_boot_deadline_bounds_the_checks() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k"), ("TS_BOOT_TIMEOUT", "10s")]);
    r.fx(Event::Start);
    r.fx(connected());
    let get = KubeCall::CheckPermission { verb: Verb::Get };
    r.step(transient(get.clone(), "connection refused"));
    // Every retry fails; the boot deadline ends it within a bounded
    // number of wake-ups (10 s at most 4 s apart).
    let s = r.drive_bounded(
        10,
        |s| effects(s) == ["exit 1"],
        |_| Some(transient(get.clone(), "connection refused")),
    );
    assert!(logs(&s)[0].starts_with("timed out after 10000 ms in CheckingKube checking get permission; last error: connection refused"), "{:?}", logs(&s));
}

#[test]
fn kube_device_info_is_never_lost_to_a_failed_write() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k")]);
    r.kube_checks(true, true, true);
    r.boot_to_bus_after_start();
    r.fx(ok(Cli::Up));
    r.fx(bus(2, Some(IpnState::Running), None));
    let a = info("n1", "a.ts.net.", &["100.64.0.1"]);
    assert_eq!(
        r.fx(bus(
            3,
            Some(IpnState::Running),
            Some(node("n1", "a.ts.net.", &["100.64.0.1/32"]))
        )),
        ["kube ProbeSecret"]
    );
    r.fx(kube(
        KubeCall::ProbeSecret,
        KubeReply::Secret { authkey: None },
    ));
    // The write of A fails; B arrives while it waits to be retried.
    let s = r.step(transient(
        KubeCall::StoreDeviceInfo { info: a.clone() },
        "500 etcd",
    ));
    assert_eq!(logs(&s).len(), 1);
    assert!(
        r.fx(bus(
            3,
            None,
            Some(node("n2", "b.ts.net.", &["100.64.0.2/32"]))
        ))
        .is_empty()
    );
    // The retry writes B, the latest.
    let b = info("n2", "b.ts.net.", &["100.64.0.2"]);
    assert_eq!(effects(&r.advance_to_next_deadline()), [store_fx(&b)]);
    // Back to A while B is being written: A is written after B, not
    // skipped as "unchanged".
    assert!(
        r.fx(bus(
            3,
            None,
            Some(node("n1", "a.ts.net.", &["100.64.0.1/32"]))
        ))
        .is_empty()
    );
    assert_eq!(
        r.fx(kube(KubeCall::StoreDeviceInfo { info: b }, KubeReply::Done)),
        ["kube ProbeSecret", "startup complete"]
    );
    assert_eq!(
        r.fx(kube(
            KubeCall::ProbeSecret,
            KubeReply::Secret { authkey: None }
        )),
        [store_fx(&a)]
    );
    assert!(
        r.fx(kube(KubeCall::StoreDeviceInfo { info: a }, KubeReply::Done))
            .is_empty()
    );
    assert!(r.m.next_deadline().is_none());
}

#[test]
fn kube_probe_4xx_skips_and_403_on_write_is_fatal() {
    let mut r = Run::new(&[IN_KUBE, ("TS_AUTHKEY", "k")]);
    r.kube_checks(true, true, true);
    r.boot_to_bus_after_start();
    r.fx(ok(Cli::Up));
    r.fx(bus(2, Some(IpnState::Running), None));
    r.fx(bus(
        3,
        Some(IpnState::Running),
        Some(node("n1", "a.ts.net.", &["100.64.0.1/32"])),
    ));
    let s = r.step(kube(
        KubeCall::ProbeSecret,
        KubeReply::Status {
            code: 404,
            message: "not found".into(),
        },
    ));
    assert_eq!(effects(&s), ["startup complete"]);
    assert!(
        logs(&s)[0].starts_with("Not storing device info: "),
        "{:?}",
        logs(&s)
    );
    r.fx(bus(
        3,
        None,
        Some(node("n1", "c.ts.net.", &["100.64.0.1/32"])),
    ));
    r.fx(kube(
        KubeCall::ProbeSecret,
        KubeReply::Secret { authkey: None },
    ));
    let c = info("n1", "c.ts.net.", &["100.64.0.1"]);
    let s = r.step(kube(
        KubeCall::StoreDeviceInfo { info: c },
        KubeReply::Status {
            code: 403,
            message: "forbidden".into(),
        },
    ));
    assert_eq!(
        logs(&s),
        [
            "storing device ID in kube secret: storing device info in the secret (secret \"tailscale\" in namespace \"ns\"): 403 forbidden"
        ]
    );
    assert_eq!(effects(&s), ["signal Term"]);
}
