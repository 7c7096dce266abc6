//! The report's `index.html`: self-contained (inline CSS, relative image
//! paths, no script), one section per clip with its hypothesis, reference
//! and WER, and the corpus WER over the clips with a reference.

use super::ClipTrace;
use crate::wer::ErrorCounts;
use std::fmt::Write;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(w: f64) -> String {
    format!("{:.1} %", 100.0 * w)
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#f2f2f2}.ok{color:#060}.bad{color:#a00}\
section{margin-bottom:2em}img{max-width:100%;border:1px solid #ddd}code{font-size:1.05em}";

/// The index page of `clips`, whose timelines are the files `images`.
pub fn index_html(clips: &[ClipTrace], images: &[String]) -> String {
    let mut total = ErrorCounts::default();
    let mut rows = String::new();
    let mut sections = String::new();
    for (clip, img) in clips.iter().zip(images) {
        let counts = clip.counts();
        if let Some(k) = &counts {
            total.add(k);
        }
        let (wer, class) = match &counts {
            Some(k) if k.errors() == 0 => (pct(k.wer()), "ok"),
            Some(k) => (pct(k.wer()), "bad"),
            None => ("–".to_string(), ""),
        };
        let name = escape(&clip.name);
        let hyp = escape(&clip.hypothesis());
        let reference = clip.reference.as_deref().map_or("–".into(), escape);
        let _ = writeln!(
            rows,
            "<tr><td><a href=\"#{name}\">{name}</a></td><td><code>{hyp}</code></td>\
             <td><code>{reference}</code></td><td class=\"{class}\">{wer}</td></tr>"
        );
        let err = clip.error.as_deref().map_or(String::new(), |e| {
            format!("<p class=\"bad\">{}</p>", escape(e))
        });
        let _ = write!(
            sections,
            "<section id=\"{name}\"><h2>{name}</h2>\n<p>hypothesis: <code>{hyp}</code><br>\
             reference: <code>{reference}</code><br>WER: <span class=\"{class}\">{wer}</span></p>{err}\n\
             <img src=\"{}\" alt=\"timeline of {name}\"></section>\n",
            escape(img)
        );
    }
    let corpus = if total.n_ref > 0 {
        format!(
            "WER {} (S {} D {} I {} of N {}) over {} with a reference",
            pct(total.wer()),
            total.sub,
            total.del,
            total.ins,
            total.n_ref,
            count(total.sentences, "clip")
        )
    } else {
        "no clip has a reference: no WER".into()
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>signrt recognition report</title><style>{STYLE}</style></head><body>\n\
         <h1>signrt recognition report</h1>\n<p id=\"total\">{}. {corpus}.</p>\n\
         <table><tr><th>clip</th><th>hypothesis</th><th>reference</th><th>WER</th></tr>\n{rows}</table>\n\
         {sections}</body></html>\n",
        count(clips.len(), "clip")
    )
}

/// "1 clip", "2 clips".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::GlossEvent;

    fn gloss(g: &str) -> GlossEvent {
        GlossEvent {
            gloss: g.into(),
            id: 1,
            start_frame: 0,
            end_frame: 1,
            start_time: 0.0,
            end_time: 0.1,
            confidence: 1.0,
        }
    }

    #[test]
    fn the_index_lists_each_clip_and_the_total_wer() {
        let a = ClipTrace {
            name: "a<b".into(),
            glosses: vec![gloss("SUN"), gloss("RAIN")],
            reference: Some("SUN RAIN".into()),
            ..ClipTrace::default()
        };
        let b = ClipTrace {
            name: "b".into(),
            glosses: vec![gloss("SUN")],
            reference: Some("SUN WIND".into()),
            ..ClipTrace::default()
        };
        let html = index_html(&[a, b], &["a_b.png".into(), "b.png".into()]);
        assert!(html.contains("a&lt;b") && !html.contains("a<b"));
        assert!(html.contains("<img src=\"a_b.png\""));
        // b: one deletion of two (sclite weights: WER counts errors / N) -> 50 %;
        // in all, 1 error of 4 reference glosses -> 25 %
        assert!(html.contains("50.0 %"), "{html}");
        assert!(
            html.contains("WER 25.0 % (S 0 D 1 I 0 of N 4) over 2 clips"),
            "{html}"
        );
        assert!(!html.contains("<script"));
    }
}
