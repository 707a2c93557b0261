//! `fwctl` binary: parse arguments, run the command, map the outcome to an exit code.
use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(fwctl::cli::main())
}
