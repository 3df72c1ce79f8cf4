//! Kubernetes API answers → the machine's `KubeReply`: status codes,
//! `Status` objects, SelfSubjectAccessReviews and Secrets, decoded as
//! `exec::kube` decodes them (`reply_for`: past the transport and the
//! token handling).
//!
//! Input: byte 0 picks the call, bytes 1–2 the status code (100..=599), the
//! rest is the body (UTF-8, as the client reads it; other bodies are a
//! transport error there).
//!
//! Checks: no panic; the reply fits the call; an auth key read is trimmed
//! and not empty; an auth key the body carries (`tskey-…`, base64 or raw)
//! is in no error message.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use containerboot::exec::kube::reply_for;
use containerboot::machine::kube::{DeviceInfo, KubeCall, KubeReply, Verb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let call = match data[0] % 5 {
        0 => KubeCall::CheckPermission {
            verb: [Verb::Get, Verb::Update, Verb::Patch][(data[0] / 5 % 3) as usize],
        },
        1 => KubeCall::ReadAuthKey,
        2 => KubeCall::ProbeSecret,
        3 => KubeCall::StoreDeviceInfo {
            info: DeviceInfo {
                id: "nID".into(),
                fqdn: "node.tailnet.ts.net".into(),
                ips: vec![],
            },
        },
        _ => KubeCall::RemoveAuthKey,
    };
    let code = 100 + u16::from_le_bytes([data[1], data[2]]) % 500;
    let Ok(body) = std::str::from_utf8(&data[3..]) else {
        return;
    };
    let reply = reply_for(&call, code, body.to_string());

    match (&call, &reply, code) {
        (_, KubeReply::Status { code: c, .. }, _) => {
            assert_eq!(*c, code);
            assert!(
                !(200..=299).contains(c) && *c != 429 && *c < 500,
                "{reply:?}"
            );
        }
        (_, KubeReply::Failed { .. }, _) => {}
        (KubeCall::CheckPermission { .. }, KubeReply::Allowed { .. }, 200..=299) => {}
        (KubeCall::ReadAuthKey, KubeReply::Secret { authkey }, 200..=299) => {
            if let Some(k) = authkey {
                let k = k.expose();
                assert!(!k.is_empty() && k.trim() == k, "auth key {k:?}");
            }
        }
        (KubeCall::ProbeSecret, KubeReply::Secret { authkey: None }, 200..=299) => {}
        (
            KubeCall::StoreDeviceInfo { .. } | KubeCall::RemoveAuthKey,
            KubeReply::Done,
            200..=299,
        ) => {}
        _ => panic!("{call:?} answered {code} gave {reply:?}"),
    }

    // A 2xx Secret whose body is refused: the key it carries must not be
    // quoted. (Other codes quote the start of the body on purpose: the API
    // server's error.) Only a value shaped like a real key (`tskey-…`,
    // raw or base64) is looked for: containerboot's own words hold no
    // such value, while any other string may be a piece of them (the
    // fuzzer once made the key "the call: malformed response: data.authkey
    // is not base64", which the message then rightly contained).
    let key = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/data/authkey")?.as_str().map(str::to_string));
    if let (Some(b64), KubeReply::Failed { error, .. }, 200..=299) = (key, &reply, code) {
        if b64.starts_with("tskey-") && b64.len() >= 12 {
            assert!(!error.contains(&b64), "the raw auth key in {error:?}");
        }
        if let Ok(plain) = B64.decode(&b64)
            && let Ok(plain) = String::from_utf8(plain)
            && plain.trim().starts_with("tskey-")
            && plain.trim().len() >= 12
        {
            assert!(!error.contains(&b64), "the base64 auth key in {error:?}");
            assert!(!error.contains(plain.trim()), "the auth key in {error:?}");
        }
    }
});
