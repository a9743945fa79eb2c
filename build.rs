//! Regenerates include/zeph_llm.h from the ffi layer with cbindgen.  The
//! header is committed; `make check-header` fails when it is stale.

use std::path::{Path, PathBuf};

/// The shared library records its soname at link time (before 1.0 every
/// minor version may change the ABI, so the soname carries it), so that
/// `make install` copies it as it is.  Programs linked with `-lzeph_llm`
/// then ask for `libzeph_llm.so.MAJOR.MINOR`: a symlink by that name beside
/// the library in the target directory lets programs built in the tree run.
fn link_soname(major: u32, minor: u32) {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let soname = format!("libzeph_llm.so.{major}.{minor}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let link = profile_dir.join(&soname);
        if std::fs::symlink_metadata(&link).is_err() {
            if let Err(e) = symlink("libzeph_llm.so", &link) {
                println!("cargo:warning=could not create {}: {e}", link.display());
            }
        }
    }
}

#[cfg(unix)]
fn symlink(target: &str, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &str, _link: &Path) -> std::io::Result<()> {
    Ok(())
}

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
    link_soname(major, minor);
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
