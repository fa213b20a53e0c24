//! The `updraft` command: the RTMFP server and its tools.

mod config;
mod inspect;
mod inspect_flash;
mod ops;
mod pcap;
mod server;

use std::process::ExitCode;

/// The usage text of `updraft`.
fn usage() -> String {
    format!(
        "usage: updraft [--config FILE] [--port N] [--bind ADDR]   serve RTMFP (default UDP [::]:1935)\n{}\nusage: updraft --version | --help",
        inspect::USAGE
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("updraft {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("inspect") => ExitCode::from(inspect::run(&args[1..])),
        Some("--help") | Some("-h") => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(server::run(&args)),
    }
}
