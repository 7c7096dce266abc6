//! The gloss cleanup of PHOENIX's official evaluation, so that a WER here compares with published
//! ones. The release scripts (`evaluation/preprocess.sh` of PHOENIX-2014 and of PHOENIX-2014-T)
//! rewrite the hypothesis CTM line by line with `sed`, `grep` and `awk`; a CTM line holds one gloss,
//! so every rule acts on one gloss at a time (the rules that join spelled letters across words
//! never match a single-gloss line, and are left out). `signrt-train eval` applies the rules to the
//! hypotheses and to the references. Byte-wise: `[A-Z]` is ASCII, as in the scripts' C locale, and
//! other bytes are copied, so UTF-8 glosses stay intact.

/// Which release's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Cleanup {
    /// PHOENIX-2014's `preprocess.sh`.
    Phoenix2014,
    /// PHOENIX-2014-T's `preprocess.sh`.
    Phoenix2014t,
}

/// A gloss sequence after the release's rules: glosses rewritten or dropped, and for
/// PHOENIX-2014-T repeats merged.
pub fn clean(rules: Cleanup, glosses: &[String]) -> Vec<String> {
    let cleaned = glosses.iter().filter_map(|g| match rules {
        Cleanup::Phoenix2014 => clean_2014(g),
        Cleanup::Phoenix2014t => clean_2014t(g),
    });
    let mut out: Vec<String> = Vec::with_capacity(glosses.len());
    for g in cleaned {
        if rules == Cleanup::Phoenix2014t && out.last() == Some(&g) {
            continue;
        }
        out.push(g);
    }
    out
}

/// PHOENIX-2014, in the script's order: the prefixes `loc-`, `cl-`, `qu-`, `poss-`, `lh-` go
/// wherever they occur; `S0NNE` → `SONNE`, `HABEN2` → `HABEN`; `__EMOTION__`, `__PU__` and
/// `__LEFTHAND__` go; a gloss ending in `ZEIGEN` gets `-BILDSCHIRM`; two capitals followed by `RAUM`
/// lose the `RAUM`; `-PLUSPLUS` goes; a gloss holding `__EPENTHESIS__` is dropped, as is one left
/// empty. (`__ON__` and `__OFF__` stay: this script keeps them.)
fn clean_2014(g: &str) -> Option<String> {
    let mut s = g.to_string();
    for (from, to) in [
        ("loc-", ""),
        ("cl-", ""),
        ("qu-", ""),
        ("poss-", ""),
        ("lh-", ""),
        ("S0NNE", "SONNE"),
        ("HABEN2", "HABEN"),
        ("__EMOTION__", ""),
        ("__PU__", ""),
        ("__LEFTHAND__", ""),
    ] {
        s = s.replace(from, to);
    }
    if s.ends_with("ZEIGEN") {
        s.push_str("-BILDSCHIRM");
    }
    s = drop_raum_after_two_capitals(&s).replace("-PLUSPLUS", "");
    (!s.is_empty() && !s.contains("__EPENTHESIS__")).then_some(s)
}

/// `sed 's,\([A-Z][A-Z]\)RAUM,\1,g'`: every leftmost, non-overlapping `XYRAUM` becomes `XY`.
fn drop_raum_after_two_capitals(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if i + 6 <= b.len()
            && b[i].is_ascii_uppercase()
            && b[i + 1].is_ascii_uppercase()
            && &b[i + 2..i + 6] == b"RAUM"
        {
            out.extend_from_slice(&b[i..i + 2]);
            i += 6;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    // only ASCII bytes were removed, whole: the rest is the input's UTF-8
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// PHOENIX-2014-T, in the script's order: a gloss holding `__LEFTHAND__`, `__EPENTHESIS__` or
/// `__EMOTION__` is dropped, and so is any `__X__` token (`__ON__`, `__OFF__`, `__PU__`: `X` without
/// underscores); a leading `loc-` goes, a trailing `-PLUSPLUS`, a leading `cl-`; a gloss ending in
/// capitals from a word boundary followed by `RAUM` loses the `RAUM`; a gloss left empty is
/// dropped. [`clean`] then merges repeats.
fn clean_2014t(g: &str) -> Option<String> {
    if ["__LEFTHAND__", "__EPENTHESIS__", "__EMOTION__"]
        .iter()
        .any(|t| g.contains(t))
    {
        return None;
    }
    let inner = g.strip_prefix("__").and_then(|r| r.strip_suffix("__"));
    if inner.is_some_and(|x| !x.contains('_') && !x.contains(' ')) {
        return None;
    }
    let mut s = g.strip_prefix("loc-").unwrap_or(g);
    s = s.strip_suffix("-PLUSPLUS").unwrap_or(s);
    s = s.strip_prefix("cl-").unwrap_or(s);
    let s = drop_final_raum(s);
    (!s.is_empty()).then(|| s.to_string())
}

/// `sed 's,\b\([A-Z][A-Z]*\)RAUM$,\1,g'`: a final `RAUM` after a run of capitals that starts at a
/// word boundary (the gloss's start, or after a byte that is not a word character) goes.
fn drop_final_raum(s: &str) -> &str {
    let Some(stem) = s.strip_suffix("RAUM") else {
        return s;
    };
    let b = stem.as_bytes();
    let run = b
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_uppercase())
        .count();
    let j = b.len() - run;
    // word characters: ASCII letters, digits, `_`, and (in a UTF-8 locale) non-ASCII letters
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    if run > 0 && (j == 0 || !word(b[j - 1])) {
        stem
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cleans each case's glosses and compares with what the rules give by hand.
    fn check(rules: Cleanup, cases: &[(&str, &str)]) {
        for (glosses, want) in cases {
            let g: Vec<String> = glosses.split_whitespace().map(String::from).collect();
            assert_eq!(clean(rules, &g).join(" "), *want, "{rules:?}: {glosses}");
        }
    }

    /// Every rule of PHOENIX-2014's script, on glosses made to hit it (and near misses).
    #[test]
    fn phoenix_2014_rules() {
        let cases = [
            // prefixes, anywhere in the gloss
            (
                "loc-NORD cl-KOMMEN qu-WAS poss-SEIN lh-HAND",
                "NORD KOMMEN WAS SEIN HAND",
            ),
            ("ABloc-CD", "ABCD"),
            // spelling fixes
            ("S0NNE HABEN2 SONNE", "SONNE HABEN SONNE"),
            // markers removed; a gloss left empty is dropped
            ("A __EMOTION__ __PU__ __LEFTHAND__ B", "A B"),
            ("X__PU__", "X"),
            // __EPENTHESIS__ drops its gloss; __ON__ / __OFF__ stay in this release's script
            (
                "__ON__ A __EPENTHESIS__ B__EPENTHESIS__ __OFF__",
                "__ON__ A __OFF__",
            ),
            // ZEIGEN at a gloss's end
            (
                "ZEIGEN ANZEIGEN ZEIGENX",
                "ZEIGEN-BILDSCHIRM ANZEIGEN-BILDSCHIRM ZEIGENX",
            ),
            // two capitals then RAUM, anywhere, leftmost and non-overlapping
            (
                "WALDRAUM RAUM xRAUM ABRAUMRAUM ABRAUMCDRAUM",
                "WALD RAUM xRAUM ABRAUM ABCD",
            ),
            // -PLUSPLUS anywhere
            ("REGEN-PLUSPLUS A-PLUSPLUS-B", "REGEN A-B"),
            // repeats stay (the script's repeat rule never meets two glosses on one CTM line)
            ("A A", "A A"),
            // non-ASCII glosses pass through; [A-Z] is ASCII only
            ("MÄRZ ÜBERRAUM ÄRAUM", "MÄRZ ÜBER ÄRAUM"),
        ];
        check(Cleanup::Phoenix2014, &cases);
    }

    /// Every rule of PHOENIX-2014-T's script, on glosses made to hit it (and near misses).
    #[test]
    fn phoenix_2014t_rules() {
        let cases = [
            // glosses holding these markers are dropped
            ("A __LEFTHAND__ X__EMOTION__ B__EPENTHESIS__ C", "A C"),
            // any __X__ token is dropped, but not one with an underscore inside
            ("__ON__ A __OFF__ __PU__ __A_B__", "A __A_B__"),
            // loc- and cl- only at the start, -PLUSPLUS only at the end
            (
                "loc-NORD AUSloc-X cl-KOMMEN REGEN-PLUSPLUS A-PLUSPLUS-B",
                "NORD AUSloc-X KOMMEN REGEN A-PLUSPLUS-B",
            ),
            ("loc-cl-X", "X"),
            // RAUM after capitals from a word boundary, at the end only
            (
                "WALDRAUM RAUM aBRAUM X-YRAUM RAUMX",
                "WALD RAUM aBRAUM X-Y RAUMX",
            ),
            // a gloss left empty is dropped
            ("A loc- B", "A B"),
            // repeats merge, also when a dropped gloss stood between them
            ("A A __ON__ A B loc-B", "A B"),
            // qu-, poss-, lh-, S0NNE and ZEIGEN are not this script's rules
            ("qu-WAS S0NNE ZEIGEN", "qu-WAS S0NNE ZEIGEN"),
        ];
        check(Cleanup::Phoenix2014t, &cases);
    }
}
