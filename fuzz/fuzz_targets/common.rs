//! Shared by the fuzz targets: the models they need, named by environment
//! variables that `make fuzz` / `make test-fuzz` set from the fetch script
//! and the fixtures (a missing model is a failure, never a silent pass).

#![allow(dead_code)]

use std::path::PathBuf;

pub fn model(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("{var} is not set: run the fuzz targets through make fuzz or make test-fuzz"),
    }
}

/// A file of this process holding `data`, rewritten at each call.
pub fn scratch_file(data: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("zeph-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&path, data).expect("writing the scratch file");
    path
}
