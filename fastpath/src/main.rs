//! `fastpath`: the Totoro data plane as a drop-in frps.

fn main() -> std::process::ExitCode {
    fastpath::cli::main(std::env::args_os())
}
