//! Golden outputs of the README's worked example (`tests/data/golden`).
//! Regenerate with `make golden` after an intended change, then review the diff.

use std::path::Path;

use gpuledger::units::DAY_MS;

#[test]
fn the_worked_example_gives_the_checked_in_outputs() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden");
    let dir = tempfile::tempdir().unwrap();
    let mut options = super::common::options(&fixture, dir.path());
    options.fold.max_future = 60 * DAY_MS;
    super::common::fold(&options);
    for file in
        ["usage-rated.jsonl", "journal.jsonl", "statements.jsonl", "alerts.jsonl", "dead-letter.jsonl", "balances.json"]
    {
        let expected = std::fs::read_to_string(fixture.join("expected").join(file)).unwrap();
        let actual = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_eq!(actual, expected, "{file} differs from the golden file (regenerate with `make golden` if intended)");
    }
    let report = gpuledger::audit::audit(dir.path(), false).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}
