//! `signrt`: the edge runtime's command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use signrt_runtime::bundle::{Bundle, MANIFEST_FILE};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "signrt",
    version,
    about = "Offline continuous sign-language recognition on the edge"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a bundle's manifest, its files and the result of checking their checksums.
    Info {
        /// Bundle directory.
        #[arg(long)]
        bundle: PathBuf,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { bundle } => info(&bundle),
    }
}

fn info(dir: &std::path::Path) -> Result<()> {
    let m =
        Bundle::read_manifest(dir).with_context(|| format!("reading bundle {}", dir.display()))?;
    println!("bundle      {}", dir.display());
    println!("producer    {}", m.producer);
    println!(
        "model       feature_dim {} grid {}x{} vocab {}",
        m.model.feature_dim, m.model.grid, m.model.grid, m.model.vocab_size
    );
    for (k, v) in &m.model.extra {
        println!("  {k:<10}{v}");
    }
    println!(
        "input       {}x{} RGB, mean {:?} std {:?}",
        m.input.width, m.input.height, m.input.mean, m.input.std
    );
    println!(
        "stream      window {} stride {} at {} fps; keyframe ratio {}",
        m.stream.window, m.stream.stride, m.stream.fps, m.keyframe_ratio
    );
    match &m.quantization {
        None => println!("quantized   no (float bundle)"),
        Some(q) => println!(
            "quantized   {} ({} calibration, {} samples)",
            q.mode, q.method, q.samples
        ),
    }
    println!("files");
    let mut bad = 0;
    for (name, entry) in &m.files {
        let status = match Bundle::verify_file(dir, name, entry) {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                bad += 1;
                format!("FAILED: {e}")
            }
        };
        println!(
            "  {name:<16}{:>12} bytes  sha256 {}  {status}",
            entry.bytes, entry.sha256
        );
    }
    if bad > 0 {
        anyhow::bail!(
            "{bad} bundle file(s) failed verification in {}",
            dir.join(MANIFEST_FILE).display()
        );
    }
    let b = Bundle::open(dir)?;
    println!("vocabulary  {} glosses + blank", b.vocab.len() - 1);
    Ok(())
}
