//! `quiver-demo` (also run as `quiver demo`): the whole fraud loop on the embedded
//! default. See the crate docs of `quiver_demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Runs the whole loop on the embedded default: data, apply, serve, training set,
/// model, scoring.
#[derive(Debug, Parser)]
#[command(name = "quiver-demo", version, about, long_about = None)]
struct Args {
    /// Folder to work in (created; its data is left there).
    #[arg(long, default_value = "quiver-demo")]
    dir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    quiver_server::logging::init("warn", false);
    if let Err(e) = quiver_demo::run(&args.dir).await {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
