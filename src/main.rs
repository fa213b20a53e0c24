//! The `updraft` command: the RTMFP server and its tools.

mod pcap;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("updraft {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("updraft: the server is not implemented yet (see issue 3); try `updraft --version`");
            ExitCode::from(2)
        }
    }
}
