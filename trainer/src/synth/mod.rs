//! The synthetic signer corpus. Not implemented yet.

pub mod cli {
    /// `signrt-train synth`.
    #[derive(clap::Args, Debug)]
    pub struct SynthArgs {
        /// Output directory.
        #[arg(long)]
        pub out: std::path::PathBuf,
    }

    pub fn run(_args: SynthArgs) -> anyhow::Result<()> {
        anyhow::bail!("synth is not implemented yet")
    }
}
