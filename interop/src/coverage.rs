//! Requirement coverage: which `**FERRY-<AREA>-<n>**` requirements of the spec have a conformance case.
//!
//! The spec marks each normative paragraph with a bold identifier and uses the key words MUST, MUST NOT,
//! SHOULD, SHOULD NOT and MAY in it (spec section 1.2). [`parse_spec`] finds them; [`Coverage`] joins
//! them with the ids the cases name, plus `coverage-extra.toml`, which maps requirements that cannot be
//! observed on the wire (fsync before SendAck, client-internal state) to the repository test that checks
//! them. An extra entry only counts when its file exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A BCP 14 key word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Level {
    /// Absolute requirement.
    Must,
    /// Absolute prohibition.
    MustNot,
    /// Recommendation.
    Should,
    /// Recommendation against.
    ShouldNot,
    /// Option.
    May,
}

impl Level {
    /// The key word as written in the spec.
    pub fn word(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::MustNot => "MUST NOT",
            Level::Should => "SHOULD",
            Level::ShouldNot => "SHOULD NOT",
            Level::May => "MAY",
        }
    }
}

/// One requirement of the spec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Requirement {
    /// `FERRY-SEND-4`.
    pub id: String,
    /// Every key word of its paragraph, strongest first.
    pub levels: BTreeSet<Level>,
    /// 1-based line of the identifier in the spec.
    pub line: usize,
}

impl Requirement {
    /// True when the paragraph holds MUST or MUST NOT: the requirements "every MUST gets a case" is about.
    pub fn is_absolute(&self) -> bool {
        self.levels.contains(&Level::Must) || self.levels.contains(&Level::MustNot)
    }

    /// The strongest level (MUST before SHOULD before MAY); None if the paragraph has no key word.
    pub fn strongest(&self) -> Option<Level> {
        self.levels.iter().next().copied()
    }
}

/// Parses every non-withdrawn requirement of a spec text, in order of appearance. A requirement's paragraph
/// runs from the line with its bold identifier to the next blank line, heading, or next identifier.
pub fn parse_spec(text: &str) -> Vec<Requirement> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<Requirement> = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(id) = bold_id(line) else { continue };
        let mut paragraph = line.to_string();
        for next in &lines[i + 1..] {
            if next.trim().is_empty() || next.starts_with('#') || bold_id(next).is_some() {
                break;
            }
            paragraph.push(' ');
            paragraph.push_str(next);
        }
        if paragraph.contains("(withdrawn)") || !seen.insert(id.clone()) {
            continue;
        }
        out.push(Requirement {
            id,
            levels: levels(&paragraph),
            line: i + 1,
        });
    }
    out
}

/// The first `**FERRY-X-n**` on a line.
fn bold_id(line: &str) -> Option<String> {
    let start = line.find("**FERRY-")?;
    let rest = &line[start + 2..];
    let end = rest.find("**")?;
    let id = &rest[..end];
    let valid = id.split('-').count() == 3
        && id
            .rsplit('-')
            .next()
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty())
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    valid.then(|| id.to_owned())
}

/// Key words in a paragraph. Only whole upper-case words count ("MUSTARD" does not).
fn levels(paragraph: &str) -> BTreeSet<Level> {
    let words: Vec<&str> = paragraph
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let mut found = BTreeSet::new();
    for (i, word) in words.iter().enumerate() {
        let not = words.get(i + 1) == Some(&"NOT");
        match *word {
            "MUST" | "SHALL" | "REQUIRED" => {
                found.insert(if not { Level::MustNot } else { Level::Must });
            }
            "SHOULD" | "RECOMMENDED" => {
                found.insert(if not { Level::ShouldNot } else { Level::Should });
            }
            "MAY" | "OPTIONAL" => {
                found.insert(Level::May);
            }
            _ => {}
        }
    }
    found
}

/// Why the coverage inputs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// coverage-extra.toml is not a table of strings.
    #[error("{}: {message}", path.display())]
    Extra {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Requirement id → test file.
pub type ExtraMap = BTreeMap<String, String>;

/// Reads `coverage-extra.toml`: `"FERRY-SEND-6" = "tests/tests/server_crash.rs"`. Paths are relative to
/// `repo_root`; entries whose file does not exist are returned in the second map (reported, not counted).
pub fn load_extra(path: &Path, repo_root: &Path) -> Result<(ExtraMap, ExtraMap), CoverageError> {
    let text = std::fs::read_to_string(path).map_err(|source| CoverageError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| CoverageError::Extra {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let (mut found, mut missing) = (BTreeMap::new(), BTreeMap::new());
    for (id, value) in table {
        let Some(file) = value.as_str() else {
            return Err(CoverageError::Extra {
                path: path.to_owned(),
                message: format!("{id}: expected a file path string"),
            });
        };
        if repo_root.join(file).exists() {
            found.insert(id, file.to_owned());
        } else {
            missing.insert(id, file.to_owned());
        }
    }
    Ok((found, missing))
}

/// Requirements joined with what covers them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Coverage {
    /// Every requirement with the cases (or extra test files) that cover it; empty = uncovered.
    pub requirements: Vec<(Requirement, Vec<String>)>,
    /// Ids named by cases or extras that the spec does not define (typos, renumbering).
    pub unknown_ids: Vec<String>,
    /// coverage-extra.toml entries whose file does not exist.
    pub missing_extra_files: BTreeMap<String, String>,
}

impl Coverage {
    /// `cases` maps a case name to the ids it checks; `extra` maps an id to a test file.
    pub fn compute(
        spec: &[Requirement],
        cases: &[(String, Vec<String>)],
        extra: &BTreeMap<String, String>,
    ) -> Coverage {
        let mut by_id: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut named = BTreeSet::new();
        for (case, ids) in cases {
            for id in ids {
                by_id.entry(id.as_str()).or_default().push(case.clone());
                named.insert(id.clone());
            }
        }
        for (id, file) in extra {
            by_id.entry(id.as_str()).or_default().push(file.clone());
            named.insert(id.clone());
        }
        let defined: BTreeSet<&str> = spec.iter().map(|r| r.id.as_str()).collect();
        Coverage {
            requirements: spec
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        by_id.get(r.id.as_str()).cloned().unwrap_or_default(),
                    )
                })
                .collect(),
            unknown_ids: named
                .into_iter()
                .filter(|id| !defined.contains(id.as_str()))
                .collect(),
            missing_extra_files: BTreeMap::new(),
        }
    }

    /// (covered, total) over the requirements whose strongest level is `level`, or over all with None.
    pub fn count(&self, filter: impl Fn(&Requirement) -> bool) -> (usize, usize) {
        let selected = self.requirements.iter().filter(|(r, _)| filter(r));
        let (mut covered, mut total) = (0, 0);
        for (_, by) in selected {
            total += 1;
            covered += usize::from(!by.is_empty());
        }
        (covered, total)
    }

    /// The text report: totals, then every uncovered MUST-level requirement.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let (c, t) = self.count(|_| true);
        let _ = writeln!(
            out,
            "requirement coverage: {c}/{t} requirements have a case"
        );
        let (c, t) = self.count(Requirement::is_absolute);
        let _ = writeln!(out, "  with MUST / MUST NOT:    {c}/{t}");
        let (c, t) = self.count(|r| {
            !r.is_absolute() && matches!(r.strongest(), Some(Level::Should | Level::ShouldNot))
        });
        let _ = writeln!(out, "  SHOULD / SHOULD NOT only: {c}/{t}");
        let (c, t) = self.count(|r| r.strongest() == Some(Level::May));
        let _ = writeln!(out, "  MAY only:                 {c}/{t}");
        let uncovered: Vec<&str> = self
            .requirements
            .iter()
            .filter(|(r, by)| r.is_absolute() && by.is_empty())
            .map(|(r, _)| r.id.as_str())
            .collect();
        if !uncovered.is_empty() {
            let _ = writeln!(
                out,
                "MUST-level requirements without a case ({}):",
                uncovered.len()
            );
            for chunk in uncovered.chunks(6) {
                let _ = writeln!(out, "  {}", chunk.join(", "));
            }
        }
        if !self.unknown_ids.is_empty() {
            let _ = writeln!(
                out,
                "ids named by cases but not in the spec: {}",
                self.unknown_ids.join(", ")
            );
        }
        for (id, file) in &self.missing_extra_files {
            let _ = writeln!(
                out,
                "coverage-extra.toml: {id} -> {file} does not exist (not counted)"
            );
        }
        out
    }

    /// Every requirement, one per line: id, levels, and what covers it.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for (r, by) in &self.requirements {
            let levels: Vec<&str> = r.levels.iter().map(|l| l.word()).collect();
            let by = if by.is_empty() {
                "-".to_owned()
            } else {
                by.join("; ")
            };
            let _ = writeln!(out, "{:<20} {:<28} {}", r.id, levels.join(", "), by);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "# Title\n\n\
**FERRY-A-1** Endpoints MUST do x\nand MUST NOT do y.\n\n\
**FERRY-A-2** A client SHOULD do z; it MAY do w.\n\
**FERRY-B-1** (withdrawn) MUST nothing.\n\n\
Text mentioning FERRY-A-1 is not a requirement. MUST here belongs to nothing.\n\n\
- **FERRY-B-2** A server MAY answer.\n\n\
**FERRY-B-3** SHOULD NOT do q. MUSTARD is not a key word.\n";

    #[test]
    fn parses_ids_levels_and_paragraphs() {
        let reqs = parse_spec(SPEC);
        let ids: Vec<&str> = reqs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["FERRY-A-1", "FERRY-A-2", "FERRY-B-2", "FERRY-B-3"]);
        assert_eq!(
            reqs[0].levels,
            [Level::Must, Level::MustNot].into_iter().collect()
        );
        assert_eq!(reqs[0].line, 3);
        assert!(reqs[0].is_absolute());
        assert_eq!(
            reqs[1].levels,
            [Level::Should, Level::May].into_iter().collect()
        );
        assert_eq!(reqs[2].strongest(), Some(Level::May));
        assert_eq!(reqs[3].levels, [Level::ShouldNot].into_iter().collect());
    }

    #[test]
    fn counts_coverage_and_unknown_ids() {
        let reqs = parse_spec(SPEC);
        let cases = vec![(
            "case one".to_owned(),
            vec!["FERRY-A-1".to_owned(), "FERRY-Z-9".to_owned()],
        )];
        let extra = [("FERRY-B-2".to_owned(), "tests/x.rs".to_owned())]
            .into_iter()
            .collect();
        let cov = Coverage::compute(&reqs, &cases, &extra);
        assert_eq!(cov.count(|_| true), (2, 4));
        assert_eq!(cov.count(Requirement::is_absolute), (1, 1));
        assert_eq!(cov.unknown_ids, ["FERRY-Z-9"]);
        assert!(cov.summary().contains("with MUST / MUST NOT:    1/1"));
    }

    #[test]
    fn the_real_spec_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/ferry-1.md");
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        let reqs = parse_spec(&text);
        assert!(reqs.len() > 100, "found only {}", reqs.len());
        assert!(
            reqs.iter().all(|r| !r.levels.is_empty()),
            "every requirement has a key word"
        );
    }
}
