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

/// Whether `host` can name the API server: an IP address (an IPv6 one
/// possibly in brackets) or a host name (letters, digits, `-` and `.`, the
/// labels neither empty nor starting or ending with `-`). Anything else
/// (`localhost/#`, a URL, a user part) would turn the request URL, and the
/// bearer token sent with it, toward something else.
pub fn is_api_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(server_url("10.96.0.1", 443), "https://10.96.0.1:443");
        assert_eq!(server_url("fd00::1", 6443), "https://[fd00::1]:6443");
        assert_eq!(server_url("[fd00::1]", 6443), "https://[fd00::1]:6443");
        assert_eq!(server_url("kube.local", 443), "https://kube.local:443");
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("tailscale"));
        assert!(is_dns_name("ts-state.v1"));
        for bad in ["", "Tailscale", "a/b", "-x", "x-", "a..b", "../x"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
