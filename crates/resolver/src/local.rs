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

/// Parses aliases(5): `name: target, target`, continuation lines start with white space,
/// `#` starts a comment line. Pipes, files and `:include:` are refused: postrider delivers
/// only over SMTP and LMTP.
pub fn parse_aliases(text: &str) -> Result<Aliases, (usize, String)> {
    let mut out = Aliases::new();
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
            if t.is_empty() {
                continue;
            }
            if t.starts_with('|') || t.starts_with('/') || t.starts_with(":include:") {
                return Err((
                    line_no,
                    format!("'{t}': pipes, files and :include: are not supported"),
                ));
            }
            if t.contains(char::is_whitespace) {
                return Err((line_no, format!("'{t}' is not an address")));
            }
            targets.push(
                t.strip_prefix('<')
                    .and_then(|x| x.strip_suffix('>'))
                    .unwrap_or(t)
                    .to_string(),
            );
        }
        if targets.is_empty() {
            return Err((line_no, format!("alias '{name}' has no targets")));
        }
        if out.insert(name.clone(), targets).is_some() {
            return Err((line_no, format!("alias '{name}' is defined twice")));
        }
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
        let aliases = match &cfg.local.aliases {
            Some(f) => parse_aliases(&read(f)?).map_err(|(line, message)| LocalError::Syntax {
                file: f.clone(),
                line,
                message,
            })?,
            None => Aliases::new(),
        };
        Ok(LocalPolicy { users, aliases })
    }

    fn user_exists(&self, name: &str) -> bool {
        // RFC 5321 §4.5.1: postmaster must always be accepted.
        name == "postmaster" || self.users.as_ref().is_none_or(|u| u.contains(name))
    }

    /// Looks a local part up. `user+detail` is `user` when `user+detail` itself is unknown.
    pub fn check(&self, local_part: &str) -> RcptCheck {
        let lp = local_part.to_ascii_lowercase();
        let key = if self.aliases.contains_key(&lp) || self.user_exists(&lp) {
            lp
        } else {
            match lp.split_once('+') {
                Some((base, _)) if !base.is_empty() => base.to_string(),
                _ => lp,
            }
        };
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
            Ok(()) => RcptCheck::Local { targets },
            Err(e) => RcptCheck::TempFail(e),
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
