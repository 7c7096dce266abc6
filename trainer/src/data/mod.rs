//! Dataset readers. Not implemented yet.

pub mod cli {
    /// `signrt-train data ...`.
    #[derive(clap::Subcommand, Debug)]
    pub enum DataCmd {
        /// Print dataset statistics and every problem found.
        Stats {
            #[arg(long)]
            data: std::path::PathBuf,
        },
    }

    pub fn run(_cmd: DataCmd) -> anyhow::Result<()> {
        anyhow::bail!("data is not implemented yet")
    }
}
