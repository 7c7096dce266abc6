//! NIST's sclite (SCTK; Debian package `sctk`, which `.ci/run` installs) as the oracle for corpus
//! WER counts: the hypotheses and references go to it as `trn` files, and its detailed report gives
//! the substitutions, deletions and insertions of its own alignment.

use std::path::Path;
use std::process::Command;

/// sclite's corpus counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub substitutions: usize,
    pub deletions: usize,
    pub insertions: usize,
    pub reference_words: usize,
}

/// The command that runs sclite here (`sclite`, or Debian's `sctk sclite` wrapper), if any.
fn command() -> Option<Vec<&'static str>> {
    [vec!["sclite"], vec!["sctk", "sclite"]]
        .into_iter()
        .find(|c| {
            Command::new(c[0]).args(&c[1..]).output().is_ok_and(|o| {
                // its usage, on stdout or stderr
                let all = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&all).contains("sclite Version")
            })
        })
}

/// Scores `(id, reference, hypothesis)` triples (glosses separated by spaces) with sclite, in
/// `dir`, as `trn` files. None when sclite is not installed; in CI (`CI` set) that is a failure
/// instead.
pub fn score(dir: &Path, utterances: &[(String, String, String)]) -> Option<Counts> {
    let trn = |pick: fn(&(String, String, String)) -> &String| -> String {
        utterances
            .iter()
            .map(|u| format!("{} ({})\n", pick(u), u.0))
            .collect()
    };
    let (r, h) = (dir.join("ref.trn"), dir.join("hyp.trn"));
    std::fs::write(&r, trn(|u| &u.1)).unwrap();
    std::fs::write(&h, trn(|u| &u.2)).unwrap();
    score_files(&r, "trn", &h, "trn")
}

/// Scores a hypothesis file against a reference file in the formats sclite names (`trn`, `ctm`,
/// `stm`). None when sclite is not installed; in CI (`CI` set) that is a failure instead.
pub fn score_files(reference: &Path, rfmt: &str, hypothesis: &Path, hfmt: &str) -> Option<Counts> {
    let Some(cmd) = command() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "sclite is needed to check the corpus WER (.ci/run installs Debian's sctk)"
        );
        eprintln!(
            "note: sclite not found: the WER was not checked against it (apt-get install sctk)"
        );
        return None;
    };
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..]).arg("-r").arg(reference).arg(rfmt);
    c.arg("-h").arg(hypothesis).arg(hfmt);
    if rfmt == "trn" {
        c.args(["-i", "rm"]);
    }
    let out = c
        .args(["-o", "dtl", "stdout"])
        .output()
        .expect("running sclite");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sclite failed: {report}");
    // lines such as `Percent Substitution      =   16.7%   (   1)`
    let count = |label: &str| -> usize {
        let line = report
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in sclite's report:\n{report}"));
        let inner = &line[line.rfind('(').unwrap() + 1..line.rfind(')').unwrap()];
        inner.trim().parse().unwrap()
    };
    Some(Counts {
        substitutions: count("Percent Substitution"),
        deletions: count("Percent Deletions"),
        insertions: count("Percent Insertions"),
        reference_words: count("Ref. words"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-counted corpus: one substitution and one deletion in the first utterance, one
    /// insertion in the second, an empty hypothesis (two deletions) in the third.
    #[test]
    fn sclite_counts_a_hand_made_corpus() {
        let d = std::env::temp_dir().join(format!("signrt-sclite-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let u = |id: &str, r: &str, h: &str| (id.to_string(), r.to_string(), h.to_string());
        let got = score(
            &d,
            &[
                u("a", "A B C D", "A X C"),
                u("b", "E F", "E F G"),
                u("c", "H I", ""),
            ],
        );
        let _ = std::fs::remove_dir_all(&d);
        if let Some(c) = got {
            assert_eq!(
                c,
                Counts {
                    substitutions: 1,
                    deletions: 3,
                    insertions: 1,
                    reference_words: 8
                }
            );
        }
    }
}
