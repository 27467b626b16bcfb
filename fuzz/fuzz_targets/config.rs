//! `mapwatch run --config FILE`: user input. Never a panic; every error points at a
//! line and column; a configuration that parses prints (`--print-config`) as a file
//! that reads back the same.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mapwatch::config::{ConfigError, RunConfig};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.toml");
    let config = match RunConfig::from_toml_bytes(data, path) {
        Ok(config) => config,
        Err(ConfigError::Invalid { line, column, .. }) => {
            let text = String::from_utf8_lossy(data);
            let lines = text.split('\n').count();
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
            let width = text.split('\n').nth(line - 1).unwrap().chars().count();
            assert!(
                (1..=width + 1).contains(&column),
                "column {column} of {width}"
            );
            return;
        }
        Err(other) => panic!("an error without a line and column: {other}"),
    };
    let _ = config.validate();
    let printed = config.to_toml().expect("a parsed configuration prints");
    let again = RunConfig::from_toml(&printed, path)
        .unwrap_or_else(|e| panic!("printed configuration does not read back: {e}\n{printed}"));
    assert_eq!(again, config, "printed:\n{printed}");
});
