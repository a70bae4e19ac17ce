//! The command line as an administrator meets it: check-config, help, queue without a daemon.

mod common;

use std::process::Command;

use common::*;

fn postrider(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postrider"))
        .args(args)
        .env_remove("POSTRIDER_CONFIG")
        .output()
        .expect("run postrider")
}

#[test]
fn check_config_names_every_error_with_its_line() {
    let bad = repo_root().join("crates/postrider/tests/data/bad.toml");
    let out = postrider(&["check-config", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    let expect = [
        (":5:", "smtp.max_message_size", "boolean"),
        (":6:", "smtp.listen", "localhost"),
        (":7:", "smtp.command_timeout", "5 minutes"),
        (":10:", "delivery.concurency", "did you mean 'concurrency'"),
    ];
    for (line, (at, key, what)) in lines.iter().zip(expect) {
        assert!(line.contains("bad.toml") && line.contains(at), "{line}");
        assert!(line.contains(key) && line.contains(what), "{line}");
    }
}

#[test]
fn check_config_accepts_the_example_and_no_file() {
    let example = repo_root().join("crates/config/postrider.example.toml");
    let out = postrider(&["check-config", "-c", example.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = postrider(&["check-config", "-c", "/nonexistent/postrider.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

#[test]
fn help_lists_the_subcommands() {
    let out = postrider(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "check-config", "queue", "sendmail"] {
        assert!(text.contains(sub), "{text}");
    }
}

#[test]
fn queue_list_works_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!("spool = \"{}\"\n", dir.path().join("spool").display()),
    )
    .unwrap();
    let out = postrider(&["queue", "--json", "list", "-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(0));
    // Changing the queue needs the daemon, and says so.
    let out = postrider(&["queue", "flush", "-c", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn the_readme_configuration_sketch_is_valid() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let at = readme
        .find("## Configuration")
        .expect("a Configuration section");
    let start = readme[at..].find("```toml").expect("a toml block") + at + "```toml".len();
    let end = readme[start..].find("```").unwrap() + start;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, &readme[start..end]).unwrap();
    let out = postrider(&["check-config", "-c", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
