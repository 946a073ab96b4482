//! A small safe layer over the hand-declared Node-API in `napi_sys.rs`.
//!
//! `exports.rs` is written against this module only. Everything here runs
//! on the JS thread unless stated otherwise; the only code that runs on a
//! libuv worker thread is the `work` closure given to [`spawn`] /
//! [`spawn_with_buffers`].
//!
//! # Errors, exceptions and panics
//! - Every Node-API call's `napi_status` is checked; a failure becomes a
//!   [`JsError`] with code `WALCORE_NAPI` and the message from
//!   `napi_get_last_error_info`.
//! - A callback registered with [`Env::define_function`] runs inside
//!   `catch_unwind`. `Err(e)` throws `e` as a JS exception (Error, TypeError
//!   or RangeError, with `code` set when given); a panic throws an `Error`
//!   with code `WALCORE_PANIC`. If a JS exception is already pending (for
//!   example a getter threw during a Node-API call) that exception is left
//!   to propagate and no second one is thrown.
//! - [`spawn`] never lets an error escape as an exception: once the promise
//!   exists, every failure (from `work`, `complete`, a panic in either,
//!   cancellation, or a failure to queue the work) rejects the promise.
//!
//! # Lifetimes of JS buffers used off the JS thread: [`BufferRef`]
//! A [`BufferRef`] holds a strong `napi_ref` (refcount 1) to a
//! Buffer/Uint8Array plus the raw pointer and length of its bytes. The
//! reference is deleted by `BufferRef`'s `Drop`, which calls
//! `napi_delete_reference` and so must run on the JS thread. That is made
//! a compile-time guarantee:
//! - `BufferRef` is deliberately **not `Send`** (nor `Sync`). It therefore
//!   cannot be captured by a `work` closure (which must be `Send`), put in a
//!   `Mutex`/`Arc` that crosses threads, or returned from `work`.
//! - To use its bytes on the threadpool, hand it to [`spawn_with_buffers`],
//!   which takes ownership of the `Vec<BufferRef>`. The worker thread only
//!   *borrows* them (`&mut [BufferRef]`) for the duration of `work`; no
//!   method reachable through `&`/`&mut BufferRef` calls Node-API, and a
//!   worker has no `BufferRef` of its own to swap in, so nothing can be
//!   moved out or dropped there. The `Vec` is dropped on the JS thread in
//!   the async-complete callback (after `complete` ran, before the promise
//!   is settled), whatever the outcome: success, error, panic or
//!   cancellation. If the work cannot even be queued, the `Vec` is dropped
//!   right away, still on the JS thread.
//! - A `BufferRef` dropped anywhere else (an early `?` return in a sync
//!   callback, or captured by a `complete` closure, which is only ever run
//!   and dropped on the JS thread) is released there too. So a `BufferRef`
//!   cannot leak (short of `mem::forget`) and cannot be released on the
//!   wrong thread. As a last line of defence `Drop` also compares a
//!   per-thread token and leaks rather than call Node-API from a foreign
//!   thread.
//!
//! While the work runs, JS must not touch the buffer (the usual contract of
//! native async APIs); detaching/transferring its ArrayBuffer meanwhile is
//! not supported.

use std::any::{Any, TypeId};
use std::ffi::{c_char, c_void, CStr};
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

use crate::napi_sys as sys;
pub use crate::napi_sys::{napi_env, napi_type_tag, napi_value};

/// `code` of the error thrown/rejected when Rust code panics.
pub const PANIC_CODE: &str = "WALCORE_PANIC";
/// `code` of errors produced by a failing Node-API call.
pub const NAPI_CODE: &str = "WALCORE_NAPI";
/// `code` of the rejection when async work is cancelled by Node.
pub const CANCELLED_CODE: &str = "WALCORE_CANCELLED";
/// `code` used by argument validation for a value of the wrong type.
pub const INVALID_ARG_TYPE_CODE: &str = "ERR_INVALID_ARG_TYPE";
/// `code` used by argument validation for a value out of range.
pub const OUT_OF_RANGE_CODE: &str = "ERR_OUT_OF_RANGE";
/// Most arguments a callback can read through [`CallArgs`].
pub const MAX_ARGS: usize = 12;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Which JS error class a [`JsError`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Error,
    TypeError,
    RangeError,
}

/// An error to be thrown into (or rejected to) JavaScript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsError {
    pub kind: ErrorKind,
    /// Becomes the `code` property of the JS error when `Some`.
    pub code: Option<String>,
    pub message: String,
}

pub type JsResult<T> = Result<T, JsError>;

impl JsError {
    /// A plain `Error` with a `code`.
    pub fn error(code: &str, msg: impl Into<String>) -> Self {
        JsError {
            kind: ErrorKind::Error,
            code: Some(code.to_string()),
            message: msg.into(),
        }
    }

    /// A `TypeError` without a code (see [`JsError::with_code`]).
    pub fn type_error(msg: impl Into<String>) -> Self {
        JsError {
            kind: ErrorKind::TypeError,
            code: None,
            message: msg.into(),
        }
    }

    /// A `RangeError` without a code (see [`JsError::with_code`]).
    pub fn range_error(msg: impl Into<String>) -> Self {
        JsError {
            kind: ErrorKind::RangeError,
            code: None,
            message: msg.into(),
        }
    }

    /// Sets (or replaces) the `code`.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    /// The error for a caught panic: `Error` with code `WALCORE_PANIC`.
    pub fn from_panic(payload: &(dyn Any + Send)) -> Self {
        let msg = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic payload".to_string()
        };
        JsError::error(PANIC_CODE, format!("walcore-node panicked: {msg}"))
    }
}

impl fmt::Display for JsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.kind {
            ErrorKind::Error => "Error",
            ErrorKind::TypeError => "TypeError",
            ErrorKind::RangeError => "RangeError",
        };
        match &self.code {
            Some(code) => write!(f, "{class} [{code}]: {}", self.message),
            None => write!(f, "{class}: {}", self.message),
        }
    }
}

impl std::error::Error for JsError {}

fn arg_type_error(name: &str, what: &str) -> JsError {
    JsError::type_error(format!("{name} must be {what}")).with_code(INVALID_ARG_TYPE_CODE)
}

fn arg_range_error(msg: String) -> JsError {
    JsError::range_error(msg).with_code(OUT_OF_RANGE_CODE)
}

// ---------------------------------------------------------------------------
// Env
// ---------------------------------------------------------------------------

/// The Node-API environment of the current call. Only valid on the JS thread
/// during the callback that received it (it is `!Send`).
#[derive(Clone, Copy)]
pub struct Env(pub napi_env);

/// Signature of functions exported with [`Env::define_function`].
pub type Callback = fn(&Env, &CallArgs) -> JsResult<napi_value>;

impl Env {
    /// Ok for `napi_ok`, else the error described by `napi_get_last_error_info`.
    /// Must be called right after the failing call (before any other).
    pub(crate) fn check(&self, status: sys::napi_status) -> JsResult<()> {
        if status == sys::napi_ok {
            Ok(())
        } else {
            Err(self.status_error(status))
        }
    }

    fn status_error(&self, status: sys::napi_status) -> JsError {
        let mut info: *const sys::napi_extended_error_info = ptr::null();
        // SAFETY: env is valid on this thread; info is an out-pointer.
        let detail = unsafe {
            if sys::napi_get_last_error_info(self.0, &mut info) == sys::napi_ok
                && !info.is_null()
                && !(*info).error_message.is_null()
            {
                CStr::from_ptr((*info).error_message)
                    .to_string_lossy()
                    .into_owned()
            } else {
                "unknown error".to_string()
            }
        };
        JsError::error(
            NAPI_CODE,
            format!("Node-API call failed: {detail} (napi_status {status})"),
        )
    }

    /// Whether a JS exception is pending (false if that cannot be told).
    pub fn is_exception_pending(&self) -> bool {
        let mut pending = false;
        // SAFETY: valid env, out-pointer.
        let status = unsafe { sys::napi_is_exception_pending(self.0, &mut pending) };
        status == sys::napi_ok && pending
    }

    /// Takes the pending exception, if any, clearing it.
    fn take_exception(&self) -> Option<napi_value> {
        if !self.is_exception_pending() {
            return None;
        }
        let mut value = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        let status = unsafe { sys::napi_get_and_clear_last_exception(self.0, &mut value) };
        (status == sys::napi_ok && !value.is_null()).then_some(value)
    }

    pub fn undefined(&self) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_get_undefined(self.0, &mut v) })?;
        Ok(v)
    }

    pub fn null(&self) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_get_null(self.0, &mut v) })?;
        Ok(v)
    }

    pub fn boolean(&self, b: bool) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_get_boolean(self.0, b, &mut v) })?;
        Ok(v)
    }

    pub fn number(&self, n: f64) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_create_double(self.0, n, &mut v) })?;
        Ok(v)
    }

    pub fn u32(&self, n: u32) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_create_uint32(self.0, n, &mut v) })?;
        Ok(v)
    }

    /// A JS number (exact for |n| <= 2^53).
    pub fn i64(&self, n: i64) -> JsResult<napi_value> {
        self.number(n as f64)
    }

    pub fn bigint(&self, n: u64) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_create_bigint_uint64(self.0, n, &mut v) })?;
        Ok(v)
    }

    pub fn string(&self, s: &str) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: pointer/length of a valid UTF-8 str (length is explicit, so
        // no NUL terminator is needed and interior NULs are kept).
        self.check(unsafe {
            sys::napi_create_string_utf8(self.0, s.as_ptr().cast::<c_char>(), s.len(), &mut v)
        })?;
        Ok(v)
    }

    pub fn object(&self) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_create_object(self.0, &mut v) })?;
        Ok(v)
    }

    /// `obj[key] = v`.
    pub fn set(&self, obj: napi_value, key: &str, v: napi_value) -> JsResult<()> {
        let k = self.string(key)?;
        // SAFETY: handles from this env.
        self.check(unsafe { sys::napi_set_property(self.0, obj, k, v) })
    }

    /// A JS array holding `items` in order.
    pub fn array(&self, items: &[napi_value]) -> JsResult<napi_value> {
        let mut arr = ptr::null_mut();
        // SAFETY: valid env, out-pointer.
        self.check(unsafe { sys::napi_create_array_with_length(self.0, items.len(), &mut arr) })?;
        for (i, item) in items.iter().enumerate() {
            let index = u32::try_from(i)
                .map_err(|_| JsError::range_error("array too long for a JS array"))?;
            // SAFETY: handles from this env.
            self.check(unsafe { sys::napi_set_element(self.0, arr, index, *item) })?;
        }
        Ok(arr)
    }

    /// A new Node `Buffer` holding a copy of `data`.
    pub fn buffer(&self, data: &[u8]) -> JsResult<napi_value> {
        let mut v = ptr::null_mut();
        let mut copy: *mut c_void = ptr::null_mut();
        // SAFETY: data is valid for data.len() bytes; out-pointers.
        self.check(unsafe {
            sys::napi_create_buffer_copy(
                self.0,
                data.len(),
                data.as_ptr().cast::<c_void>(),
                &mut copy,
                &mut v,
            )
        })?;
        Ok(v)
    }

    /// Wraps `value` in a JS external tagged with `tag`; the external owns
    /// one strong count of the `Arc`, dropped by its GC finalizer.
    /// Read it back with [`CallArgs::external`].
    ///
    /// Use one distinct `tag` per Rust type. (The stored value also records
    /// `TypeId::of::<T>()`, so even a reused tag cannot cause a wrong cast.)
    pub fn external<T: Send + Sync + 'static>(
        &self,
        value: Arc<T>,
        tag: &'static napi_type_tag,
    ) -> JsResult<napi_value> {
        let holder = Box::into_raw(Box::new(ExternalHolder {
            type_id: TypeId::of::<T>(),
            value,
        }));
        let mut v = ptr::null_mut();
        // SAFETY: holder is a valid heap pointer whose ownership passes to the
        // external (freed by finalize_external::<T>) if creation succeeds.
        let status = unsafe {
            sys::napi_create_external(
                self.0,
                holder.cast::<c_void>(),
                Some(finalize_external::<T>),
                ptr::null_mut(),
                &mut v,
            )
        };
        if status != sys::napi_ok {
            let err = self.status_error(status);
            // SAFETY: creation failed, so we still own holder.
            drop(unsafe { Box::from_raw(holder) });
            return Err(err);
        }
        // SAFETY: v is an external of this env; tag is 'static.
        self.check(unsafe { sys::napi_type_tag_object(self.0, v, tag) })?;
        Ok(v)
    }

    /// `exports[name] = function` that calls `f` (see the module docs for
    /// how errors and panics are turned into exceptions).
    pub fn define_function(&self, exports: napi_value, name: &str, f: Callback) -> JsResult<()> {
        let mut func = ptr::null_mut();
        // SAFETY: name ptr/len valid; the fn pointer is smuggled through the
        // data pointer and turned back into a `Callback` in `trampoline`.
        self.check(unsafe {
            sys::napi_create_function(
                self.0,
                name.as_ptr().cast::<c_char>(),
                name.len(),
                Some(trampoline),
                f as *const () as *mut c_void,
                &mut func,
            )
        })?;
        self.set(exports, name, func)
    }

    /// Creates the JS error for `e` (class from `e.kind`, `code` property
    /// when `e.code` is Some). Returns null if even that fails.
    pub fn create_error(&self, e: &JsError) -> napi_value {
        self.try_create_error(e).unwrap_or(ptr::null_mut())
    }

    fn try_create_error(&self, e: &JsError) -> JsResult<napi_value> {
        let code = match &e.code {
            Some(c) => self.string(c)?,
            None => ptr::null_mut(),
        };
        let msg = self.string(&e.message)?;
        let mut v = ptr::null_mut();
        // SAFETY: handles from this env (code may be null: no code).
        let status = unsafe {
            match e.kind {
                ErrorKind::Error => sys::napi_create_error(self.0, code, msg, &mut v),
                ErrorKind::TypeError => sys::napi_create_type_error(self.0, code, msg, &mut v),
                ErrorKind::RangeError => sys::napi_create_range_error(self.0, code, msg, &mut v),
            }
        };
        self.check(status)?;
        Ok(v)
    }

    /// Throws `e` as a JS exception, unless an exception is already pending
    /// (then that one is left to propagate).
    pub fn throw(&self, e: &JsError) {
        if self.is_exception_pending() {
            return;
        }
        let err = self.create_error(e);
        if !err.is_null() {
            // SAFETY: err is a handle from this env.
            unsafe {
                sys::napi_throw(self.0, err);
            }
        }
    }

    /// Throws the `WALCORE_PANIC` error for a caught panic, replacing any
    /// pending exception (the panic is the more important news).
    fn throw_panic(&self, payload: &(dyn Any + Send)) {
        let _ = self.take_exception();
        self.throw(&JsError::from_panic(payload));
    }
}

#[repr(C)]
struct ExternalHolder<T> {
    // Must stay the first field of a repr(C) struct: read without knowing T.
    type_id: TypeId,
    value: Arc<T>,
}

unsafe extern "C" fn finalize_external<T: 'static>(
    _env: napi_env,
    data: *mut c_void,
    _hint: *mut c_void,
) {
    if data.is_null() {
        return;
    }
    // A panic in T's Drop must not unwind into Node.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: data came from Box::into_raw in Env::external::<T>, and the
        // finalizer runs exactly once.
        drop(unsafe { Box::from_raw(data.cast::<ExternalHolder<T>>()) });
    }));
}

/// The C entry point of every function made by `define_function`.
unsafe extern "C" fn trampoline(raw_env: napi_env, info: sys::napi_callback_info) -> napi_value {
    let env = Env(raw_env);
    let outcome = catch_unwind(AssertUnwindSafe(|| -> JsResult<napi_value> {
        let mut args = CallArgs {
            env,
            argc: MAX_ARGS,
            argv: [ptr::null_mut(); MAX_ARGS],
            this: ptr::null_mut(),
        };
        let mut data: *mut c_void = ptr::null_mut();
        // SAFETY: argv has room for argc (= MAX_ARGS) values; Node fills
        // missing ones with undefined and writes the real count to argc.
        env.check(unsafe {
            sys::napi_get_cb_info(
                raw_env,
                info,
                &mut args.argc,
                args.argv.as_mut_ptr(),
                &mut args.this,
                &mut data,
            )
        })?;
        if data.is_null() {
            return Err(JsError::error(
                NAPI_CODE,
                "native function without a callback",
            ));
        }
        // SAFETY: data was produced from a `Callback` in define_function.
        let f: Callback = unsafe { std::mem::transmute::<*mut c_void, Callback>(data) };
        f(&env, &args)
    }));
    match outcome {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            env.throw(&e);
            ptr::null_mut()
        }
        Err(payload) => {
            env.throw_panic(&*payload);
            ptr::null_mut()
        }
    }
}

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

/// The arguments of a call (at most [`MAX_ARGS`] are readable; a missing
/// argument reads as `undefined`). `name` parameters are used in messages.
pub struct CallArgs {
    env: Env,
    argc: usize,
    argv: [napi_value; MAX_ARGS],
    this: napi_value,
}

impl CallArgs {
    /// Number of readable arguments passed (capped at [`MAX_ARGS`]).
    pub fn len(&self) -> usize {
        self.argc.min(MAX_ARGS)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The environment of this call.
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// `this` of the call.
    pub fn this(&self) -> napi_value {
        self.this
    }

    /// The raw argument `i`, or None when it was not passed.
    pub fn get(&self, i: usize) -> Option<napi_value> {
        (i < self.len()).then(|| self.argv[i])
    }

    /// The properties `names` of the options object in argument `i`, read as
    /// if they were the arguments 0..names.len() of a call: every reader
    /// below applies to them, and its errors name the property. An empty
    /// name leaves its position undefined (for a handle passed before the
    /// object).
    pub fn object(&self, i: usize, name: &str, names: &[&str]) -> JsResult<CallArgs> {
        assert!(names.len() <= MAX_ARGS, "at most {MAX_ARGS} options");
        let o = self.expect(i, name, sys::napi_object, "an object")?;
        let mut argv = [ptr::null_mut(); MAX_ARGS];
        for (k, n) in names.iter().enumerate() {
            let key = std::ffi::CString::new(*n).expect("option names have no NUL");
            // SAFETY: o is an object handle of this call; key is NUL-terminated; out-pointer.
            self.env.check(unsafe { sys::napi_get_named_property(self.env.0, o, key.as_ptr(), &mut argv[k]) })?;
        }
        Ok(CallArgs { env: self.env, argc: names.len(), argv, this: self.this })
    }

    /// `typeof` of argument `i` (napi_undefined when missing).
    pub fn type_of(&self, i: usize) -> JsResult<sys::napi_valuetype> {
        let Some(v) = self.get(i) else {
            return Ok(sys::napi_undefined);
        };
        let mut t = sys::napi_undefined;
        // SAFETY: v is a handle of this call.
        self.env
            .check(unsafe { sys::napi_typeof(self.env.0, v, &mut t) })?;
        Ok(t)
    }

    /// True when argument `i` is `undefined` or missing.
    pub fn is_undefined(&self, i: usize) -> bool {
        matches!(self.type_of(i), Ok(sys::napi_undefined))
    }

    fn is_nullish(&self, i: usize) -> JsResult<bool> {
        Ok(matches!(
            self.type_of(i)?,
            sys::napi_undefined | sys::napi_null
        ))
    }

    /// Argument `i` when its typeof is `want`, else TypeError "<name> must be <what>".
    fn expect(
        &self,
        i: usize,
        name: &str,
        want: sys::napi_valuetype,
        what: &str,
    ) -> JsResult<napi_value> {
        match self.get(i) {
            Some(v) if self.type_of(i)? == want => Ok(v),
            _ => Err(arg_type_error(name, what)),
        }
    }

    /// A bigint in 0..=2^64-1.
    pub fn bigint_u64(&self, i: usize, name: &str) -> JsResult<u64> {
        let v = self.expect(i, name, sys::napi_bigint, "a bigint")?;
        let mut n = 0u64;
        let mut lossless = false;
        // SAFETY: v is a bigint handle; out-pointers.
        self.env.check(unsafe {
            sys::napi_get_value_bigint_uint64(self.env.0, v, &mut n, &mut lossless)
        })?;
        if !lossless {
            return Err(arg_range_error(format!(
                "{name} is out of range (0..2^64-1)"
            )));
        }
        Ok(n)
    }

    /// Like [`CallArgs::bigint_u64`]; `undefined`/`null`/missing give None.
    pub fn opt_bigint_u64(&self, i: usize, name: &str) -> JsResult<Option<u64>> {
        if self.is_nullish(i)? {
            return Ok(None);
        }
        self.bigint_u64(i, name).map(Some)
    }

    /// A number that is an integer in 0..=u32::MAX. TypeError if not a
    /// number, RangeError if not such an integer.
    pub fn u32(&self, i: usize, name: &str) -> JsResult<u32> {
        let v = self.expect(i, name, sys::napi_number, "a number")?;
        let mut d = 0f64;
        // SAFETY: v is a number handle; out-pointer.
        self.env
            .check(unsafe { sys::napi_get_value_double(self.env.0, v, &mut d) })?;
        if !d.is_finite() || d.fract() != 0.0 {
            return Err(arg_range_error(format!("{name} must be an integer")));
        }
        if !(0.0..=f64::from(u32::MAX)).contains(&d) {
            return Err(arg_range_error(format!(
                "{name} is out of range (0..2^32-1)"
            )));
        }
        Ok(d as u32)
    }

    /// Like [`CallArgs::u32`]; `undefined`/`null`/missing give None.
    pub fn opt_u32(&self, i: usize, name: &str) -> JsResult<Option<u32>> {
        if self.is_nullish(i)? {
            return Ok(None);
        }
        self.u32(i, name).map(Some)
    }

    pub fn bool(&self, i: usize, name: &str) -> JsResult<bool> {
        let v = self.expect(i, name, sys::napi_boolean, "a boolean")?;
        let mut b = false;
        // SAFETY: v is a boolean handle; out-pointer.
        self.env
            .check(unsafe { sys::napi_get_value_bool(self.env.0, v, &mut b) })?;
        Ok(b)
    }

    /// Like [`CallArgs::bool`]; `undefined`/`null`/missing give None.
    pub fn opt_bool(&self, i: usize, name: &str) -> JsResult<Option<bool>> {
        if self.is_nullish(i)? {
            return Ok(None);
        }
        self.bool(i, name).map(Some)
    }

    pub fn string(&self, i: usize, name: &str) -> JsResult<String> {
        let v = self.expect(i, name, sys::napi_string, "a string")?;
        let mut len = 0usize;
        // SAFETY: null buffer asks for the UTF-8 length.
        self.env.check(unsafe {
            sys::napi_get_value_string_utf8(self.env.0, v, ptr::null_mut(), 0, &mut len)
        })?;
        let mut buf = vec![0u8; len + 1];
        let mut written = 0usize;
        // SAFETY: buf has len + 1 bytes (room for the NUL Node writes).
        self.env.check(unsafe {
            sys::napi_get_value_string_utf8(
                self.env.0,
                v,
                buf.as_mut_ptr().cast::<c_char>(),
                buf.len(),
                &mut written,
            )
        })?;
        buf.truncate(written.min(len));
        Ok(String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Like [`CallArgs::string`]; `undefined`/`null`/missing give None.
    pub fn opt_string(&self, i: usize, name: &str) -> JsResult<Option<String>> {
        if self.is_nullish(i)? {
            return Ok(None);
        }
        self.string(i, name).map(Some)
    }

    /// (handle, data, len) of a Buffer/Uint8Array argument.
    fn u8_view(&self, i: usize, name: &str) -> JsResult<(napi_value, *mut u8, usize)> {
        const WHAT: &str = "a Buffer or Uint8Array";
        let v = self.get(i).ok_or_else(|| arg_type_error(name, WHAT))?;
        let mut is_typed = false;
        // SAFETY: v is a handle of this call; out-pointer.
        self.env
            .check(unsafe { sys::napi_is_typedarray(self.env.0, v, &mut is_typed) })?;
        if !is_typed {
            return Err(arg_type_error(name, WHAT));
        }
        let mut kind = sys::napi_int8_array;
        let mut len = 0usize;
        let mut data: *mut c_void = ptr::null_mut();
        // SAFETY: v is a typed array; unused outputs are null (allowed).
        // `data` is already adjusted by the view's byte offset.
        self.env.check(unsafe {
            sys::napi_get_typedarray_info(
                self.env.0,
                v,
                &mut kind,
                &mut len,
                &mut data,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        })?;
        if kind != sys::napi_uint8_array {
            return Err(arg_type_error(name, WHAT));
        }
        Ok((v, data.cast::<u8>(), len))
    }

    /// The bytes of a Buffer/Uint8Array argument, for use during this
    /// synchronous call only. Calling it twice for the same argument (or
    /// passing the same buffer twice from JS) yields aliasing slices:
    /// don't hold two at once.
    #[allow(clippy::mut_from_ref)]
    pub fn buffer(&self, i: usize, name: &str) -> JsResult<&mut [u8]> {
        let (_, data, len) = self.u8_view(i, name)?;
        // SAFETY: the argument keeps the memory alive for this call, which is
        // no longer than the borrow of self; JS cannot run concurrently.
        Ok(unsafe { bytes_mut(data, len) })
    }

    /// A Buffer/Uint8Array argument kept alive beyond this call (a strong
    /// reference), for use by async work; see [`BufferRef`].
    pub fn buffer_ref(&self, i: usize, name: &str) -> JsResult<BufferRef> {
        let (v, data, len) = self.u8_view(i, name)?;
        let mut reference = ptr::null_mut();
        // SAFETY: v is an object handle; out-pointer.
        self.env
            .check(unsafe { sys::napi_create_reference(self.env.0, v, 1, &mut reference) })?;
        Ok(BufferRef {
            env: self.env.0,
            reference,
            data,
            len,
            owner: thread_token(),
            _not_send: PhantomData,
        })
    }

    /// An `Arc<T>` out of an external made by [`Env::external`] with this
    /// exact `tag` and `T`; TypeError otherwise.
    pub fn external<T: Send + Sync + 'static>(
        &self,
        i: usize,
        name: &str,
        tag: &'static napi_type_tag,
    ) -> JsResult<Arc<T>> {
        const WHAT: &str = "a handle of the expected kind";
        let v = self.expect(i, name, sys::napi_external, WHAT)?;
        let mut tagged = false;
        // SAFETY: v is an external handle; tag is 'static; out-pointer.
        self.env
            .check(unsafe { sys::napi_check_object_type_tag(self.env.0, v, tag, &mut tagged) })?;
        if !tagged {
            return Err(arg_type_error(name, WHAT));
        }
        let mut data: *mut c_void = ptr::null_mut();
        // SAFETY: v is an external handle; out-pointer.
        self.env
            .check(unsafe { sys::napi_get_value_external(self.env.0, v, &mut data) })?;
        if data.is_null() {
            return Err(arg_type_error(name, WHAT));
        }
        // SAFETY: our type tag is only ever put on externals created by
        // Env::external, whose data is an ExternalHolder<_> (repr(C), TypeId
        // first), alive while the external (an argument of this call) is.
        unsafe {
            if *data.cast::<TypeId>() != TypeId::of::<T>() {
                return Err(arg_type_error(name, WHAT));
            }
            let holder = &*data.cast::<ExternalHolder<T>>();
            Ok(Arc::clone(&holder.value))
        }
    }
}

/// # Safety
/// `data` must be valid for reads and writes of `len` bytes (or len == 0).
unsafe fn bytes_mut<'a>(data: *mut u8, len: usize) -> &'a mut [u8] {
    if len == 0 || data.is_null() {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(data, len)
    }
}

// ---------------------------------------------------------------------------
// BufferRef
// ---------------------------------------------------------------------------

thread_local! {
    // Const-initialised and without Drop, so it registers no TLS destructor.
    static THREAD_MARK: u8 = const { 0 };
}

/// A token unique among live threads: the address of a thread-local byte.
///
/// Not `std::thread::current().id()`: that registers a pthread-key
/// destructor pointing into this library, and Node unloads the addon when a
/// worker_threads Worker that loaded it terminates, before that thread's
/// destructors run, so the thread exit would jump into unmapped code
/// (SIGSEGV). Code that may run on a JS thread must not register TLS
/// destructors.
fn thread_token() -> usize {
    THREAD_MARK.with(|m| m as *const u8 as usize)
}

/// A JS Buffer/Uint8Array kept alive by a strong reference, whose bytes can
/// be used on the threadpool through [`spawn_with_buffers`]. Not `Send`:
/// see the module docs for why this makes release on the JS thread certain.
/// Dropping it (always on the JS thread) deletes the reference.
pub struct BufferRef {
    env: napi_env,
    reference: sys::napi_ref,
    data: *mut u8,
    len: usize,
    owner: usize,
    // Raw pointers already make this !Send + !Sync; spelled out because the
    // release guarantee depends on it.
    _not_send: PhantomData<*mut ()>,
}

// Invariant: no method reachable through `&BufferRef` / `&mut BufferRef` may
// call Node-API (worker threads get `&mut [BufferRef]`).
impl BufferRef {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the reference keeps the buffer (and its bytes) alive.
        unsafe { bytes_mut(self.data, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; &mut self gives exclusive access on our side.
        unsafe { bytes_mut(self.data, self.len) }
    }
}

impl Drop for BufferRef {
    fn drop(&mut self) {
        // Always true without unsafe code (BufferRef is !Send). If it were
        // ever false, leaking is the only safe choice.
        if thread_token() == self.owner {
            // SAFETY: on the JS thread of `env`; the reference is ours.
            unsafe {
                sys::napi_delete_reference(self.env, self.reference);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Async work returning a Promise
// ---------------------------------------------------------------------------

struct Task<T, W, C> {
    deferred: sys::napi_deferred,
    work: sys::napi_async_work,
    run: Option<W>,
    bufs: Vec<BufferRef>,
    outcome: Option<JsResult<T>>,
    complete: Option<C>,
}

/// Runs `work` on the libuv threadpool and returns a Promise. `complete`
/// runs on the JS thread with `work`'s value and its result resolves the
/// promise. Any `JsError`, panic (code `WALCORE_PANIC`) or cancellation
/// (code `WALCORE_CANCELLED`) rejects it instead.
pub fn spawn<T, W, C>(env: &Env, work: W, complete: C) -> JsResult<napi_value>
where
    T: Send + 'static,
    W: FnOnce() -> JsResult<T> + Send + 'static,
    C: FnOnce(&Env, T) -> JsResult<napi_value> + 'static,
{
    spawn_with_buffers(env, Vec::new(), move |_: &mut [BufferRef]| work(), complete)
}

/// [`spawn`] with JS buffers: takes ownership of `bufs`, lends them to
/// `work` on the worker thread as `&mut [BufferRef]` (same order), and
/// releases them on the JS thread once the work has completed, before the
/// promise settles.
///
/// Returns Err only if the promise itself cannot be created; every later
/// failure rejects the returned promise.
pub fn spawn_with_buffers<T, W, C>(
    env: &Env,
    bufs: Vec<BufferRef>,
    work: W,
    complete: C,
) -> JsResult<napi_value>
where
    T: Send + 'static,
    W: FnOnce(&mut [BufferRef]) -> JsResult<T> + Send + 'static,
    C: FnOnce(&Env, T) -> JsResult<napi_value> + 'static,
{
    let name = env.string("walcore")?;
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: valid env, out-pointers.
    env.check(unsafe { sys::napi_create_promise(env.0, &mut deferred, &mut promise) })?;

    let task = Box::into_raw(Box::new(Task::<T, W, C> {
        deferred,
        work: ptr::null_mut(),
        run: Some(work),
        bufs,
        outcome: None,
        complete: Some(complete),
    }));
    let mut async_work = ptr::null_mut();
    // SAFETY: task stays valid until complete_task frees it; both callbacks
    // are instantiated for the same <T, W, C>.
    let status = unsafe {
        sys::napi_create_async_work(
            env.0,
            ptr::null_mut(),
            name,
            Some(execute_task::<T, W, C>),
            Some(complete_task::<T, W, C>),
            task.cast::<c_void>(),
            &mut async_work,
        )
    };
    if status != sys::napi_ok {
        let err = env.status_error(status);
        // SAFETY: nothing else owns the task yet; dropped on the JS thread.
        drop(unsafe { Box::from_raw(task) });
        settle(env, deferred, Err(err));
        return Ok(promise);
    }
    // SAFETY: the worker does not run before napi_queue_async_work.
    unsafe { (*task).work = async_work };
    // SAFETY: async_work was just created.
    let status = unsafe { sys::napi_queue_async_work(env.0, async_work) };
    if status != sys::napi_ok {
        let err = env.status_error(status);
        // SAFETY: not queued, so its callbacks never run; we own task again.
        unsafe {
            sys::napi_delete_async_work(env.0, async_work);
            drop(Box::from_raw(task));
        }
        settle(env, deferred, Err(err));
    }
    Ok(promise)
}

/// Worker thread: must not call Node-API.
unsafe extern "C" fn execute_task<T, W, C>(_env: napi_env, data: *mut c_void)
where
    T: Send + 'static,
    W: FnOnce(&mut [BufferRef]) -> JsResult<T> + Send + 'static,
    C: FnOnce(&Env, T) -> JsResult<napi_value> + 'static,
{
    // SAFETY: data is the Task; the JS thread does not touch it until the
    // complete callback, which libuv orders after this returns.
    let task = unsafe { &mut *data.cast::<Task<T, W, C>>() };
    let outcome = match task.run.take() {
        Some(run) => {
            let bufs = &mut task.bufs[..];
            match catch_unwind(AssertUnwindSafe(move || run(bufs))) {
                Ok(r) => r,
                Err(payload) => Err(JsError::from_panic(&*payload)),
            }
        }
        None => Err(JsError::error(PANIC_CODE, "async work ran twice")),
    };
    task.outcome = Some(outcome);
}

/// JS thread, after `execute_task` finished (or the work was cancelled).
unsafe extern "C" fn complete_task<T, W, C>(
    raw_env: napi_env,
    status: sys::napi_status,
    data: *mut c_void,
) where
    T: Send + 'static,
    W: FnOnce(&mut [BufferRef]) -> JsResult<T> + Send + 'static,
    C: FnOnce(&Env, T) -> JsResult<napi_value> + 'static,
{
    let env = Env(raw_env);
    // SAFETY: data is the Task leaked by spawn_with_buffers; this callback
    // runs exactly once and takes it back.
    let mut task = unsafe { Box::from_raw(data.cast::<Task<T, W, C>>()) };
    let deferred = task.deferred;
    // SAFETY: the work has finished; deleting it here is the documented way.
    unsafe {
        sys::napi_delete_async_work(raw_env, task.work);
    }

    let mut result = match catch_unwind(AssertUnwindSafe(|| -> JsResult<napi_value> {
        let outcome = match status {
            sys::napi_ok => task
                .outcome
                .take()
                .unwrap_or_else(|| Err(JsError::error(NAPI_CODE, "async work produced no result"))),
            sys::napi_cancelled => Err(JsError::error(CANCELLED_CODE, "async work was cancelled")),
            other => Err(JsError::error(
                NAPI_CODE,
                format!("async work failed (napi_status {other})"),
            )),
        };
        let value = outcome?;
        let complete = task
            .complete
            .take()
            .ok_or_else(|| JsError::error(NAPI_CODE, "async completion ran twice"))?;
        complete(&env, value)
    })) {
        Ok(r) => r,
        Err(payload) => Err(JsError::from_panic(&*payload)),
    };

    // Release the BufferRefs (and drop the closures) here, on the JS thread,
    // before JS can observe the settled promise.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(task))) {
        if result.is_ok() {
            result = Err(JsError::from_panic(&*payload));
        }
    }
    settle(&env, deferred, result);
}

/// Resolves or rejects `deferred` exactly once. A pending JS exception wins
/// over `result` (it is cleared and becomes the rejection), so nothing is
/// left pending to surface as an uncaught exception.
fn settle(env: &Env, deferred: sys::napi_deferred, result: JsResult<napi_value>) {
    let pending = env.take_exception();
    // SAFETY: deferred came from napi_create_promise and is settled once.
    unsafe {
        match (pending, result) {
            (Some(exc), _) => {
                sys::napi_reject_deferred(env.0, deferred, exc);
            }
            (None, Ok(v)) => {
                let v = if v.is_null() {
                    env.undefined().unwrap_or(v)
                } else {
                    v
                };
                // No retry on failure: Node frees the deferred once it got
                // past its argument checks, even when resolving failed.
                sys::napi_resolve_deferred(env.0, deferred, v);
            }
            (None, Err(e)) => {
                let mut rejection = env.create_error(&e);
                if rejection.is_null() {
                    rejection = env.undefined().unwrap_or(rejection);
                }
                sys::napi_reject_deferred(env.0, deferred, rejection);
            }
        }
    }
    // Never leave an exception pending in an async completion.
    let _ = env.take_exception();
}

// ---------------------------------------------------------------------------
// Calls into JS from another thread
// ---------------------------------------------------------------------------

type BuildArg = Box<dyn Fn(&Env) -> JsResult<napi_value> + Send + 'static>;

/// A JS function that any thread may ask to have called on the JS thread
/// (a `napi_threadsafe_function`). Each call runs `build` there to make the
/// function's one argument — so the argument is read from shared state when
/// the JS thread gets to it, not when the call was asked for. While a
/// `ThreadsafeCall` exists it keeps the event loop alive; dropping it (on
/// any thread) releases the function once the calls already asked for ran.
///
/// The JS function must not throw: an exception there is reported by Node
/// as uncaught.
pub struct ThreadsafeCall {
    tsfn: sys::napi_threadsafe_function,
}

// SAFETY: Node-API documents napi_call_threadsafe_function and
// napi_release_threadsafe_function as callable from any thread.
unsafe impl Send for ThreadsafeCall {}
unsafe impl Sync for ThreadsafeCall {}

impl ThreadsafeCall {
    pub fn new<F>(env: &Env, func: napi_value, name: &str, build: F) -> JsResult<ThreadsafeCall>
    where
        F: Fn(&Env) -> JsResult<napi_value> + Send + 'static,
    {
        let name = env.string(name)?;
        let ctx: *mut BuildArg = Box::into_raw(Box::new(Box::new(build)));
        let mut tsfn = ptr::null_mut();
        // SAFETY: func is a JS value of this env; ctx is owned by the
        // threadsafe function from here on and freed by finalize_build_arg.
        let status = unsafe {
            sys::napi_create_threadsafe_function(
                env.0,
                func,
                ptr::null_mut(),
                name,
                0,
                1,
                ctx.cast::<c_void>(),
                Some(finalize_build_arg),
                ctx.cast::<c_void>(),
                Some(call_js_with_built_arg),
                &mut tsfn,
            )
        };
        if status != sys::napi_ok {
            let err = env.status_error(status);
            // SAFETY: creation failed, so ctx is still ours.
            drop(unsafe { Box::from_raw(ctx) });
            return Err(err);
        }
        Ok(ThreadsafeCall { tsfn })
    }

    /// Asks for a call (never blocks); false if Node no longer takes calls
    /// (the environment is shutting down).
    pub fn call(&self) -> bool {
        // SAFETY: tsfn is alive until this is dropped.
        unsafe {
            sys::napi_call_threadsafe_function(
                self.tsfn,
                ptr::null_mut(),
                sys::napi_tsfn_nonblocking,
            ) == sys::napi_ok
        }
    }
}

impl Drop for ThreadsafeCall {
    fn drop(&mut self) {
        // SAFETY: this thread's one acquisition, released once.
        unsafe {
            sys::napi_release_threadsafe_function(self.tsfn, sys::napi_tsfn_release);
        }
    }
}

unsafe extern "C" fn call_js_with_built_arg(
    raw_env: napi_env,
    js_cb: napi_value,
    context: *mut c_void,
    _data: *mut c_void,
) {
    // A null env: the function is being torn down with calls still queued.
    if raw_env.is_null() || js_cb.is_null() {
        return;
    }
    let env = Env(raw_env);
    // SAFETY: context is the BuildArg, alive until finalize_build_arg.
    let build = unsafe { &*context.cast::<BuildArg>() };
    let arg = match catch_unwind(AssertUnwindSafe(|| build(&env))) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => env.create_error(&e),
        Err(payload) => env.create_error(&JsError::from_panic(&*payload)),
    };
    let (Ok(recv), false) = (env.undefined(), arg.is_null()) else {
        return;
    };
    let mut result = ptr::null_mut();
    // SAFETY: handles of this env, one argument.
    unsafe {
        sys::napi_call_function(raw_env, recv, js_cb, 1, &arg, &mut result);
    }
}

unsafe extern "C" fn finalize_build_arg(_env: napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: data is the BuildArg leaked in ThreadsafeCall::new; finalized once.
    drop(unsafe { Box::from_raw(data.cast::<BuildArg>()) });
}

// ---------------------------------------------------------------------------
// Work on a thread of its own, returning a Promise
// ---------------------------------------------------------------------------

type OwnJob = Box<dyn FnOnce() + Send + 'static>;
/// What runs on the JS thread once an [`OwnThread`] job is done: builds the value and settles its promise.
type OwnCompletion = Box<dyn FnOnce(&Env) + Send + 'static>;

/// A raw Node-API handle carried to another thread and back; only ever used on the JS thread.
#[derive(Clone, Copy)]
struct JsThreadOnly<P>(P);
// SAFETY: the wrapped handle is dereferenced only by Node-API calls on the JS thread.
unsafe impl<P> Send for JsThreadOnly<P> {}

/// The threadsafe function through which [`OwnThread`]s hand completions back
/// to one environment's JS thread: one per environment, created on first
/// use and kept until the environment is torn down. Node deletes a
/// threadsafe function at teardown whoever still holds it, so it is never
/// released by us; a cleanup hook, which runs before Node's own for the
/// function (hooks run in reverse order of registration), marks it gone
/// under the lock every `post` takes, so no thread calls it afterwards.
struct CompletionQueue {
    tsfn: sys::napi_threadsafe_function,
    gone: std::sync::Mutex<bool>,
}
// SAFETY: Node-API documents napi_call_threadsafe_function as callable from
// any thread; `gone` stops every call before Node deletes the function.
unsafe impl Send for CompletionQueue {}
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// Queues `done` for the JS thread; false (and `done` dropped here) once the environment is going.
    fn post(&self, done: OwnCompletion) -> bool {
        let gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        if *gone {
            return false;
        }
        let data = Box::into_raw(Box::new(done));
        // SAFETY: not gone, so the function exists (the hook waits for this lock); data is handed over on success.
        let ok = unsafe { sys::napi_call_threadsafe_function(self.tsfn, data.cast::<c_void>(), sys::napi_tsfn_nonblocking) == sys::napi_ok };
        if !ok {
            // SAFETY: not taken by Node-API, still ours.
            drop(unsafe { Box::from_raw(data) });
        }
        ok
    }
}

/// Each environment's queue (keyed by its napi_env), until its teardown.
static QUEUES: std::sync::Mutex<Vec<(usize, Arc<CompletionQueue>)>> = std::sync::Mutex::new(Vec::new());

fn completion_queue(env: &Env) -> JsResult<Arc<CompletionQueue>> {
    let mut all = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, q)) = all.iter().find(|(e, _)| *e == env.0 as usize) {
        return Ok(q.clone());
    }
    let resource = env.string("walkeeper-completions")?;
    let mut tsfn = ptr::null_mut();
    // SAFETY: no JS function (run_completion does the work); out-pointer.
    env.check(unsafe {
        sys::napi_create_threadsafe_function(env.0, ptr::null_mut(), ptr::null_mut(), resource, 0, 1, ptr::null_mut(), None, ptr::null_mut(), Some(run_completion), &mut tsfn)
    })?;
    // SAFETY: created just now on this (the JS) thread. Pending work keeps the loop alive by other means
    // (the sockets it serves); an idle queue must not.
    env.check(unsafe { sys::napi_unref_threadsafe_function(env.0, tsfn) })?;
    // SAFETY: the hook gets the env's address as a plain number; registered after the function, so it runs first.
    env.check(unsafe { sys::napi_add_env_cleanup_hook(env.0, Some(completion_queue_gone), env.0.cast::<c_void>()) })?;
    let q = Arc::new(CompletionQueue { tsfn, gone: std::sync::Mutex::new(false) });
    all.push((env.0 as usize, q.clone()));
    Ok(q)
}

unsafe extern "C" fn completion_queue_gone(arg: *mut c_void) {
    let mut all = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = all.iter().position(|(e, _)| *e == arg as usize) {
        let (_, q) = all.swap_remove(i);
        *q.gone.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

unsafe extern "C" fn run_completion(raw_env: napi_env, _js_cb: napi_value, _context: *mut c_void, data: *mut c_void) {
    // SAFETY: data is an OwnCompletion boxed by CompletionQueue::post, taken back once.
    let done = unsafe { Box::from_raw(data.cast::<OwnCompletion>()) };
    // A null env: Node is tearing the queue down; the promise is left unsettled with it.
    if raw_env.is_null() {
        return;
    }
    done(&Env(raw_env));
}

/// A worker thread of its own, for work that must neither wait behind
/// libuv's four shared threads nor hold one of them: a send pump per client
/// catching up, as PostgreSQL has a walsender per client. Jobs given to
/// [`spawn_on`] run in order; each completion runs on the JS thread and
/// settles the job's promise. [`OwnThread::end`] (or dropping it) lets the
/// thread finish its queue and exit. It does not keep Node's event loop
/// alive by itself.
pub struct OwnThread {
    jobs: std::sync::Mutex<Option<std::sync::mpsc::Sender<OwnJob>>>,
    queue: Arc<CompletionQueue>,
}

impl OwnThread {
    pub fn new(env: &Env, name: &str) -> JsResult<OwnThread> {
        let queue = completion_queue(env)?;
        let (tx, rx) = std::sync::mpsc::channel::<OwnJob>();
        std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(512 * 1024)
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(|e| JsError::error(NAPI_CODE, format!("cannot start a {name} thread: {e}")))?;
        Ok(OwnThread { jobs: std::sync::Mutex::new(Some(tx)), queue })
    }

    /// The thread finishes what it was given, then exits; later jobs are refused.
    pub fn end(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// [`spawn`], on `thread` instead of the thread pool (`complete` must be Send:
/// it travels with the job).
pub fn spawn_on<T, W, C>(env: &Env, thread: &OwnThread, work: W, complete: C) -> JsResult<napi_value>
where
    T: Send + 'static,
    W: FnOnce() -> JsResult<T> + Send + 'static,
    C: FnOnce(&Env, T) -> JsResult<napi_value> + Send + 'static,
{
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: valid env, out-pointers.
    env.check(unsafe { sys::napi_create_promise(env.0, &mut deferred, &mut promise) })?;
    let d = JsThreadOnly(deferred);
    let queue = thread.queue.clone();
    let job: OwnJob = Box::new(move || {
        let outcome = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| Err(JsError::from_panic(&*payload)));
        queue.post(Box::new(move |env: &Env| {
            let d = d;
            let result = catch_unwind(AssertUnwindSafe(|| outcome.and_then(|v| complete(env, v)))).unwrap_or_else(|payload| Err(JsError::from_panic(&*payload)));
            settle(env, d.0, result);
        }));
    });
    let sent = match thread.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(tx) => tx.send(job).is_ok(),
        None => false,
    };
    if !sent {
        settle(env, deferred, Err(JsError::error(NAPI_CODE, "the worker thread has ended")));
    }
    Ok(promise)
}
