//! ARCHITECTURE.md stays true to the tree: every source path it names in backticks exists,
//! so a move or a rename that forgets the map fails here.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every path in the repository (files and folders, folders with a trailing '/'), relative
/// to its root; build output and git's own files left out.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if rel == "target" || rel == ".git" || rel.starts_with("fuzz/target") {
                continue;
            }
            if path.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else {
                out.push(rel);
            }
        }
    }
    out
}

/// Backticked tokens that name a source path: they hold a '/' or end in a source suffix.
/// Paths in the spool (`SPOOL/...` and its folders, described as the spool's layout) are
/// the daemon's runtime files, not the repository's.
fn named_paths(text: &str) -> Vec<String> {
    const SPOOL_LAYOUT: [&str; 3] = ["log/", "content/", "pickup/"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        .filter(|t| {
            t.contains('/')
                || [".rs", ".md", ".py", ".sh", ".toml"]
                    .iter()
                    .any(|s| t.ends_with(s))
        })
        .filter(|t| !t.starts_with("SPOOL/") && !t.starts_with('/') && !t.contains("://"))
        .filter(|t| !SPOOL_LAYOUT.contains(t))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_path_architecture_names_exists() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let tree = tree(&root);
    let named = named_paths(&text);
    assert!(
        named.len() > 30,
        "found only {} paths in the map",
        named.len()
    );
    // A name may be relative to the part of the tree its paragraph is about (`queue/api.rs`
    // under crates/postrider/src): it must be the tail of some path, whole components only.
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| {
            let names = |p: &str, n: &str| p == n || p.ends_with(&format!("/{n}"));
            !tree
                .iter()
                .any(|p| names(p, n) || names(p, &format!("{n}/")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn a_path_that_is_not_there_is_caught() {
    let tree = tree(&repo_root());
    let named = named_paths("the writer (`spool/src/writer.rs`) and `queue/nowhere.rs`");
    assert_eq!(named, ["spool/src/writer.rs", "queue/nowhere.rs"]);
    assert!(tree.iter().any(|p| p.ends_with("/spool/src/writer.rs")));
    assert!(!tree.iter().any(|p| p.ends_with("/queue/nowhere.rs")));
}
