//! Data-driven validation: every folder under `tests/data/validate/` holds a `workspace.toml`
//! (and the files it includes), an `expected.txt` with one finding a line
//! (`<severity> <file> <path>: <kind>`), and optionally a `vault.txt` with the credential
//! names the vault holds. The findings must be exactly the expected ones.

use std::collections::BTreeSet;
use std::path::Path;

use aios_workspace::{load, validate, ValidateOptions};

fn line(f: &aios_workspace::Finding) -> String {
    let sev = match f.severity {
        aios_governance::Severity::Warning => "warning",
        aios_governance::Severity::Error => "error",
    };
    format!("{sev} {} {}: {}", f.file, f.path, f.kind)
}

#[test]
fn every_case_gives_exactly_its_expected_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/validate");
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    for dir in dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let loaded = match load(&dir.join("workspace.toml")) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{name}: does not load: {e}"));
                continue;
            }
        };
        let vault_names = std::fs::read_to_string(dir.join("vault.txt"))
            .ok()
            .map(|t| {
                t.lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect::<BTreeSet<_>>()
            });
        let report = validate(&loaded, &ValidateOptions { vault_names });
        let got: BTreeSet<String> = report.findings.iter().map(line).collect();
        let expected: BTreeSet<String> = std::fs::read_to_string(dir.join("expected.txt"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if got != expected {
            failures.push(format!(
                "{name}:\n  missing:    {:?}\n  unexpected: {:?}\n  report:\n{report}",
                expected.difference(&got).collect::<Vec<_>>(),
                got.difference(&expected).collect::<Vec<_>>()
            ));
        }
        cases += 1;
    }
    assert!(
        cases >= 6,
        "only {cases} cases found under {}",
        root.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn both_workspace_templates_validate_as_they_are() {
    for (name, text) in [
        (
            "solo_consultancy.toml",
            aios_workspace::SOLO_CONSULTANCY_TOML,
        ),
        ("newsletter.toml", aios_workspace::NEWSLETTER_TOML),
    ] {
        let loaded = aios_workspace::parse(name, text).unwrap_or_else(|e| unreachable!("{e}"));
        let report = validate(&loaded, &ValidateOptions::default());
        assert!(report.findings.is_empty(), "{name}:\n{report}");
    }
}
