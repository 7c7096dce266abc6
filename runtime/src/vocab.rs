//! The gloss vocabulary of a model bundle.
//!
//! On disk it is a UTF-8 text file with one token per line: line 1 (index 0) is
//! the CTC blank `<blank>`, the glosses follow in sorted order. The same file is
//! written by the trainer's dataset code and read by the runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Index of the CTC blank.
pub const BLANK: usize = 0;
/// The token written for the blank on line 1 of the vocabulary file.
pub const BLANK_TOKEN: &str = "<blank>";

#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("{path}: cannot read vocabulary: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the vocabulary is not UTF-8 text")]
    NotUtf8 { path: PathBuf },
    #[error("{path}:1: the first line must be the blank token `{BLANK_TOKEN}`, found `{found}`")]
    NoBlank { path: PathBuf, found: String },
    #[error("{path}:{line}: empty gloss or gloss containing whitespace: `{gloss}`")]
    BadGloss {
        path: PathBuf,
        line: usize,
        gloss: String,
    },
    #[error("{path}:{line}: gloss `{gloss}` is listed twice")]
    Duplicate {
        path: PathBuf,
        line: usize,
        gloss: String,
    },
    #[error("unknown gloss `{0}`: it is not in the vocabulary")]
    UnknownGloss(String),
    #[error("gloss index {0} is out of range for a vocabulary of {1} entries")]
    BadIndex(usize, usize),
}

/// Blank at index 0, then glosses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    index: HashMap<String, usize>,
}

impl Vocab {
    /// Builds a vocabulary from glosses in any order, with duplicates: the blank
    /// first, then the distinct glosses sorted.
    pub fn from_glosses<I, S>(glosses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut g: Vec<String> = glosses
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty() && s != BLANK_TOKEN)
            .collect();
        g.sort();
        g.dedup();
        let mut tokens = Vec::with_capacity(g.len() + 1);
        tokens.push(BLANK_TOKEN.to_string());
        tokens.extend(g);
        Self::from_tokens_unchecked(tokens)
    }

    fn from_tokens_unchecked(tokens: Vec<String>) -> Self {
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Self { tokens, index }
    }

    /// Number of entries, blank included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when there is no gloss besides the blank.
    pub fn is_empty(&self) -> bool {
        self.tokens.len() <= 1
    }

    /// All tokens, blank first.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The glosses without the blank.
    pub fn glosses(&self) -> &[String] {
        &self.tokens[1..]
    }

    pub fn id(&self, gloss: &str) -> Option<usize> {
        self.index.get(gloss).copied()
    }

    pub fn gloss(&self, id: usize) -> Option<&str> {
        self.tokens.get(id).map(|s| s.as_str())
    }

    /// Maps a space-separated gloss sentence to ids. Unknown glosses are an error.
    pub fn encode(&self, sentence: &str) -> Result<Vec<usize>, VocabError> {
        sentence
            .split_whitespace()
            .map(|g| {
                self.id(g)
                    .ok_or_else(|| VocabError::UnknownGloss(g.to_string()))
            })
            .collect()
    }

    /// Maps ids back to a space-separated sentence.
    pub fn decode(&self, ids: &[usize]) -> Result<String, VocabError> {
        let words: Result<Vec<&str>, _> = ids
            .iter()
            .map(|&i| self.gloss(i).ok_or(VocabError::BadIndex(i, self.len())))
            .collect();
        Ok(words?.join(" "))
    }

    /// The file's text: one token per line, blank first, newline-terminated.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for t in &self.tokens {
            s.push_str(t);
            s.push('\n');
        }
        s
    }

    /// Parses the file's text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, VocabError> {
        let mut tokens = Vec::new();
        let mut seen = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            let tok = line.trim_end_matches('\r');
            if i == 0 {
                if tok != BLANK_TOKEN {
                    return Err(VocabError::NoBlank {
                        path: path.into(),
                        found: tok.to_string(),
                    });
                }
            } else if tok.is_empty() || tok.chars().any(char::is_whitespace) || tok == BLANK_TOKEN {
                return Err(VocabError::BadGloss {
                    path: path.into(),
                    line: lineno,
                    gloss: tok.to_string(),
                });
            }
            if seen.insert(tok.to_string(), lineno).is_some() {
                return Err(VocabError::Duplicate {
                    path: path.into(),
                    line: lineno,
                    gloss: tok.to_string(),
                });
            }
            tokens.push(tok.to_string());
        }
        if tokens.is_empty() {
            return Err(VocabError::NoBlank {
                path: path.into(),
                found: String::new(),
            });
        }
        Ok(Self::from_tokens_unchecked(tokens))
    }

    pub fn load(path: &Path) -> Result<Self, VocabError> {
        let bytes = std::fs::read(path).map_err(|source| VocabError::Io {
            path: path.into(),
            source,
        })?;
        let text =
            String::from_utf8(bytes).map_err(|_| VocabError::NotUtf8 { path: path.into() })?;
        Self::parse(&text, path)
    }

    /// Writes the vocabulary atomically.
    pub fn save(&self, path: &Path) -> Result<(), VocabError> {
        crate::fsutil::write_atomic(path, self.to_text().as_bytes()).map_err(|source| {
            VocabError::Io {
                path: path.into(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_first_then_sorted_unique() {
        let v = Vocab::from_glosses(["RAIN", "HELLO", "RAIN", "", "ZOO"]);
        assert_eq!(v.tokens(), &["<blank>", "HELLO", "RAIN", "ZOO"]);
        assert_eq!(v.id("RAIN"), Some(2));
        assert_eq!(v.encode("ZOO HELLO").unwrap(), vec![3, 1]);
        assert!(matches!(v.encode("ZOO CAT"), Err(VocabError::UnknownGloss(g)) if g == "CAT"));
        assert_eq!(v.decode(&[1, 3]).unwrap(), "HELLO ZOO");
    }

    #[test]
    fn text_round_trip_and_errors() {
        let v = Vocab::from_glosses(["B", "A"]);
        let p = Path::new("vocab.txt");
        assert_eq!(Vocab::parse(&v.to_text(), p).unwrap(), v);
        let e = Vocab::parse("A\nB\n", p).unwrap_err().to_string();
        assert!(e.contains("vocab.txt:1"), "{e}");
        let e = Vocab::parse("<blank>\nA\nA\n", p).unwrap_err().to_string();
        assert!(e.contains("vocab.txt:3") && e.contains("twice"), "{e}");
        let e = Vocab::parse("<blank>\nA B\n", p).unwrap_err().to_string();
        assert!(e.contains("vocab.txt:2"), "{e}");
    }
}
