//! The `updraft` command: the RTMFP server and its tools.

mod config;
mod dump;
mod inspect;
mod inspect_flash;
mod metrics;
mod ops;
mod pcap;
mod server;

use std::process::ExitCode;

/// The usage text of `updraft`.
fn usage() -> String {
    format!(
        "usage: updraft [--config FILE] [--port N] [--bind ADDR] [--www DIR] [--workers N]\n               [--mode auto|socket|xdp] [--interface IF]
               [--log=0..8] [--dump] [--daemon] [--pidfile FILE]\n               [--single-process] [--metrics ADDR:PORT]\n       serve RTMFP (default UDP [::]:1935, www ./www)\n{}\nusage: updraft --version | --help",
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
        Some(server::CONTROL_SUBCOMMAND) => ExitCode::from(server::run_control(&args[1..])),
        Some("--help") | Some("-h") => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(server::run(&args)),
    }
}
