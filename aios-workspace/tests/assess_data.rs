//! Data-driven assessment: every folder under `tests/data/assess/` holds a `workspace.toml`
//! and an `expected.toml` with the status of each level and the bottleneck (`"none"` when
//! there is none).

use std::collections::BTreeMap;
use std::path::Path;

use aios_workspace::{assess, load, Level, ValidateOptions};

#[test]
fn every_case_gives_its_expected_statuses_and_bottleneck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/assess");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let loaded = match load(&dir.join("workspace.toml")) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let expected: BTreeMap<String, String> =
            toml::from_str(&std::fs::read_to_string(dir.join("expected.toml")).unwrap_or_default())
                .unwrap_or_default();
        let a = assess(&loaded, &ValidateOptions::default(), None);
        let mut got = BTreeMap::new();
        for level in Level::ALL {
            got.insert(level.to_string(), a.status(level).to_string());
        }
        got.insert(
            "bottleneck".into(),
            a.bottleneck
                .as_ref()
                .map_or("none".into(), |b| b.level.to_string()),
        );
        if got != expected {
            failures.push(format!(
                "{name}: expected {expected:?}\n  got {got:?}\n{}",
                a.to_markdown()
            ));
        }
    }
    assert!(dirs.len() >= 8, "only {} cases", dirs.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
