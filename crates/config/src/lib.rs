//! postrider's configuration: TOML, typed and validated at load time.
pub mod route;
