//! No record and no crash stops or corrupts a batch run (spec §5, v1.1):
//! a record that fails inside the fold becomes an `internal_error` dead
//! letter; a run killed at any point and run again gives the files of one
//! clean run; one `--out` takes one run at a time; I/O errors name files.

use std::path::{Path, PathBuf};
use std::process::Command;

use gpuledger::events::Topic;
use gpuledger::units::MINUTE_MS;
use serde_json::Value;

use super::common::{fold, lines, options, workload, STREAMS};

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpuledger"))
}

fn fold_command(inputs: &Path, out: &Path, state: &Path) -> Command {
    let mut command = binary();
    command
        .arg("fold")
        .arg("--rates")
        .arg(inputs.join("rates.jsonl"))
        .arg("--deals")
        .arg(inputs.join("deals.jsonl"))
        .arg("--metering")
        .arg(inputs.join("metering.jsonl"))
        .arg("--out")
        .arg(out)
        .arg("--state-dir")
        .arg(state)
        .args(["--commit-every", "300"]);
    command
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = STREAMS.iter().map(|stream| format!("{stream}.jsonl")).collect();
    names.push("balances.json".to_owned());
    names.into_iter().map(|name| (name.clone(), std::fs::read(dir.join(&name)).unwrap_or_default())).collect()
}

#[test]
fn a_run_killed_at_any_point_and_run_again_gives_the_files_of_one_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 300, 30 * MINUTE_MS);
    let clean = dir.path().join("clean");
    let output = fold_command(&inputs, &clean, &dir.path().join("clean-state")).output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let records: u64 = stdout.split_whitespace().nth(1).and_then(|count| count.parse().ok()).expect(&stdout);
    assert!(records > 1_000, "{stdout}");
    let expected = files_of(&clean);
    assert!(expected.iter().all(|(_, bytes)| !bytes.is_empty()));

    // Before the first commit, between commits, in a commit after the
    // outputs were synced but before the state was written, at the end.
    let crashes = [
        "record:1".to_owned(),
        format!("record:{}", records / 2 + 17),
        "commit:1".to_owned(),
        "commit:3".to_owned(),
        format!("record:{}", records - 1),
    ];
    for crash in &crashes {
        let out = dir.path().join(format!("out-{crash}"));
        let state = dir.path().join(format!("state-{crash}"));
        let crashed = fold_command(&inputs, &out, &state).args(["--inject-crash", crash]).output().unwrap();
        assert!(!crashed.status.success(), "{crash}: the injected crash happened");
        let again = fold_command(&inputs, &out, &state).output().unwrap();
        assert!(again.status.success(), "{crash}: {}", String::from_utf8_lossy(&again.stderr));
        for ((name, bytes), (_, wanted)) in files_of(&out).iter().zip(&expected) {
            assert!(bytes == wanted, "{crash}: {name} differs from one clean run");
        }
    }
}

#[test]
fn a_real_sigkill_mid_run_then_a_rerun_gives_the_files_of_one_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 2_000, 10 * MINUTE_MS);
    let clean = dir.path().join("clean");
    assert!(fold_command(&inputs, &clean, &dir.path().join("clean-state")).status().unwrap().success());
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let mut child = fold_command(&inputs, &out, &state).spawn().unwrap();
    // Kill it once some outputs reached the disk (at the first commit).
    let journal = out.join("journal.jsonl");
    loop {
        if std::fs::metadata(&journal).map(|meta| meta.len() > 0).unwrap_or(false) {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break; // finished first: the re-run must then add nothing
        }
        std::thread::yield_now();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(fold_command(&inputs, &out, &state).status().unwrap().success());
    assert!(files_of(&out) == files_of(&clean), "killed and re-run differs from one clean run");
}

#[test]
fn one_output_directory_takes_one_run_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 30, 30 * MINUTE_MS);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".gpuledger.lock")).unwrap();
    lock.try_lock().unwrap();
    let error = gpuledger::batch::run(&options(&inputs, &out)).unwrap_err().to_string();
    assert!(error.contains("is in use by another gpuledger run"), "{error}");
    drop(lock);
    fold(&options(&inputs, &out));
}

#[test]
fn write_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 30, 30 * MINUTE_MS);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A full disk: every write to /dev/full fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", out.join("journal.jsonl")).unwrap();
    let error = format!("{:#}", gpuledger::batch::run(&options(&inputs, &out)).unwrap_err());
    assert!(error.contains("journal.jsonl") && error.contains("No space left on device"), "{error}");
    // An output that cannot be created.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("alerts.jsonl")).unwrap();
    let error = format!("{:#}", gpuledger::batch::run(&options(&inputs, &other)).unwrap_err());
    assert!(error.contains("alerts.jsonl"), "{error}");
}

/// The records of a stream with a dead letter's position left out (offsets
/// shift when a line is removed).
fn without_positions(dir: &Path, stream: &str) -> Vec<String> {
    lines(dir, stream)
        .into_iter()
        .map(|line| {
            let mut value: Value = serde_json::from_str(&line).unwrap();
            if let Some(object) = value.as_object_mut() {
                object.remove("offset");
            }
            value.to_string()
        })
        .collect()
}

fn metering_usage_offsets(inputs: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(inputs.join("metering.jsonl")).unwrap();
    text.lines().enumerate().filter(|(_, line)| line.contains("gpuledger.gpu.usage")).map(|(index, _)| index).collect()
}

fn without_line(inputs: &Path, into: &Path, index: usize) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    for name in ["rates.jsonl", "deals.jsonl"] {
        std::fs::copy(inputs.join(name), into.join(name)).unwrap();
    }
    let text = std::fs::read_to_string(inputs.join("metering.jsonl")).unwrap();
    let kept: String =
        text.lines().enumerate().filter(|(at, _)| *at != index).map(|(_, line)| format!("{line}\n")).collect();
    std::fs::write(into.join("metering.jsonl"), kept).unwrap();
    into.to_owned()
}

#[test]
fn a_record_that_panics_in_the_fold_is_an_internal_error_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = workload(dir.path(), 300, 30 * MINUTE_MS);
    let usage = metering_usage_offsets(&inputs);
    let chosen = usage[usage.len() * 2 / 3];
    let without = without_line(&inputs, &dir.path().join("without"), chosen);
    let reference = dir.path().join("reference");
    fold(&options(&without, &reference));
    // In memory (rebuilt from the start) and with a state directory
    // (rebuilt from the last commit, outputs not written twice).
    for with_state in [false, true] {
        let out = dir.path().join(format!("panicked-{with_state}"));
        let mut injected = options(&inputs, &out);
        injected.fold.inject_panic_at = Some((Topic::Metering, chosen as i64));
        if with_state {
            injected.state_dir = Some(dir.path().join("state"));
            injected.commit_every = 200;
        }
        let summary = fold(&injected);
        for stream in ["usage-rated", "journal", "statements", "alerts"] {
            assert!(lines(&out, stream) == lines(&reference, stream), "{stream} (state dir: {with_state})");
        }
        let mut letters = without_positions(&out, "dead-letter");
        let internal = letters.iter().position(|line| line.contains("\"reason\":\"internal_error\"")).unwrap();
        let letter: Value = serde_json::from_str(&letters.remove(internal)).unwrap();
        assert_eq!(letter["topic"], "metering");
        assert!(letter["detail"].as_str().unwrap().contains("injected panic"));
        let full: Vec<Value> =
            lines(&out, "dead-letter").iter().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert!(full.iter().any(|letter| letter["reason"] == "internal_error" && letter["offset"] == chosen as i64));
        assert_eq!(letters, without_positions(&reference, "dead-letter"));
        // Balances differ only in the offsets (one more metering record)
        // and the output digest (one more dead letter).
        let figures = |dir: &Path| -> Vec<Value> {
            let mut all: Vec<Value> = gpuledger::batch::read_balances(&dir.join("balances.json"))
                .unwrap()
                .into_iter()
                .map(|balances| serde_json::to_value(balances).unwrap())
                .collect();
            for balances in &mut all {
                let object = balances.as_object_mut().unwrap();
                object.remove("offsets");
                object.remove("digest");
            }
            all
        };
        assert_eq!(figures(&out), figures(&reference));
        assert_eq!(summary.dead_letters, lines(&out, "dead-letter").len() as u64);
        let report = gpuledger::audit::audit(&out, false).unwrap();
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }
}

/// An event with more journal entries than the audit used to try (64): a
/// deal with 70 equity grants, cancelled — 70 revocation entries.
#[test]
fn the_audit_checks_events_with_any_number_of_entries() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let event = |id: &str, type_name: &str, data: Value| {
        serde_json::json!({"specversion": "1.0", "id": id, "source": "crm", "type": type_name,
            "subject": "acme", "time": "2025-01-01T00:00:00Z", "data": data})
        .to_string()
    };
    let mut deals = vec![event(
        "signed",
        "gpuledger.deal.signed",
        serde_json::json!({"deal_id": "d", "investor": "i", "cash_amount": 0, "credit_face_amount": 70_000_000,
            "currency": "USD", "equity_fair_value": 70_000_000}),
    )];
    for grant in 0..70 {
        deals.push(event(
            &format!("grant-{grant}"),
            "gpuledger.credit.granted",
            serde_json::json!({"grant_id": format!("g{grant:02}"), "deal_id": "d", "face_amount": 1_000_000,
                "currency": "USD", "effective_at": "2025-01-01T00:00:00Z"}),
        ));
    }
    deals.push(event("cancel", "gpuledger.deal.cancelled", serde_json::json!({"deal_id": "d"})));
    std::fs::write(inputs.join("deals.jsonl"), deals.join("\n") + "\n").unwrap();
    std::fs::write(inputs.join("rates.jsonl"), "").unwrap();
    std::fs::write(inputs.join("metering.jsonl"), "").unwrap();
    let out = dir.path().join("out");
    fold(&options(&inputs, &out));
    let revocations = lines(&out, "journal").iter().filter(|line| line.contains("\"cause\":\"revocation\"")).count();
    assert_eq!(revocations, 70);
    let report = gpuledger::audit::audit(&out, false).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

/// The repository stands alone: no tracked file points outside it to the
/// workplace's shared folder (rules, design, data all live in the clone).
#[test]
fn no_tracked_file_points_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = Command::new("git").arg("ls-files").arg("-z").current_dir(root).output().expect("git runs");
    assert!(listed.status.success(), "not a git checkout: {}", String::from_utf8_lossy(&listed.stderr));
    let needle = ["..", "/shared"].concat();
    let mut offenders = Vec::new();
    for name in listed.stdout.split(|byte| *byte == 0).filter(|name| !name.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let Ok(bytes) = std::fs::read(root.join(&name)) else { continue };
        if bytes.windows(needle.len()).any(|window| window == needle.as_bytes()) {
            offenders.push(name);
        }
    }
    assert!(offenders.is_empty(), "files that mention {needle}: {offenders:?}");
}

/// `--version` names the commit; completions and the man page come from the
/// CLI definition itself.
#[test]
fn version_completions_and_man_page() {
    let version = String::from_utf8(binary().arg("--version").output().unwrap().stdout).unwrap();
    let commit =
        version.trim().strip_prefix("gpuledger ").and_then(|rest| rest.split_once(" (commit ")).map(|(_, c)| c);
    let commit = commit.and_then(|commit| commit.strip_suffix(')')).expect(&version);
    assert!(commit == "unknown" || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())), "{version}");
    for shell in ["bash", "zsh", "fish"] {
        let script = binary().args(["completions", shell]).output().unwrap();
        assert!(script.status.success());
        let text = String::from_utf8(script.stdout).unwrap();
        assert!(text.contains("gpuledger") && text.contains("replay") && text.contains("state-dir"), "{shell}");
    }
    let man = String::from_utf8(binary().arg("manpage").output().unwrap().stdout).unwrap();
    assert!(man.contains(".TH gpuledger 1") && man.contains("fold") && man.contains("audit"));
    let wrong = binary().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(2));
}
