//! `docs/configuration.md` is generated from the key table; this test fails when the table
//! changed and the page was not regenerated. `UPDATE_DOCS=1 cargo test -p config --test
//! reference` rewrites it.

use std::path::Path;

#[test]
fn configuration_reference_is_generated_from_the_key_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let want = config::reference_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("write docs/configuration.md");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/configuration.md is stale: run UPDATE_DOCS=1 cargo test -p config --test reference"
    );
}
