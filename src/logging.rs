//! Log lines like upstream's Go `log` with prefix `boot: `:
//! `boot: YYYY/MM/DD HH:MM:SS message`, on stderr. `RUST_LOG` is honoured;
//! the default level is info.

use std::io::Write;

/// Installs the logger; later calls do nothing.
pub fn init() {
    let env = env_logger::Env::default().default_filter_or("info");
    let mut builder = env_logger::Builder::from_env(env);
    // The HTTP and TLS stacks log headers, bodies and handshakes at
    // debug/trace: the bearer token and a secret's data (the auth key,
    // tailscaled's machine key) would reach stderr. They stay at info
    // whatever RUST_LOG says.
    for module in ["ureq", "ureq_proto", "rustls", "hyper", "h2"] {
        builder.filter_module(module, log::LevelFilter::Info);
    }
    let _ = builder
        .format(|buf, record| {
            // RFC 3339 UTC ("2026-11-25T10:20:53Z") into Go's log layout.
            let ts = buf.timestamp_seconds().to_string();
            let ts = ts
                .trim_end_matches('Z')
                .replacen('T', " ", 1)
                .replace('-', "/");
            writeln!(buf, "boot: {ts} {}", record.args())
        })
        .target(env_logger::Target::Stderr)
        .try_init();
}
