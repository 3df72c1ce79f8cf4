//! The Kubernetes names and addresses settings need, without a client.

/// The service-account directory, under `TS_TEST_ONLY_ROOT`.
pub const SERVICE_ACCOUNT_DIR: &str = "var/run/secrets/kubernetes.io/serviceaccount";

/// The API server's URL from `KUBERNETES_SERVICE_HOST` and
/// `KUBERNETES_SERVICE_PORT_HTTPS`, with an IPv6 host in brackets.
pub fn server_url(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

/// Whether `s` is a DNS subdomain name (RFC 1123), as Kubernetes requires
/// of a secret's name.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
