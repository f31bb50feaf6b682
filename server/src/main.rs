//! The `quiver` command: see `quiver --help`.

fn main() -> std::process::ExitCode {
    quiver_server::cli::main()
}
