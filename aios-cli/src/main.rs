//! `aios`: the operator's command line. See `aios --help` and the crate docs of `aios_cli`.

fn main() -> std::process::ExitCode {
    aios_cli::main()
}
