//! The walk over `toml`'s spanned document.
//!
//! Values are read by hand rather than through serde so that every error can name the file,
//! line, column and key, and so that the walk goes on after an error: one run of
//! `check-config` reports every problem in the file. Which keys exist and how each is read
//! comes from the table in `keys.rs`; this module knows only the shapes of values and the
//! parts of the file that are not plain keys (`[routes]`, `[tls_policy]`, `[[milter]]`).

use std::fmt::Display;

use toml::de::{DeTable, DeValue};

use crate::error::{ConfigErrors, ValueError};
use crate::kinds::Kind;
use crate::route::{RoutePattern, RouteTable, RouteTarget};
use crate::walker::{V, Walker};
use crate::{Config, Milter, TlsPolicy};

/// The sections of the top-level table, in the order "known here" lists them after the
/// top-level keys.
const SECTIONS: &[&str] = &[
    "smtp",
    "local",
    "routes",
    "tls_policy",
    "dns",
    "delivery",
    "milter",
    "control",
    "log",
];

/// Parses `text` (named `file` in errors) over `cfg`, which holds the defaults.
pub(crate) fn parse_into(text: &str, file: &str, cfg: &mut Config) -> Result<(), ConfigErrors> {
    let mut w = Walker {
        text,
        file,
        errors: Vec::new(),
    };
    match DeTable::parse(text) {
        Ok(doc) => {
            w.document(doc.get_ref(), cfg);
            w.cross_checks(cfg, doc.get_ref());
        }
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            w.error_at(at, "", &format!("TOML syntax: {}", e.message().trim()));
        }
    }
    if w.errors.is_empty() {
        Ok(())
    } else {
        w.errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(w.errors))
    }
}

/// Reads one value of kind `K` written as TOML `text`, as if it stood at `key`: how the
/// table's defaults become values, and how tests read back what a kind rendered.
pub(crate) fn parse_value<K: Kind>(text: &str, key: &str) -> Result<K::Value, ConfigErrors> {
    let doc = format!("v = {text}");
    let mut w = Walker {
        text: &doc,
        file: "<value>",
        errors: Vec::new(),
    };
    let value = match DeTable::parse(&doc) {
        Ok(t) => t.get_ref().get("v").and_then(|v| K::read(&mut w, v, key)),
        Err(e) => {
            w.error_at(0, key, &format!("TOML syntax: {}", e.message().trim()));
            None
        }
    };
    match value {
        Some(v) if w.errors.is_empty() => Ok(v),
        _ => Err(ConfigErrors(w.errors)),
    }
}

/// Edit distance, for "did you mean" on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Walker<'_> {
    /// Reports keys of `t` not in `known`, suggesting the nearest known one.
    fn check_keys(&mut self, t: &DeTable<'_>, prefix: &str, known: &[&str]) {
        for (k, _) in t.iter() {
            let name: &str = k.get_ref();
            if known.contains(&name) {
                continue;
            }
            let best = known
                .iter()
                .map(|c| (distance(name, c), *c))
                .min()
                .filter(|(d, _)| *d <= 3);
            let msg = match best {
                Some((_, c)) => format!("unknown key (did you mean '{c}'?)"),
                None => format!("unknown key (known here: {})", known.join(", ")),
            };
            self.error_at(k.span().start, &join(prefix, name), &msg);
        }
    }

    fn table<'t, 'i>(&mut self, v: &'t V<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                let msg = format!("expected a table, found {}", other.type_str());
                self.error(v, key, &msg);
                None
            }
        }
    }

    /// A `[section]`: its keys checked against `known` and read by `apply`.
    fn section(
        &mut self,
        v: &V<'_>,
        key: &str,
        known: &[&str],
        apply: impl FnOnce(&mut Self, &DeTable<'_>),
    ) {
        if let Some(t) = self.table(v, key) {
            self.check_keys(t, key, known);
            apply(self, t);
        }
    }

    fn document(&mut self, doc: &DeTable<'_>, cfg: &mut Config) {
        let known: Vec<&str> = Config::NAMES.iter().chain(SECTIONS).copied().collect();
        self.check_keys(doc, "", &known);
        cfg.apply(self, doc);
        for (k, v) in doc.iter() {
            let key: &str = k.get_ref();
            match key {
                "smtp" => self.section(v, key, crate::Smtp::NAMES, |w, t| {
                    cfg.smtp.apply(w, t);
                }),
                "local" => self.section(v, key, crate::Local::NAMES, |w, t| {
                    cfg.local.apply(w, t);
                }),
                "dns" => self.section(v, key, crate::Dns::NAMES, |w, t| {
                    cfg.dns.apply(w, t);
                }),
                "delivery" => self.section(v, key, crate::Delivery::NAMES, |w, t| {
                    cfg.delivery.apply(w, t);
                }),
                "control" => self.section(v, key, crate::Control::NAMES, |w, t| {
                    cfg.control.apply(w, t);
                }),
                "log" => self.section(v, key, crate::Log::NAMES, |w, t| {
                    cfg.log.apply(w, t);
                }),
                "routes" => {
                    if let Some(t) = self.table(v, key) {
                        cfg.routes = self.route_table(t, "routes", |s| {
                            s.parse::<RouteTarget>().map_err(ValueError::RouteTarget)
                        });
                    }
                }
                "tls_policy" => {
                    if let Some(t) = self.table(v, key) {
                        cfg.tls_policy = self.route_table(t, "tls_policy", str::parse::<TlsPolicy>);
                    }
                }
                "milter" => {
                    if let Some(list) = self.list(v, key, |w, i| {
                        let t = w.table(i, "milter")?;
                        w.milter(i, t)
                    }) {
                        cfg.milters = list;
                    }
                }
                _ => {}
            }
        }
    }

    /// A table keyed by domain patterns (`[routes]`, `[tls_policy]`), its values read by `f`.
    fn route_table<T, E: Display>(
        &mut self,
        t: &DeTable<'_>,
        section: &str,
        f: impl Fn(&str) -> Result<T, E>,
    ) -> RouteTable<T> {
        let mut entries = Vec::new();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref();
            let key = format!("{section}.\"{name}\"");
            let pattern = match name.parse::<RoutePattern>() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.error_at(k.span().start, &key, &e.to_string());
                    None
                }
            };
            let value = self.parsed(v, &key, &f);
            if let (Some(p), Some(x)) = (pattern, value) {
                entries.push((p, x));
            }
        }
        RouteTable::new(entries)
    }

    /// One `[[milter]]`: `None` if anything in it was wrong (and reported).
    fn milter(&mut self, at: &V<'_>, t: &DeTable<'_>) -> Option<Milter> {
        self.check_keys(t, "milter", Milter::NAMES);
        let mut m = Milter::defaults();
        let ok = m.apply(self, t);
        // The address has no default, and a missing one is worth its own error only when
        // nothing else in the entry was wrong.
        if t.get("address").is_none() {
            if ok {
                self.error(at, "milter.address", "every [[milter]] needs an address");
            }
            return None;
        }
        ok.then_some(m)
    }

    /// Checks that need more than one key.
    fn cross_checks(&mut self, cfg: &Config, doc: &DeTable<'_>) {
        if cfg.smtp.tls_cert.is_some() != cfg.smtp.tls_key.is_some() {
            let at = doc.get("smtp").map(|v| v.span().start).unwrap_or(0);
            self.error_at(
                at,
                "smtp.tls_cert",
                "tls_cert and tls_key must be given together",
            );
        }
    }
}
