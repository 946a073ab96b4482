//! walcore-node: the Node.js addon exposing `walcore`.
//!
//! - `napi_sys`: the hand-declared Node-API C functions (checked against the
//!   installed Node headers by the workspace `build.rs`).
//! - `napi`: the small safe layer (values, arguments, errors, async work).
//! - `exports`: the functions exported to JavaScript.
//!
//! No external crates: the crate registry is not reachable.

mod exports;
#[allow(dead_code)] // API surface for exports.rs; not every helper is used yet
mod napi;
mod napi_sys;

use std::panic::{catch_unwind, AssertUnwindSafe};

use napi::Env;
use napi_sys::{napi_env, napi_value};

/// Node-API version this addon targets (reported to Node at load time).
const NAPI_VERSION: i32 = 8;

/// Module entry point looked up by Node when the `.node` file is loaded.
/// Errors and panics from `exports::register` become a JS exception thrown
/// from `require()`/`process.dlopen`, never an abort.
#[no_mangle]
pub extern "C" fn napi_register_module_v1(env: napi_env, exports: napi_value) -> napi_value {
    let js = Env(env);
    match catch_unwind(AssertUnwindSafe(|| exports::register(&js, exports))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => js.throw(&e),
        Err(payload) => {
            let e = napi::JsError::from_panic(&*payload);
            js.throw(&e);
        }
    }
    exports
}

/// Tells Node which Node-API version the module was built for.
#[no_mangle]
pub extern "C" fn node_api_module_get_api_version_v1() -> i32 {
    NAPI_VERSION
}
