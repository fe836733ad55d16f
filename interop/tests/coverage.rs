//! The coverage promise of the conformance runner: every MUST-level requirement of spec/ferry-1.md has a
//! case (or, for what the wire cannot show, a repository test named in coverage-extra.toml), and no case
//! names an id the spec does not define.

use ferry_interop::coverage::Requirement;

#[test]
fn every_must_requirement_has_a_case() {
    let root = ferry_interop::repo_root();
    let report = ferry_interop::coverage_report(
        &root.join("spec/ferry-1.md"),
        Some(&root.join("interop/coverage-extra.toml")),
        &root,
    )
    .expect("coverage report");
    let uncovered: Vec<&str> = report
        .requirements
        .iter()
        .filter(|(r, by)| Requirement::is_absolute(r) && by.is_empty())
        .map(|(r, _)| r.id.as_str())
        .collect();
    assert!(
        uncovered.is_empty(),
        "MUST requirements without a case: {uncovered:?}\n{}",
        report.summary()
    );
    assert!(report.unknown_ids.is_empty(), "{:?}", report.unknown_ids);
    assert!(
        report.missing_extra_files.is_empty(),
        "{:?}",
        report.missing_extra_files
    );
}
