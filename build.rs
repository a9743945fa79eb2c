//! Regenerates include/zeph_llm.h from the ffi layer with cbindgen.  The
//! header is committed; `make check-header` fails when it is stale.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    let mut config = config;
    config.after_includes = Some(format!(
        "{}\n#define ZEPH_VERSION \"{version}\"\n#define ZEPH_VERSION_MAJOR {major}\n#define ZEPH_VERSION_MINOR {minor}\n#define ZEPH_VERSION_PATCH {patch}\n",
        config.after_includes.clone().unwrap_or_default()
    ));
    let out = std::env::var("ZEPH_HEADER_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.join("include/zeph_llm.h"));
    match cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(out);
        }
        Err(e) => panic!("cbindgen failed to generate the header: {e}"),
    }
}
