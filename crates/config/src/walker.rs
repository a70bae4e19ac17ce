//! The primitives of the walk over `toml`'s spanned document: where an error is (file, line,
//! column, key) and how the shapes every kind of value is made of are read (string,
//! boolean, integer in a range, a string parsed by a function, an array). The kinds in
//! `kinds.rs` are built on these; `parse.rs` walks the document with them.

use std::fmt::Display;

use toml::Spanned;
use toml::de::DeValue;

use crate::error::ConfigError;

pub(crate) type V<'i> = Spanned<DeValue<'i>>;

pub(crate) struct Walker<'a> {
    pub(crate) text: &'a str,
    pub(crate) file: &'a str,
    pub(crate) errors: Vec<ConfigError>,
}

impl Walker<'_> {
    pub(crate) fn error_at(&mut self, offset: usize, key: &str, message: &str) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.to_string(),
            message: message.to_string(),
        });
    }

    pub(crate) fn error(&mut self, v: &V<'_>, key: &str, message: &str) {
        self.error_at(v.span().start, key, message);
    }

    pub(crate) fn string<'t>(&mut self, v: &'t V<'_>, key: &str) -> Option<&'t str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            other => {
                let msg = format!("expected a string, found {}", other.type_str());
                self.error(v, key, &msg);
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, v: &V<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                let msg = format!("expected true or false, found {}", other.type_str());
                self.error(v, key, &msg);
                None
            }
        }
    }

    pub(crate) fn integer(&mut self, v: &V<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        match v.get_ref() {
            DeValue::Integer(i) => {
                let parsed = u64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                    .ok()
                    .filter(|n| (min..=max).contains(n));
                if parsed.is_none() {
                    self.error(v, key, &format!("must be an integer from {min} to {max}"));
                }
                parsed
            }
            other => {
                let msg = format!("expected an integer, found {}", other.type_str());
                self.error(v, key, &msg);
                None
            }
        }
    }

    /// A string converted by `f`; the error from `f` is reported at the value.
    pub(crate) fn parsed<T, E: Display>(
        &mut self,
        v: &V<'_>,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let s = self.string(v, key)?;
        match f(s) {
            Ok(x) => Some(x),
            Err(e) => {
                self.error(v, key, &e.to_string());
                None
            }
        }
    }

    /// An array whose items are read by `f`; `None` if it is not an array or any item failed
    /// (each failure reported by `f`).
    pub(crate) fn list<T>(
        &mut self,
        v: &V<'_>,
        key: &str,
        mut f: impl FnMut(&mut Self, &V<'_>) -> Option<T>,
    ) -> Option<Vec<T>> {
        let DeValue::Array(a) = v.get_ref() else {
            let msg = format!("expected an array, found {}", v.get_ref().type_str());
            self.error(v, key, &msg);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in a.iter() {
            match f(self, item) {
                Some(x) => out.push(x),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}
