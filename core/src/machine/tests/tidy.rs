//! The core's purity as a test (rust-analyzer's "tidy" tests): the core
//! crate's files may not name `std`'s I/O, clocks, the environment, or the
//! crates and modules of the shell. A name in a comment counts too: say
//! "the clock" instead. (The crate boundary already keeps smol, rustix,
//! ureq, rustls, hyper and inotify out: `core/Cargo.toml` has none of them.)

use std::path::{Path, PathBuf};

/// The core crate's sources, all of them. Its `Cargo.toml` already keeps
/// out every crate that could do I/O; this keeps out `std`'s.
const CORE: &[&str] = &["src"];

/// What the core must not name.
const FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::process",
    "std::env",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::net::UdpSocket",
    "std::os::unix::net",
    "std::thread",
    "Instant",
    "SystemTime",
    "rustix::",
    "smol::",
    "async_signal::",
    "ureq::",
    "rustls::",
    "hyper::",
    "inotify::",
    "crate::exec",
    "crate::sources",
    "crate::shell",
    "crate::kube::",
    "crate::localapi",
    "crate::sim",
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Every forbidden name in `text`, as `line: name`.
fn violations(text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .flat_map(|(n, line)| {
            FORBIDDEN
                .iter()
                .filter(move |f| line.contains(**f))
                .map(move |f| format!("{}: {f}", n + 1))
        })
        .collect()
}

#[test]
fn the_core_names_no_io_clock_environment_or_shell_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for part in CORE {
        rust_files(&root.join(part), &mut files);
    }
    assert!(
        files.len() > 10,
        "the core's files were not found: {files:?}"
    );
    let me = Path::new(file!());
    let mut found = Vec::new();
    for f in &files {
        if f.ends_with(me) {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("readable source");
        for v in violations(&text) {
            found.push(format!(
                "{}:{v}",
                f.strip_prefix(root).unwrap_or(f).display()
            ));
        }
    }
    assert!(
        found.is_empty(),
        "the core must not do I/O (see ARCHITECTURE.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_tidy_check_sees_a_planted_violation() {
    assert_eq!(
        violations("fn f() {\n    let t = std::time::Instant::now();\n}"),
        ["2: Instant"]
    );
    assert!(violations("fn f(now_ms: u64) -> u64 { now_ms }").is_empty());
}
