fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    if let Some(code) = containerboot::sim::dispatch(&argv0, args.collect()) {
        std::process::exit(code);
    }
}
