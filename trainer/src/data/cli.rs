//! `signrt-train data stats`.

use super::*;
use anyhow::Context;

/// `signrt-train data ...`.
#[derive(clap::Subcommand, Debug)]
pub enum DataCmd {
    /// Print videos, frames, glosses, sentences, vocabulary and lengths, then every problem found.
    Stats {
        #[arg(long)]
        data: PathBuf,
        /// auto, seed, phoenix2014 or phoenix2014t.
        #[arg(long, default_value = "auto")]
        format: String,
        /// One split only (default: every split present).
        #[arg(long)]
        split: Option<String>,
        /// Skip bad samples and exit 0, reporting counts per kind.
        #[arg(long)]
        skip_bad: bool,
        /// How much of each image to check.
        #[arg(long, value_enum, default_value = "header")]
        check_images: CheckImages,
    },
}

/// Parses `--format`.
pub fn parse_format(s: &str, root: &Path) -> anyhow::Result<Format> {
    Ok(match s {
        "auto" => detect(root)?,
        "seed" => Format::Seed,
        "phoenix2014" => Format::Phoenix2014,
        "phoenix2014t" => Format::Phoenix2014t,
        other => {
            anyhow::bail!("--format `{other}`: expected auto, seed, phoenix2014 or phoenix2014t")
        }
    })
}

fn dist(v: &mut [usize]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    let mean = v.iter().sum::<usize>() as f64 / v.len() as f64;
    format!(
        "min {} median {} mean {:.1} max {}",
        v[0],
        v[v.len() / 2],
        mean,
        v[v.len() - 1]
    )
}

pub fn run(cmd: DataCmd) -> anyhow::Result<()> {
    let DataCmd::Stats {
        data,
        format,
        split,
        skip_bad,
        check_images,
    } = cmd;
    let fmt = parse_format(&format, &data)?;
    let splits: Vec<String> = match split {
        Some(s) => vec![s],
        None => ["train", "dev", "test"]
            .iter()
            .filter(|s| annotation_path(&data, fmt, s).is_file())
            .map(|s| s.to_string())
            .collect(),
    };
    println!("dataset {} ({:?})", data.display(), fmt);
    let opts = LoadOptions {
        skip_bad: true,
        check: check_images,
    };
    let mut problems = Vec::new();
    let mut vocab = None;
    for s in &splits {
        let ds = load_split(&data, fmt, s, &opts).with_context(|| format!("reading split {s}"))?;
        let mut frames: Vec<usize> = ds.samples.iter().map(|x| x.frames.len()).collect();
        let mut lens: Vec<usize> = ds.samples.iter().map(|x| x.glosses.len()).collect();
        let sentences: std::collections::HashSet<&Vec<String>> =
            ds.samples.iter().map(|x| &x.glosses).collect();
        let distinct: std::collections::HashSet<&String> =
            ds.samples.iter().flat_map(|x| &x.glosses).collect();
        println!(
            "{s:<5} videos {:>6}  frames {:>8}  gloss tokens {:>7}  distinct glosses {:>5}  distinct sentences {:>6}",
            ds.samples.len(),
            frames.iter().sum::<usize>(),
            lens.iter().sum::<usize>(),
            distinct.len(),
            sentences.len()
        );
        println!("      frames per video: {}", dist(&mut frames));
        println!("      glosses per sentence: {}", dist(&mut lens));
        if s == "train" {
            vocab = Some(build_vocab(&ds));
        }
        problems.extend(ds.problems);
    }
    if let Some(v) = &vocab {
        println!("vocabulary (from train): {} glosses + blank", v.len() - 1);
    }
    if problems.is_empty() {
        println!("problems: none");
        return Ok(());
    }
    println!("problems: {}", problems.len());
    for p in &problems {
        println!("  {p}");
    }
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in &problems {
        *kinds.entry(p.kind()).or_default() += 1;
    }
    println!(
        "skipped by kind: {}",
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if skip_bad {
        Ok(())
    } else {
        anyhow::bail!(
            "{} bad sample(s); fix them or pass --skip-bad to skip them",
            problems.len()
        )
    }
}
