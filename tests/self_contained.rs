//! The repository stands alone: nothing it builds or tests reads a file
//! outside the checkout (a plain clone has nothing beside it).

use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("rs" | "toml" | "sh" | "cfg" | "xml")
        ) || path.file_name().is_some_and(|n| n == "run")
        {
            out.push(path);
        }
    }
}

#[test]
fn no_source_reads_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src",
        "tests",
        "benches",
        "fuzz/fuzz_targets",
        "scripts",
        ".ci",
        "config",
    ] {
        files_under(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {files:?}");
    let this_file = root.join("tests/self_contained.rs");
    // The sibling folder of the development workspace, spelt in parts so that
    // this file does not name it literally.
    let outside = ["..", "shared/"].join("/");
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| **f != this_file)
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|text| {
                text.contains(&outside) || text.contains(&format!("../{outside}"))
            })
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "these files read {outside}: {offenders:?}"
    );
}

#[test]
fn the_corpora_are_in_the_repository() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    for file in [
        "README.md",
        "user-agents.tsv",
        "rfc4475/MANIFEST.tsv",
        "rfc5118/ipv6-bad.dat",
    ] {
        assert!(corpus.join(file).is_file(), "missing tests/corpus/{file}");
    }
}
