//! Local recipients: which local parts exist in the local domains, and the aliases(5) table
//! that rewrites some of them. Consulted by the SMTP server at RCPT time so unknown users
//! are refused in the session (no backscatter) instead of bounced later.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// How deep alias expansion may nest before it is called a loop.
const MAX_ALIAS_DEPTH: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptCheck {
    /// The local part exists; mail goes to `targets` (itself, or what its alias expands to).
    /// A target without `@` is a local user; one with `@` is forwarded.
    Local {
        targets: Vec<String>,
    },
    UnknownUser,
    TempFail(String),
}

/// The aliases table: lower-cased name to its right-hand side, in file order.
pub type Aliases = HashMap<String, Vec<String>>;

/// How [`parse_aliases`] keeps a `:include:/path` target: this prefix and the absolute path.
/// [`LocalPolicy::from_config`] replaces it with the addresses the file lists.
pub const INCLUDE: &str = ":include:";

/// Parses aliases(5): `name: target, target`, continuation lines start with white space,
/// `#` starts a comment line. A `:include:/abs/path` target is kept as is (see [`INCLUDE`]):
/// reading the file is left to the caller so that parsing stays a pure function. Pipes and
/// files are refused: postrider delivers only over SMTP and LMTP.
pub fn parse_aliases(text: &str) -> Result<Aliases, (usize, String)> {
    Ok(parse_entries(text)?
        .into_iter()
        .map(|(_, name, targets)| (name, targets))
        .collect())
}

/// An alias with the line it is defined on, so that errors found later (an `:include:`
/// file that cannot be read) can name it: `(line, name, targets)`.
type Entry = (usize, String, Vec<String>);

fn parse_entries(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        if raw.trim_start().starts_with('#') || raw.trim().is_empty() {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            match logical.last_mut() {
                Some((_, l)) => {
                    l.push(' ');
                    l.push_str(raw.trim());
                }
                None => return Err((line_no, "continuation line with no alias before it".into())),
            }
        } else {
            logical.push((line_no, raw.trim().to_string()));
        }
    }
    for (line_no, l) in logical {
        let (name, rhs) = l
            .split_once(':')
            .ok_or_else(|| (line_no, format!("'{l}': expected 'name: target, ...'")))?;
        let name = name.trim().trim_matches('"').to_ascii_lowercase();
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('@') {
            return Err((line_no, format!("'{name}' is not a local name")));
        }
        let mut targets = Vec::new();
        for t in rhs.split(',') {
            let t = t.trim().trim_matches('"');
            if let Some(path) = t.strip_prefix(INCLUDE) {
                let path = path.trim();
                if !path.starts_with('/') {
                    return Err((
                        line_no,
                        format!("'{t}': the :include: path must be absolute"),
                    ));
                }
                targets.push(format!("{INCLUDE}{path}"));
            } else if let Some(t) = parse_target(t).map_err(|e| (line_no, e))? {
                targets.push(t);
            }
        }
        if targets.is_empty() {
            return Err((line_no, format!("alias '{name}' has no targets")));
        }
        if !names.insert(name.clone()) {
            return Err((line_no, format!("alias '{name}' is defined twice")));
        }
        out.push((line_no, name, targets));
    }
    Ok(out)
}

/// One address of a right-hand side or an `:include:` file; `None` for an empty one.
fn parse_target(t: &str) -> Result<Option<String>, String> {
    let t = t.trim().trim_matches('"');
    if t.is_empty() {
        return Ok(None);
    }
    if t.starts_with('|') || t.starts_with('/') {
        return Err(format!("'{t}': pipes and files are not supported"));
    }
    if t.starts_with(INCLUDE) {
        return Err(format!("'{t}': :include: is not supported here"));
    }
    if t.contains(char::is_whitespace) {
        return Err(format!("'{t}' is not an address"));
    }
    Ok(Some(
        t.strip_prefix('<')
            .and_then(|x| x.strip_suffix('>'))
            .unwrap_or(t)
            .to_string(),
    ))
}

/// An `:include:` file: addresses, one or more per line separated by commas, `#` comment
/// lines. Such a file may not include another (sendmail allows it; a list of lists is
/// better written as aliases).
fn parse_include(text: &str) -> Result<Vec<String>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        for t in line.split(',') {
            if let Some(t) = parse_target(t).map_err(|e| (i + 1, e))? {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// Reads the aliases file and the `:include:` files it names. Errors name the aliases file
/// and line, and for a bad address in an included file, that file and its line too.
fn load_aliases(file: &Path) -> Result<Aliases, LocalError> {
    let syntax = |line, message| LocalError::Syntax {
        file: file.to_path_buf(),
        line,
        message,
    };
    let mut out = Aliases::new();
    for (line, name, targets) in parse_entries(&read(file)?).map_err(|(l, m)| syntax(l, m))? {
        let mut expanded = Vec::with_capacity(targets.len());
        for t in targets {
            let Some(path) = t.strip_prefix(INCLUDE) else {
                expanded.push(t);
                continue;
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| syntax(line, format!("{INCLUDE}{path}: {e}")))?;
            let addrs = parse_include(&text)
                .map_err(|(l, m)| syntax(line, format!("{INCLUDE}{path}:{l}: {m}")))?;
            expanded.extend(addrs);
        }
        out.insert(name, expanded);
    }
    Ok(out)
}

#[derive(Debug, Clone, Default)]
pub struct LocalPolicy {
    /// `None`: every local part is accepted.
    users: Option<HashSet<String>>,
    aliases: Aliases,
}

fn read(path: &Path) -> Result<String, LocalError> {
    std::fs::read_to_string(path).map_err(|source| LocalError::Read {
        file: path.to_path_buf(),
        source,
    })
}

impl LocalPolicy {
    pub fn new(users: Option<HashSet<String>>, aliases: Aliases) -> Self {
        LocalPolicy { users, aliases }
    }

    pub fn from_config(cfg: &config::Config) -> Result<Self, LocalError> {
        let mut users: Option<HashSet<String>> = None;
        if !cfg.local.users.is_empty() {
            users = Some(
                cfg.local
                    .users
                    .iter()
                    .map(|u| u.to_ascii_lowercase())
                    .collect(),
            );
        }
        if let Some(f) = &cfg.local.users_file {
            let set = users.get_or_insert_with(HashSet::new);
            for l in read(f)?.lines() {
                let l = l.trim();
                if !l.is_empty() && !l.starts_with('#') {
                    set.insert(l.to_ascii_lowercase());
                }
            }
        }
        // `:include:` files are read here, with the aliases file: a list's members change
        // when the configuration is reloaded, like its aliases.
        let aliases = match &cfg.local.aliases {
            Some(f) => load_aliases(f)?,
            None => Aliases::new(),
        };
        Ok(LocalPolicy { users, aliases })
    }

    fn user_exists(&self, name: &str) -> bool {
        // RFC 5321 §4.5.1: postmaster must always be accepted.
        name == "postmaster" || self.users.as_ref().is_none_or(|u| u.contains(name))
    }

    /// The name a local part is looked up as: `user+detail` is `user` when `user+detail`
    /// itself is unknown.
    fn key(&self, local_part: &str) -> String {
        let lp = local_part.to_ascii_lowercase();
        if self.aliases.contains_key(&lp) || self.user_exists(&lp) {
            lp
        } else {
            match lp.split_once('+') {
                Some((base, _)) if !base.is_empty() => base.to_string(),
                _ => lp,
            }
        }
    }

    /// Looks a local part up. `user+detail` is `user` when `user+detail` itself is unknown.
    pub fn check(&self, local_part: &str) -> RcptCheck {
        let key = self.key(local_part);
        if !self.aliases.contains_key(&key) {
            return if self.user_exists(&key) {
                RcptCheck::Local {
                    targets: vec![local_part.to_string()],
                }
            } else {
                RcptCheck::UnknownUser
            };
        }
        let mut targets = Vec::new();
        let mut seen = HashSet::new();
        match self.expand(&key, 0, &mut seen, &mut targets) {
            // An `:include:` list with no members. Accepting would deliver to the alias
            // name itself (an empty expansion means "unchanged" to the caller).
            Ok(()) if targets.is_empty() => {
                RcptCheck::TempFail(format!("alias '{key}' expands to no address"))
            }
            Ok(()) => RcptCheck::Local { targets },
            Err(e) => RcptCheck::TempFail(e),
        }
    }

    /// Who owns the alias `local_part`, when an `owner-NAME` alias exists (the sendmail and
    /// Postfix convention for mailing lists): the envelope sender to use for the copies
    /// its expansion produces, so that their bounces reach the owner rather than the
    /// original sender. That is what `owner-NAME` expands to when it is a single address
    /// (Postfix's `expand_owner_alias`), otherwise `owner-NAME` itself, whose own expansion
    /// then reaches every owner. Like [`RcptCheck::Local`]'s targets, a result without `@`
    /// is a local part in the recipient's domain.
    pub fn owner_of(&self, local_part: &str) -> Option<String> {
        let owner = format!("owner-{}", self.key(local_part));
        if !self.aliases.contains_key(&owner) {
            return None;
        }
        let mut targets = Vec::new();
        match self.expand(&owner, 0, &mut HashSet::new(), &mut targets) {
            Ok(()) if targets.len() == 1 => targets.pop(),
            _ => Some(owner),
        }
    }

    fn expand(
        &self,
        name: &str,
        depth: usize,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), String> {
        if depth > MAX_ALIAS_DEPTH {
            return Err(format!(
                "alias '{name}' nests more than {MAX_ALIAS_DEPTH} deep"
            ));
        }
        let Some(targets) = self.aliases.get(name) else {
            if !out.iter().any(|t| t == name) {
                out.push(name.to_string());
            }
            return Ok(());
        };
        if !seen.insert(name.to_string()) {
            // `a: a, b` (keep a copy) is common; a longer cycle just stops here.
            if !out.iter().any(|t| t == name) {
                out.push(name.to_string());
            }
            return Ok(());
        }
        for t in targets {
            if t.starts_with(INCLUDE) {
                // Only `from_config` reads include files; a table built from
                // `parse_aliases` alone still holds the marker.
                return Err(format!("alias '{name}': '{t}' was not read"));
            }
            if t.contains('@') {
                if !out.contains(t) {
                    out.push(t.clone());
                }
            } else {
                self.expand(&t.to_ascii_lowercase(), depth + 1, seen, out)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn aliases_file() {
        let a = parse_aliases(
            "# comment\npostmaster: root\nroot: alice,\n  bob@other.test\nteam: alice, bob, team\nbob: \"carol\"\n",
        )
        .unwrap();
        let p = LocalPolicy::new(
            Some(
                ["alice", "carol", "dave"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            a,
        );
        assert_eq!(
            p.check("Postmaster"),
            RcptCheck::Local {
                targets: vec!["alice".into(), "bob@other.test".into()]
            }
        );
        assert_eq!(
            p.check("team"),
            RcptCheck::Local {
                targets: vec!["alice".into(), "carol".into(), "team".into()]
            }
        );
        assert_eq!(
            p.check("dave+lists"),
            RcptCheck::Local {
                targets: vec!["dave+lists".into()]
            }
        );
        assert_eq!(p.check("eve"), RcptCheck::UnknownUser);
    }

    #[test]
    fn bad_alias_lines_name_the_line() {
        assert_eq!(parse_aliases("a: b\nc: |/bin/sh\n").unwrap_err().0, 2);
        assert_eq!(parse_aliases("  x\n").unwrap_err().0, 1);
        assert_eq!(parse_aliases("a: b\n\nnocolon\n").unwrap_err().0, 3);
        assert_eq!(parse_aliases("a: b\na: c\n").unwrap_err().0, 2);
    }

    /// The policy `from_config` builds for an aliases file with these contents, in `dir`.
    fn load(dir: &Path, aliases: &str) -> Result<LocalPolicy, LocalError> {
        let file = dir.join("aliases");
        std::fs::write(&file, aliases).unwrap();
        let mut cfg = config::Config::default();
        cfg.local.aliases = Some(file);
        cfg.local.users = vec!["alice".into(), "bob".into()];
        LocalPolicy::from_config(&cfg)
    }

    fn local(targets: &[&str]) -> RcptCheck {
        RcptCheck::Local {
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn include_files_are_expanded_like_other_targets() {
        let dir = tempfile::tempdir().unwrap();
        let members = dir.path().join("list.members");
        std::fs::write(
            &members,
            "# the list\nalice, carol@other.test\n\n  <dave@other.test>\nstaff,bob\n",
        )
        .unwrap();
        let p = load(
            dir.path(),
            &format!(
                "list: :include:{}, extra@other.test\nstaff: bob, alice\n",
                members.display()
            ),
        )
        .unwrap();
        assert_eq!(
            p.check("List"),
            local(&[
                "alice",
                "carol@other.test",
                "dave@other.test",
                "bob",
                "extra@other.test"
            ])
        );
        // The pure parser keeps the marker for the caller to read.
        let raw = parse_aliases(&format!("list: :include: {}\n", members.display())).unwrap();
        assert_eq!(raw["list"], [format!(":include:{}", members.display())]);
        assert!(matches!(
            LocalPolicy::new(None, raw).check("list"),
            RcptCheck::TempFail(_)
        ));
    }

    #[test]
    fn include_errors_name_the_alias_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let at_line = |e: LocalError, want: usize| match e {
            LocalError::Syntax {
                file,
                line,
                message,
            } => {
                assert_eq!(file, dir.path().join("aliases"));
                assert_eq!(line, want, "{message}");
                message
            }
            e => panic!("{e}"),
        };
        let e = load(dir.path(), "a: alice\nlist: :include:members\n").unwrap_err();
        assert!(at_line(e, 2).contains("absolute"));
        let missing = dir.path().join("missing");
        let e = load(
            dir.path(),
            &format!("a: alice\n\nlist: bob,\n  :include:{}\n", missing.display()),
        )
        .unwrap_err();
        let m = at_line(e, 3);
        assert!(m.contains(&missing.display().to_string()), "{m}");
        // What the include file holds is checked like a right-hand side.
        let bad = dir.path().join("bad");
        for (text, line) in [
            ("alice\n|/bin/sh\n", 2),
            ("/var/mail/x\n", 1),
            ("a b\n", 1),
            (":include:/etc/other\n", 1),
        ] {
            std::fs::write(&bad, text).unwrap();
            let e = load(dir.path(), &format!("list: :include:{}\n", bad.display())).unwrap_err();
            let m = at_line(e, 1);
            assert!(m.contains(&format!("{}:{line}:", bad.display())), "{m}");
        }
    }

    #[test]
    fn an_empty_include_list_is_not_delivered_to_the_list_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nobody yet\n").unwrap();
        let p = load(dir.path(), &format!("list: :include:{}\n", empty.display())).unwrap();
        assert!(matches!(p.check("list"), RcptCheck::TempFail(_)));
    }

    #[test]
    fn owner_aliases() {
        let p = LocalPolicy::new(
            Some(["alice", "bob"].iter().map(|s| s.to_string()).collect()),
            parse_aliases(
                "list: alice, bob\n\
                 owner-list: listadmin\n\
                 listadmin: bob\n\
                 team: alice\n\
                 owner-team: alice, carol@other.test\n\
                 owner-alice: postmaster@other.test\n",
            )
            .unwrap(),
        );
        // A single address, after expansion: the owner's own mailbox.
        assert_eq!(p.owner_of("list"), Some("bob".into()));
        assert_eq!(p.owner_of("LIST+tag"), Some("bob".into()));
        // Several owners: the owner alias, which reaches them all.
        assert_eq!(p.owner_of("team"), Some("owner-team".into()));
        assert_eq!(p.owner_of("alice"), Some("postmaster@other.test".into()));
        assert_eq!(p.owner_of("bob"), None);
        assert_eq!(p.owner_of("nobody"), None);
        // The owner alias is an ordinary alias too.
        assert_eq!(p.check("owner-team"), local(&["alice", "carol@other.test"]));
    }

    #[test]
    fn no_user_list_accepts_anyone() {
        let p = LocalPolicy::default();
        assert!(matches!(p.check("anybody"), RcptCheck::Local { .. }));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse_aliases(&s);
        }

        #[test]
        fn include_parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse_include(&s);
        }

        #[test]
        fn expansion_terminates(edges in proptest::collection::vec((0u8..6, 0u8..6), 0..20)) {
            let mut text = String::new();
            let mut map: std::collections::BTreeMap<u8, Vec<u8>> = Default::default();
            for (a, b) in edges { map.entry(a).or_default().push(b); }
            for (a, bs) in &map {
                let rhs: Vec<String> = bs.iter().map(|b| format!("n{b}")).collect();
                text.push_str(&format!("n{a}: {}\n", rhs.join(", ")));
            }
            let p = LocalPolicy::new(None, parse_aliases(&text).unwrap());
            for n in 0..6 {
                let _ = p.check(&format!("n{n}"));
            }
        }
    }
}
