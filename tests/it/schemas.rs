//! Every schema against its previous committed version, by the evolution
//! rules of `schemas/README.md` (`gpuledger::events::compat`). The previous
//! version is HEAD's when the working tree changed the file, else the one
//! before the last commit that changed it; a schema new in that commit has
//! none. Needs the git history of the checkout (CI clones it).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("git").args(args).current_dir(root).output().expect("git runs");
    output.status.success().then(|| String::from_utf8(output.stdout).expect("git prints UTF-8"))
}

/// The committed version of `path` before the present one, if any.
fn previous_version(path: &str, present: &str) -> Option<String> {
    let at_head = git(&["show", &format!("HEAD:{path}")]);
    if at_head.as_deref().is_some_and(|head| head != present) {
        return at_head;
    }
    let last = git(&["log", "-n", "1", "--format=%H", "--", path])?;
    let last = last.trim();
    if last.is_empty() {
        return None;
    }
    git(&["show", &format!("{last}^:{path}")])
}

#[test]
fn every_schema_is_compatible_with_its_previous_committed_version() {
    assert!(
        git(&["rev-parse", "--is-inside-work-tree"]).is_some(),
        "this test reads the schemas' history: run it in a git checkout with history"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compared = 0;
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root.join("schemas")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "avsc") {
            continue;
        }
        let relative = format!("schemas/{}", path.file_name().unwrap().to_str().unwrap());
        let present = std::fs::read_to_string(&path).unwrap();
        let Some(previous) = previous_version(&relative, &present) else { continue };
        compared += 1;
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
        for problem in gpuledger::events::compat::incompatibilities(&parse(&previous), &parse(&present)) {
            problems.push(format!("{relative}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "incompatible schema changes:\n{}", problems.join("\n"));
    assert!(compared > 0, "no schema has a previous committed version to compare with");
}
