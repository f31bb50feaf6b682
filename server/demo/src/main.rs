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
    /// Kafka bootstrap servers (`host:port`): score the held-out days between two
    /// topics created on this broker instead of from memory.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    quiver_server::logging::init("warn", false);
    let options = quiver_demo::Options { kafka: args.kafka };
    if let Err(e) = quiver_demo::run(&args.dir, &options).await {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
