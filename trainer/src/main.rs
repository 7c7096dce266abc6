//! `signrt-train`: synthesise data, inspect datasets, train, evaluate, export.

use clap::{Parser, Subcommand};
use signrt_trainer::{data, synth};

#[derive(Parser)]
#[command(
    name = "signrt-train",
    version,
    about = "Train and export signrt sign-language models"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a deterministic synthetic signer corpus in the seed's layout.
    Synth(synth::cli::SynthArgs),
    /// Inspect a dataset.
    #[command(subcommand)]
    Data(data::cli::DataCmd),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Synth(a) => synth::cli::run(a),
        Cmd::Data(c) => data::cli::run(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
