//! Configuration and aliases parsers: any text gives a configuration or located errors,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = config::Config::parse(text, "fuzz.toml") {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(e.line >= 1);
        }
    }
    let _ = resolver::local::parse_aliases(text);
});
