//! Build script of `crates/walcore-node` (its Cargo.toml says
//! `build = "../../build.rs"`, so CARGO_MANIFEST_DIR is crates/walcore-node).
//!
//! 1. On macOS targets, lets the cdylib leave the N-API symbols undefined;
//!    they are resolved from the `node` process when the addon is loaded.
//! 2. Checks every N-API function declared by hand in `src/napi_sys.rs`
//!    against the installed Node headers (`js_native_api.h`, `node_api.h`),
//!    so that a typo or a function that Node does not have fails the build
//!    instead of failing at `require()` time.
//!
//! Only `std` is used: the crate registry is not reachable.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const HEADERS: [&str; 2] = ["js_native_api.h", "node_api.h"];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let sys_path = manifest_dir.join("src").join("napi_sys.rs");

    println!("cargo:rerun-if-changed={}", sys_path.display());
    for var in ["NODE_INCLUDE_DIR", "npm_config_nodedir", "NODE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    // (1) macOS: N-API symbols come from the host process at load time.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-cdylib-link-arg=-undefined");
        println!("cargo:rustc-cdylib-link-arg=dynamic_lookup");
    }

    // (2) Check the hand-written declarations against the Node headers.
    let source = fs::read_to_string(&sys_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", sys_path.display()));
    let declared = declared_functions(&source);
    if declared.is_empty() {
        panic!(
            "no `fn napi_*` declarations found in {}; the N-API check cannot run",
            sys_path.display()
        );
    }

    let include_dir = match find_node_headers() {
        Ok(found) => found,
        Err(tried) => panic!(
            "\n\nwalcore-node build: the Node-API headers (js_native_api.h, node_api.h) were not found.\n\
             They are needed to check the hand-written declarations in {}.\n\
             Looked in:\n{}\n\
             Fix: set NODE_INCLUDE_DIR to the directory that contains node_api.h\n\
             (for example /usr/include/node or <node prefix>/include/node),\n\
             or run `npx node-gyp install` to download the headers for your Node version.\n\n",
            sys_path.display(),
            format_list(&tried),
        ),
    };

    let mut header_text = String::new();
    for name in HEADERS {
        let path = include_dir.join(name);
        println!("cargo:rerun-if-changed={}", path.display());
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        header_text.push_str(&text);
        header_text.push('\n');
    }

    let missing: Vec<String> = declared
        .into_iter()
        .filter(|name| !declared_in_header(&header_text, name))
        .collect();
    if !missing.is_empty() {
        panic!(
            "\n\nwalcore-node build: {} declared in {}\n\
             {} not declared as a function in the Node-API headers found in {}:\n{}\n\
             Every `fn` in the extern block of napi_sys.rs must be a real Node-API\n\
             function (check the spelling against js_native_api.h / node_api.h).\n\
             If your Node is too old for it, upgrade Node or point NODE_INCLUDE_DIR\n\
             at newer headers.\n\n",
            if missing.len() == 1 {
                "a function"
            } else {
                "functions"
            },
            sys_path.display(),
            if missing.len() == 1 { "is" } else { "are" },
            include_dir.display(),
            format_list(&missing),
        );
    }
}

fn format_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("  - {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes `// ...` and `/* ... */` comments, so that names mentioned only in
/// comments are not collected. String literals are not expected in
/// napi_sys.rs; they would merely make the scan conservative.
fn strip_comments(src: &str) -> String {
    let bytes = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut depth = 0usize;
    while i < bytes.len() {
        if depth > 0 {
            if bytes[i..].starts_with(b"*/") {
                depth -= 1;
                i += 2;
            } else if bytes[i..].starts_with(b"/*") {
                depth += 1;
                i += 2;
            } else {
                if bytes[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
        } else if bytes[i..].starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"/*") {
            depth = 1;
            i += 2;
        } else {
            // Copy one whole UTF-8 character.
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every `fn napi_xxx` / `fn node_api_xxx` name in napi_sys.rs (outside
/// comments), in order of appearance, without duplicates.
fn declared_functions(src: &str) -> Vec<String> {
    let code = strip_comments(src);
    let bytes = code.as_bytes();
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(pos) = code[i..].find("fn") {
        let start = i + pos;
        i = start + 2;
        let before_ok = start == 0 || !is_ident_byte(bytes[start - 1]);
        let after = bytes.get(start + 2).copied();
        if !before_ok || !matches!(after, Some(b) if b.is_ascii_whitespace()) {
            continue;
        }
        let mut j = start + 2;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let name_start = j;
        while j < bytes.len() && is_ident_byte(bytes[j]) {
            j += 1;
        }
        let name = &code[name_start..j];
        if (name.starts_with("napi_") || name.starts_with("node_api_"))
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names
}

/// True when `name` appears in the header text as a whole identifier followed
/// by optional whitespace and `(`, i.e. as a function declaration.
fn declared_in_header(header: &str, name: &str) -> bool {
    let bytes = header.as_bytes();
    let mut from = 0;
    while let Some(pos) = header[from..].find(name) {
        let start = from + pos;
        let end = start + name.len();
        from = end;
        if start > 0 && is_ident_byte(bytes[start - 1]) {
            continue;
        }
        let mut j = end;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if bytes.get(j) == Some(&b'(') {
            return true;
        }
    }
    false
}

fn has_headers(dir: &Path) -> bool {
    HEADERS.iter().all(|h| dir.join(h).is_file())
}

/// Runs the `node` executable (or `$NODE`) with `args`; trimmed stdout.
fn run_node(args: &[&str]) -> Option<String> {
    let node = env::var_os("NODE")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "node".into());
    let out = Command::new(node).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Finds the directory holding the Node-API headers. Order:
/// `$NODE_INCLUDE_DIR`; `$npm_config_nodedir/include/node`;
/// `<dir of node executable>/../include/node`; the node-gyp header caches
/// for the running Node version. Err holds the places looked at.
fn find_node_headers() -> Result<PathBuf, Vec<String>> {
    let mut tried: Vec<String> = Vec::new();

    if let Some(dir) = env::var_os("NODE_INCLUDE_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_headers(&dir) {
            return Ok(dir);
        }
        // An explicit setting that is wrong is an error, not a hint.
        panic!(
            "\n\nwalcore-node build: NODE_INCLUDE_DIR={} does not contain js_native_api.h and node_api.h.\n\
             Set NODE_INCLUDE_DIR to the directory that contains node_api.h\n\
             (for example /usr/include/node), unset it to search automatically,\n\
             or run `npx node-gyp install` to download the headers.\n\n",
            dir.display()
        );
    }
    tried.push("$NODE_INCLUDE_DIR (not set)".into());

    let mut candidates: Vec<PathBuf> = Vec::new();
    match env::var_os("npm_config_nodedir").filter(|v| !v.is_empty()) {
        Some(d) => candidates.push(PathBuf::from(d).join("include").join("node")),
        None => tried.push("$npm_config_nodedir/include/node (not set)".into()),
    }

    match run_node(&["-p", "process.execPath"]) {
        Some(exe) => {
            let exe = PathBuf::from(exe);
            if let Some(bin_dir) = exe.parent() {
                candidates.push(bin_dir.join("..").join("include").join("node"));
            }
        }
        None => tried.push("<node executable dir>/../include/node (could not run `node -p process.execPath`; set NODE to the node executable)".into()),
    }

    match run_node(&["-v"]) {
        Some(v) => {
            let ver = v.trim_start_matches('v').to_string();
            if let Some(home) = env::var_os("HOME").filter(|v| !v.is_empty()) {
                let home = PathBuf::from(home);
                candidates.push(home.join(".cache/node-gyp").join(&ver).join("include/node"));
                candidates.push(
                    home.join("Library/Caches/node-gyp")
                        .join(&ver)
                        .join("include/node"),
                );
            }
            if let Some(local) = env::var_os("LOCALAPPDATA").filter(|v| !v.is_empty()) {
                candidates.push(
                    PathBuf::from(local)
                        .join("node-gyp")
                        .join("Cache")
                        .join(&ver)
                        .join("include")
                        .join("node"),
                );
            }
        }
        None => tried.push("node-gyp caches (could not run `node -v`)".into()),
    }

    for dir in candidates {
        if has_headers(&dir) {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    Err(tried)
}
