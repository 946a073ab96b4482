//! Build script of `walcore`: links the system libzstd statically (so the
//! addon carries it and needs no shared library at run time) and checks the
//! functions `src/zstd.rs` declares by hand against the installed `zstd.h`,
//! so that a typo fails the build rather than the link.
//!
//! Where libzstd.a is: `ZSTD_LIB_DIR`, else `pkg-config --variable=libdir
//! libzstd`, else the usual library directories. Debian/Ubuntu:
//! `apt-get install libzstd-dev`; macOS: `brew install zstd`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let decl = manifest.join("src").join("zstd.rs");
    println!("cargo:rerun-if-changed={}", decl.display());
    println!("cargo:rerun-if-env-changed=ZSTD_LIB_DIR");
    println!("cargo:rerun-if-env-changed=ZSTD_INCLUDE_DIR");

    let lib_name = if env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("msvc") { "zstd.lib" } else { "libzstd.a" };
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(d) = env::var("ZSTD_LIB_DIR") {
        candidates.push(d.into());
    }
    if let Some(d) = pkg_config_var("libdir") {
        candidates.push(d.into());
    }
    let triple_dir = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "",
    };
    for d in [format!("/usr/lib/{triple_dir}"), "/usr/lib64".into(), "/usr/lib".into(), "/usr/local/lib".into(), "/opt/homebrew/lib".into()] {
        candidates.push(d.into());
    }
    let dir = candidates.into_iter().find(|d| {
        tried.push(d.display().to_string());
        d.join(lib_name).is_file()
    });
    let Some(dir) = dir else {
        panic!(
            "\n\nwalcore build: {lib_name} (zstd, for compressing offloaded WAL) was not found.\nLooked in:\n  {}\nFix: apt-get install libzstd-dev (Debian/Ubuntu), brew install zstd (macOS), or set ZSTD_LIB_DIR.\n\n",
            tried.join("\n  ")
        );
    };
    println!("cargo:rustc-link-search=native={}", dir.display());

    // The declarations against the header, when the header is there.
    let header = env::var("ZSTD_INCLUDE_DIR")
        .ok()
        .map(PathBuf::from)
        .or_else(|| pkg_config_var("includedir").map(PathBuf::from))
        .into_iter()
        .chain([PathBuf::from("/usr/include"), PathBuf::from("/usr/local/include"), PathBuf::from("/opt/homebrew/include")])
        .map(|d| d.join("zstd.h"))
        .find(|p| p.is_file());
    if let Some(h) = header {
        check_declarations(&decl, &h);
    }
}

fn pkg_config_var(var: &str) -> Option<String> {
    let out = Command::new("pkg-config").args([&format!("--variable={var}"), "libzstd"]).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn check_declarations(decl: &Path, header: &Path) {
    let src = fs::read_to_string(decl).expect("read zstd.rs");
    let h = fs::read_to_string(header).expect("read zstd.h");
    let missing: Vec<&str> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("fn ZSTD_"))
        .map(|rest| rest.split('(').next().unwrap_or(""))
        .filter(|name| !h.contains(&format!("ZSTD_{name}(")) && !h.contains(&format!("ZSTD_{name} (")))
        .collect();
    if !missing.is_empty() {
        panic!("walcore build: {} declares zstd functions that {} does not have: {:?}", decl.display(), header.display(), missing);
    }
}
