//! Results of a run: one [`CaseReport`] per case, printed as a table and written as JSON or JUnit XML.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "lowercase")]
pub enum Outcome {
    /// The implementation did what the spec requires.
    Pass,
    /// It did not; the reason says what was expected and what happened.
    Fail(String),
    /// The case could not run against this implementation (and why).
    Unsupported(String),
}

impl Outcome {
    /// Short upper-case label for the table.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Unsupported(_) => "UNSUPPORTED",
        }
    }
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// The case's name (requirement ids and a short title).
    pub name: String,
    /// The requirement ids the case checks.
    pub requirements: Vec<String>,
    /// Pass, fail or unsupported.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall-clock time the case took.
    pub duration_ms: u64,
}

/// All results of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `server` or `client`.
    pub mode: String,
    /// What was tested (address or command).
    pub target: String,
    /// One entry per case, in run order.
    pub cases: Vec<CaseReport>,
}

impl RunReport {
    /// Number of cases with each outcome: (pass, fail, unsupported).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for case in &self.cases {
            match case.outcome {
                Outcome::Pass => counts.0 += 1,
                Outcome::Fail(_) => counts.1 += 1,
                Outcome::Unsupported(_) => counts.2 += 1,
            }
        }
        counts
    }

    /// True when no case failed.
    pub fn ok(&self) -> bool {
        self.counts().1 == 0
    }

    /// The terminal summary: one line per case, reasons for the non-passing ones, then totals.
    pub fn table(&self) -> String {
        let width = self
            .cases
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(4)
            .min(90);
        let mut out = String::new();
        let _ = writeln!(out, "{:<width$}  {:<11}  {:>7}", "CASE", "RESULT", "MS");
        for case in &self.cases {
            let _ = writeln!(
                out,
                "{:<width$}  {:<11}  {:>7}",
                case.name,
                case.outcome.label(),
                case.duration_ms
            );
            if let Outcome::Fail(reason) | Outcome::Unsupported(reason) = &case.outcome {
                let _ = writeln!(out, "    {reason}");
            }
        }
        let (pass, fail, unsupported) = self.counts();
        let _ = writeln!(
            out,
            "{} cases: {pass} passed, {fail} failed, {unsupported} unsupported",
            self.cases.len()
        );
        out
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }

    /// Writes the report as JUnit XML (one testsuite; failures and skips with their reasons).
    pub fn write_junit(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.junit())
    }

    /// The JUnit XML text.
    pub fn junit(&self) -> String {
        let (_, fail, unsupported) = self.counts();
        let total: u64 = self.cases.iter().map(|c| c.duration_ms).sum();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuite name=\"ferry-interop {}\" tests=\"{}\" failures=\"{fail}\" skipped=\"{unsupported}\" errors=\"0\" time=\"{}\">",
            xml_escape(&self.mode),
            self.cases.len(),
            seconds(total)
        );
        for case in &self.cases {
            let _ = write!(
                out,
                "  <testcase classname=\"ferry-interop.{}\" name=\"{}\" time=\"{}\"",
                xml_escape(&self.mode),
                xml_escape(&case.name),
                seconds(case.duration_ms)
            );
            match &case.outcome {
                Outcome::Pass => out.push_str("/>\n"),
                Outcome::Fail(reason) => {
                    let _ = writeln!(
                        out,
                        ">\n    <failure message=\"{0}\">{0}</failure>\n  </testcase>",
                        xml_escape(reason)
                    );
                }
                Outcome::Unsupported(reason) => {
                    let _ = writeln!(
                        out,
                        ">\n    <skipped message=\"{}\"/>\n  </testcase>",
                        xml_escape(reason)
                    );
                }
            }
        }
        out.push_str("</testsuite>\n");
        out
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", Duration::from_millis(ms).as_secs_f64())
}

/// Escapes text for XML attribute values and character data. Characters XML 1.0 cannot carry at all
/// (most control characters) become U+FFFD, so a hostile error message cannot break the file.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> RunReport {
        RunReport {
            mode: "server".into(),
            target: "127.0.0.1:1".into(),
            cases: vec![
                CaseReport {
                    name: "FERRY-A-1 ok".into(),
                    requirements: vec!["FERRY-A-1".into()],
                    outcome: Outcome::Pass,
                    duration_ms: 5,
                },
                CaseReport {
                    name: "FERRY-A-2 <bad> & \"quoted\"".into(),
                    requirements: vec!["FERRY-A-2".into()],
                    outcome: Outcome::Fail("expected 1, got 2\u{1}".into()),
                    duration_ms: 1500,
                },
                CaseReport {
                    name: "FERRY-A-3 skip".into(),
                    requirements: vec!["FERRY-A-3".into()],
                    outcome: Outcome::Unsupported("too slow".into()),
                    duration_ms: 0,
                },
            ],
        }
    }

    #[test]
    fn junit_escapes_and_counts() {
        let xml = report().junit();
        assert!(xml.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
        assert!(xml.contains("name=\"FERRY-A-2 &lt;bad&gt; &amp; &quot;quoted&quot;\""));
        assert!(xml.contains("<failure message=\"expected 1, got 2\u{FFFD}\">"));
        assert!(xml.contains("<skipped message=\"too slow\"/>"));
        assert!(xml.contains("time=\"1.500\""));
    }

    #[test]
    fn json_has_outcome_and_reason() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["cases"][1]["outcome"], "fail");
        assert_eq!(json["cases"][1]["reason"], "expected 1, got 2\u{1}");
        assert_eq!(json["cases"][0]["outcome"], "pass");
        assert!(!report().ok());
    }
}
