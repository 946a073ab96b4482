//! The functions JavaScript calls (typed in `ts/native.ts`).
//!
//! Only what TypeScript needs: a store handle and its operations, the
//! end-of-WAL scan, the control file. Anything that can wait on a disk —
//! open, append, flush, truncate, remove, reads, the scan, the control file —
//! runs on the libuv thread pool and returns a Promise. The synchronous calls
//! touch only memory, except `storeFrameNoWait`, which reads with RWF_NOWAIT
//! and so never waits for the disk: it returns -1 instead, and the caller
//! uses `storeFrame`.

use std::path::PathBuf;
use std::sync::Arc;

use walcore::scan::{find_end_of_wal, ScanOptions, StartKind};
use walcore::source::DirSource;
use walcore::store::Store;
use walcore::xlogdata::{self, FrameRequest, DEFAULT_MAX_SEND};
use walcore::{control, crc32c, Lsn};

use crate::napi::{napi_type_tag, napi_value, spawn, spawn_with_buffers, BufferRef, CallArgs, Env, JsError, JsResult};

/// Tag of receive pump handles.
static PUMP_TAG: napi_type_tag = napi_type_tag { lower: 0x7761_6c6b_6565_7065, upper: 0x7270_756d_7000_0001 };
/// Tag of ingest pump handles (a receive pump on its own thread, answering for itself).
static INGEST_PUMP_TAG: napi_type_tag = napi_type_tag { lower: 0x7761_6c6b_6565_7065, upper: 0x6970_756d_7000_0001 };
/// Tag of send pump handles.
static SEND_PUMP_TAG: napi_type_tag = napi_type_tag { lower: 0x7761_6c6b_6565_7065, upper: 0x7370_756d_7000_0001 };

/// Tag of store handles, so that no other external can be passed as one.
static STORE_TAG: napi_type_tag = napi_type_tag { lower: 0x7761_6c6b_6565_7065, upper: 0x7273_746f_7265_0001 };

fn range_error(msg: impl Into<String>) -> JsError {
    JsError::range_error(msg).with_code(crate::napi::OUT_OF_RANGE_CODE)
}

/// A constructor's refusal of its arguments is a RangeError, as the argument readers' are; anything else keeps its code.
fn arg_err(e: walcore::Error) -> JsError {
    match e.code {
        walcore::error::ErrorCode::InvalidArgument | walcore::error::ErrorCode::UnsupportedVersion => range_error(e.message),
        _ => js_err(e),
    }
}

fn js_err(e: walcore::Error) -> JsError {
    JsError::error(e.code.as_str(), e.message)
}

pub fn register(env: &Env, exports: napi_value) -> JsResult<()> {
    let fns: [(&str, crate::napi::Callback); 34] = [
        ("zstdCompressFile", zstd_compress_file),
        ("zstdCompress", zstd_compress),
        ("zstdDecompress", zstd_decompress),
        ("segmentWrite", segment_write),
        ("version", version),
        ("crc32cImplementation", crc32c_implementation),
        ("findEndOfWal", find_end),
        ("controlRead", control_read),
        ("controlWrite", control_write),
        ("storeOpen", store_open),
        ("storeState", store_state),
        ("storeSetTimeline", store_set_timeline),
        ("storeList", store_list),
        ("storeAppend", store_append),
        ("storeFlush", store_flush),
        ("storeAppendFlush", store_append_flush),
        ("storeTruncate", store_truncate),
        ("storeRemoveBelow", store_remove_below),
        ("storeRead", store_read),
        ("storeFrameNoWait", store_frame_nowait),
        ("storeFrame", store_frame),
        ("storePutHistory", store_put_history),
        ("storeGetHistory", store_get_history),
        ("pumpOpen", pump_open),
        ("pumpRun", pump_run),
        ("pumpStop", pump_stop),
        ("pumpClose", pump_close),
        ("ingestPumpStart", ingest_pump_start),
        ("ingestPumpSend", ingest_pump_send),
        ("ingestPumpStop", ingest_pump_stop),
        ("sendPumpOpen", send_pump_open),
        ("sendPumpRun", send_pump_run),
        ("sendPumpStop", send_pump_stop),
        ("sendPumpClose", send_pump_close),
    ];
    for (name, f) in fns {
        env.define_function(exports, name, f)?;
    }
    // Lets the test suite prove that a Rust panic becomes a JS exception (or
    // a rejected promise) and never aborts the process. Present only when
    // the process was started with WALKEEPER_TEST_HOOKS=1.
    if std::env::var_os("WALKEEPER_TEST_HOOKS").is_some_and(|v| v == "1") {
        env.define_function(exports, "__testPanic", test_panic)?;
    }
    Ok(())
}

/// `__testPanic(message, async: boolean)`: panics on the JS thread, or in async work.
fn test_panic(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let msg = args.string(0, "message")?;
    if args.opt_bool(1, "async")?.unwrap_or(false) {
        return spawn(env, move || -> JsResult<()> { panic!("{msg}") }, |env, ()| env.undefined());
    }
    panic!("{msg}");
}

fn version(env: &Env, _args: &CallArgs) -> JsResult<napi_value> {
    env.string(env!("CARGO_PKG_VERSION"))
}

fn crc32c_implementation(env: &Env, _args: &CallArgs) -> JsResult<napi_value> {
    env.string(crc32c::implementation_name())
}

fn lsn_arg(args: &CallArgs, i: usize, name: &str) -> JsResult<Lsn> {
    args.bigint_u64(i, name).map(Lsn)
}

fn seg_size_arg(args: &CallArgs, i: usize) -> JsResult<u64> {
    let s = args.u32(i, "segSize")? as u64;
    walcore::lsn::check_segment_size(s).map_err(|e| range_error(e.message))?;
    Ok(s)
}

fn tli_arg(args: &CallArgs, i: usize) -> JsResult<u32> {
    let t = args.u32(i, "tli")?;
    if t == 0 {
        return Err(range_error("tli must be at least 1"));
    }
    Ok(t)
}

fn opt_lsn(env: &Env, l: Option<Lsn>) -> JsResult<napi_value> {
    match l {
        Some(l) => env.bigint(l.0),
        None => env.null(),
    }
}

/// `findEndOfWal({ dir, tli, segSize, start, search?, prev?, systemId?, pgVersion? })`
fn find_end(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let args = &args.object(0, "options", &["dir", "tli", "segSize", "start", "search", "prev", "systemId", "pgVersion"])?;
    let dir = PathBuf::from(args.string(0, "dir")?);
    let tli = tli_arg(args, 1)?;
    let seg = seg_size_arg(args, 2)?;
    let start = lsn_arg(args, 3, "start")?;
    let search = args.opt_bool(4, "search")?.unwrap_or(false);
    let prev = args.opt_bigint_u64(5, "prev")?.map(Lsn);
    let system_id = args.opt_bigint_u64(6, "systemId")?;
    let magic = match args.opt_u32(7, "pgVersion")? {
        None => None,
        Some(v) => Some(
            walcore::page::magic_for_pg_version(v)
                .ok_or_else(|| range_error(format!("PostgreSQL {v} WAL is not supported (15, 16 and 17 are)")))?,
        ),
    };
    spawn(
        env,
        move || {
            let src = DirSource::open(&dir, tli, seg).map_err(js_err)?;
            let opts = ScanOptions {
                start,
                kind: if search { StartKind::Search } else { StartKind::Record },
                prev,
                system_id,
                magic,
            };
            find_end_of_wal(&src, &opts).map_err(|e| js_err(e.context(format!("scanning {} from {start}", dir.display()))))
        },
        |env, r| {
            let o = env.object()?;
            env.set(o, "end", env.bigint(r.end.0)?)?;
            env.set(o, "firstRecord", opt_lsn(env, r.first_record)?)?;
            env.set(o, "lastRecord", opt_lsn(env, r.last_record)?)?;
            env.set(o, "records", env.number(r.records as f64)?)?;
            env.set(o, "stopReason", env.string(&r.stop_reason)?)?;
            env.set(o, "stopLsn", env.bigint(r.stop_lsn.0)?)?;
            env.set(o, "pgVersion", r.pg_version.map_or_else(|| env.null(), |v| env.u32(v))?)?;
            env.set(o, "systemId", r.system_id.map_or_else(|| env.null(), |v| env.bigint(v))?)?;
            env.set(o, "tli", r.tli.map_or_else(|| env.null(), |v| env.u32(v))?)?;
            Ok(o)
        },
    )
}

/// `controlRead(path): Promise<Buffer | null>`
fn control_read(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let path = PathBuf::from(args.string(0, "path")?);
    spawn(env, move || control::read(&path).map_err(js_err), |env, payload| match payload {
        Some(p) => env.buffer(&p),
        None => env.null(),
    })
}

/// `controlWrite(path, payload: Buffer): Promise<void>`
fn control_write(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let path = PathBuf::from(args.string(0, "path")?);
    // The payload is small: copy it, so JS may reuse its buffer at once.
    let payload = args.buffer(1, "payload")?.to_vec();
    spawn(env, move || control::write(&path, &payload).map_err(js_err), |env, ()| env.undefined())
}

fn store_arg(args: &CallArgs) -> JsResult<Arc<Store>> {
    args.external::<Store>(0, "store", &STORE_TAG)
}

/// `storeOpen(dir, segSize, tli): Promise<StoreHandle>`
fn store_open(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let dir = PathBuf::from(args.string(0, "dir")?);
    let seg = seg_size_arg(args, 1)?;
    let tli = tli_arg(args, 2)?;
    spawn(env, move || Store::open(&dir, seg, tli).map(Arc::new).map_err(js_err), |env, store| {
        env.external(store, &STORE_TAG)
    })
}

/// `storeState(store): { dir, segmentSize, tli, writeLsn, flushLsn }` (memory only)
fn store_state(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let o = env.object()?;
    env.set(o, "dir", env.string(&s.dir().to_string_lossy())?)?;
    env.set(o, "segmentSize", env.number(s.seg_size() as f64)?)?;
    env.set(o, "tli", env.u32(s.timeline())?)?;
    env.set(o, "writeLsn", opt_lsn(env, s.write_lsn())?)?;
    env.set(o, "flushLsn", env.bigint(s.flush_lsn().0)?)?;
    Ok(o)
}

fn store_set_timeline(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let tli = tli_arg(args, 1)?;
    s.set_timeline(tli).map_err(js_err)?;
    env.undefined()
}

/// `storeList(store): SegmentInfo[]` (memory only: the store's own index)
fn store_list(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let mut items = Vec::new();
    for i in s.list() {
        let o = env.object()?;
        env.set(o, "tli", env.u32(i.tli)?)?;
        env.set(o, "segno", env.number(i.segno as f64)?)?;
        env.set(o, "partial", env.boolean(i.partial)?)?;
        env.set(o, "name", env.string(&i.name)?)?;
        env.set(o, "start", env.bigint(i.start.0)?)?;
        items.push(o);
    }
    env.array(&items)
}

/// `storeAppend(store, lsn, ...data: Buffer[]): Promise<bigint>` — the new write
/// position. Several contiguous buffers (up to 10) go down in one thread-pool
/// hop, without being concatenated first.
fn store_append(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    append_then(env, args, false)
}

/// `storeAppendFlush(store, lsn, ...data: Buffer[]): Promise<bigint>` — append,
/// then fsync, in one thread-pool hop; resolves to the new flush position.
/// For a caught-up writer, where each hop is latency a commit waits for.
fn store_append_flush(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    append_then(env, args, true)
}

/// The contiguous buffers `args[2..]` appended at `args[1]`, then (with
/// `flush`) fsynced; resolves to the write position, or the flush position.
fn append_then(env: &Env, args: &CallArgs, flush: bool) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let lsn = lsn_arg(args, 1, "lsn")?;
    if args.len() < 3 {
        return Err(JsError::type_error("data must be a Buffer").with_code(crate::napi::INVALID_ARG_TYPE_CODE));
    }
    let mut bufs = Vec::with_capacity(args.len() - 2);
    for i in 2..args.len() {
        bufs.push(args.buffer_ref(i, "data")?);
    }
    spawn_with_buffers(
        env,
        bufs,
        move |bufs: &mut [BufferRef]| {
            let mut at = lsn;
            for b in bufs.iter() {
                let d = b.as_slice();
                s.append(at, d).map_err(js_err)?;
                at = Lsn(at.0 + d.len() as u64);
            }
            if flush {
                s.flush().map_err(js_err)
            } else {
                Ok(at)
            }
        },
        |env, end| env.bigint(end.0),
    )
}

/// `storeFlush(store): Promise<bigint>` — the new flush position.
fn store_flush(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    spawn(env, move || s.flush().map_err(js_err), |env, l| env.bigint(l.0))
}

fn store_truncate(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let lsn = lsn_arg(args, 1, "lsn")?;
    spawn(env, move || s.truncate(lsn).map_err(js_err), |env, ()| env.undefined())
}

/// `storeRemoveBelow(store, segno): Promise<string[]>` — names removed.
fn store_remove_below(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let segno = args.bigint_u64(1, "segno").or_else(|_| args.u32(1, "segno").map(u64::from))?;
    spawn(env, move || s.remove_below(segno).map_err(js_err), |env, names| {
        let items = names.iter().map(|n| env.string(n)).collect::<JsResult<Vec<_>>>()?;
        env.array(&items)
    })
}

/// `storeRead(store, tli, lsn, buf): Promise<number>` — bytes read (up to the write position).
fn store_read(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let tli = tli_arg(args, 1)?;
    let lsn = lsn_arg(args, 2, "lsn")?;
    let buf = args.buffer_ref(3, "buf")?;
    spawn_with_buffers(
        env,
        vec![buf],
        move |bufs: &mut [BufferRef]| s.read(tli, lsn, bufs[0].as_mut_slice()).map_err(js_err),
        |env, n| env.number(n as f64),
    )
}

/// Arguments 2..=7 of the frame calls (after store and buf): tli, start,
/// end, walEnd, maxSend?, sendTime?. Positional, unlike the other calls with
/// this many: a sender frames every message through here on the JS thread,
/// and reading them as named properties cost 13% of the framing rate
/// (bench/read-frame: 0.87× instead of 0.98× of fs.readSync).
fn frame_request(args: &CallArgs) -> JsResult<FrameRequest> {
    let tli = tli_arg(args, 2)?;
    let start = lsn_arg(args, 3, "start")?;
    let end = lsn_arg(args, 4, "end")?;
    let wal_end = lsn_arg(args, 5, "walEnd")?;
    let max_send = args.opt_u32(6, "maxSend")?.map_or(DEFAULT_MAX_SEND, |m| m as usize);
    if max_send == 0 {
        return Err(range_error("maxSend must be at least 1"));
    }
    let send_time = args.opt_bigint_u64(7, "sendTime")?.map(|t| t as i64);
    if end <= start {
        return Err(range_error(format!("end {end} must be above start {start}")));
    }
    Ok(FrameRequest { tli, start, end, wal_end, send_time, max_send })
}

/// `storeFrameNoWait(store, buf, tli, start, end, walEnd, maxSend?, sendTime?): number`
/// — bytes of `buf` used by one XLogData message, or -1 when the WAL is not
/// in the page cache (then call `storeFrame`).
fn store_frame_nowait(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let req = frame_request(args)?;
    let buf = args.buffer(1, "buf")?;
    match xlogdata::frame(&s, &req, buf, true).map_err(|e| js_err(e.context(format!("framing WAL at {}", req.start))))? {
        Some(n) => env.number(n as f64),
        None => env.number(-1.0),
    }
}

/// `storeFrame(store, buf, …): Promise<number>` — the same on the thread pool.
fn store_frame(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let req = frame_request(args)?;
    let buf = args.buffer_ref(1, "buf")?;
    spawn_with_buffers(
        env,
        vec![buf],
        move |bufs: &mut [BufferRef]| {
            let n = xlogdata::frame(&s, &req, bufs[0].as_mut_slice(), false)
                .map_err(|e| js_err(e.context(format!("framing WAL at {}", req.start))))?;
            Ok(n.expect("a blocking frame always completes"))
        },
        |env, n| env.number(n as f64),
    )
}

fn store_put_history(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let tli = tli_arg(args, 1)?;
    let content = args.buffer(2, "content")?.to_vec();
    spawn(env, move || s.put_history(tli, &content).map_err(js_err), |env, ()| env.undefined())
}

fn store_get_history(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let s = store_arg(args)?;
    let tli = tli_arg(args, 1)?;
    spawn(env, move || s.get_history(tli).map_err(js_err), |env, c| match c {
        Some(c) => env.buffer(&c),
        None => env.null(),
    })
}

// ---------------------------------------------------------------------------
// The receive pump (walcore::receive_pump): socket → checks → store on the thread pool
// ---------------------------------------------------------------------------

#[cfg(unix)]
use walcore::receive_pump::{End, ReceivePump, PumpConfig, PumpHandle};

#[cfg(unix)]
fn pump_arg(args: &CallArgs) -> JsResult<Arc<PumpHandle<ReceivePump>>> {
    args.external::<PumpHandle<ReceivePump>>(0, "pump", &PUMP_TAG)
}

/// `pumpOpen({ fd, pending, store, start, tli, systemId, pgVersion, endLsn?, synchronous? }): PumpHandle`
/// (memory only: duplicates `fd`, copies `pending`).
#[cfg(unix)]
fn pump_open(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let args = &args.object(0, "options", &["fd", "pending", "store", "start", "tli", "systemId", "pgVersion", "endLsn", "synchronous"])?;
    let fd = args.u32(0, "fd")? as i32;
    let pending = args.buffer(1, "pending")?.to_vec();
    let store = args.external::<Store>(2, "store", &STORE_TAG)?;
    let cfg = PumpConfig {
        start: lsn_arg(args, 3, "start")?,
        tli: tli_arg(args, 4)?,
        system_id: args.bigint_u64(5, "systemId")?,
        pg_version: args.u32(6, "pgVersion")?,
        end_lsn: args.opt_bigint_u64(7, "endLsn")?.map(Lsn),
        synchronous: args.opt_bool(8, "synchronous")?.unwrap_or(false),
        peer: "the node",
        answer: None,
    };
    let pump = ReceivePump::new(fd, &pending, store, cfg).map_err(arg_err)?;
    let wake = pump.waker();
    env.external(Arc::new(PumpHandle::with_wake(pump, wake)), &PUMP_TAG)
}

/// `pumpRun(pump, maxMs): Promise<PumpReport>` — works on the thread pool until
/// there is something to act on (see walcore::receive_pump::ReceivePump::run).
#[cfg(unix)]
fn pump_run(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let h = pump_arg(args)?;
    let max = std::time::Duration::from_millis(args.u32(1, "maxMs")? as u64);
    spawn(
        env,
        move || {
            h.run(|p, stop| p.run(max, stop))
                .map_err(|why| JsError::error("WALCORE_INVALID_ARGUMENT", format!("pumpRun: the pump is {why}")))
        },
        |env, r| report_object(env, &r, "the node"),
    )
}

/// A pump report as JS sees it (`PumpReport` in ts/native.ts).
#[cfg(unix)]
fn report_object(env: &Env, r: &walcore::receive_pump::Report, peer: &str) -> JsResult<napi_value> {
    let o = env.object()?;
    env.set(o, "received", env.bigint(r.received.0)?)?;
    env.set(o, "flushed", env.bigint(r.flushed.0)?)?;
    env.set(o, "walEnd", env.bigint(r.wal_end.0)?)?;
    env.set(o, "messages", env.number(r.messages as f64)?)?;
    env.set(o, "keepalives", env.number(r.keepalives as f64)?)?;
    env.set(o, "replyRequested", env.boolean(r.reply_requested)?)?;
    let fsyncs: Vec<napi_value> = r.fsyncs.iter().map(|d| env.number(d.as_secs_f64())).collect::<JsResult<_>>()?;
    env.set(o, "fsyncs", env.array(&fsyncs)?)?;
    let acks: Vec<napi_value> = r.acks.iter().map(|d| env.number(d.as_secs_f64())).collect::<JsResult<_>>()?;
    env.set(o, "acks", env.array(&acks)?)?;
    if let Some(end) = &r.end {
        let (kind, message, code) = match end {
            End::Other => ("other", String::new(), None),
            End::Eof => ("eof", format!("{peer} closed the connection"), None),
            End::Io(e) => ("io", e.to_string(), None),
            End::Bad(m) => ("bad", m.clone(), None),
            End::Store(e) => ("store", e.message.clone(), Some(e.code.as_str())),
            End::EndPos => ("endpos", String::new(), None),
            End::Stopped => ("stopped", String::new(), None),
        };
        env.set(o, "end", env.string(kind)?)?;
        env.set(o, "message", env.string(&message)?)?;
        if let Some(c) = code {
            env.set(o, "code", env.string(c)?)?;
        }
        env.set(o, "leftover", env.buffer(&r.leftover)?)?;
    }
    Ok(o)
}

/// `ingestPumpStart({ fd, pending, store, start, tli, systemId, pgVersion,
/// flushBytes, statusIntervalMs }, onReport): IngestPumpHandle` — node ingest:
/// a receive pump on a thread of its own that fsyncs as soon as the socket
/// is drained and sends the status updates itself (walcore::receive_pump::Answer).
/// `onReport(report)` runs on the JS thread after progress, with everything
/// since the previous call; the report with `end` is the last.
#[cfg(unix)]
fn ingest_pump_start(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    use walcore::receive_pump::{Answer, ReceiveThread};
    let on_report = args.get(1).ok_or_else(|| JsError::type_error("onReport must be a function"))?;
    if args.type_of(1)? != crate::napi_sys::napi_function {
        return Err(JsError::type_error("onReport must be a function").with_code(crate::napi::INVALID_ARG_TYPE_CODE));
    }
    let args = &args.object(0, "options", &["fd", "pending", "store", "start", "tli", "systemId", "pgVersion", "flushBytes", "statusIntervalMs"])?;
    let fd = args.u32(0, "fd")? as i32;
    let pending = args.buffer(1, "pending")?.to_vec();
    let store = args.external::<Store>(2, "store", &STORE_TAG)?;
    let flush_bytes = args.u32(7, "flushBytes")?.max(8192) as u64;
    let interval = std::time::Duration::from_millis(args.u32(8, "statusIntervalMs")?.max(1) as u64);
    let cfg = PumpConfig {
        start: lsn_arg(args, 3, "start")?,
        tli: tli_arg(args, 4)?,
        system_id: args.bigint_u64(5, "systemId")?,
        pg_version: args.u32(6, "pgVersion")?,
        end_lsn: None,
        synchronous: false,
        peer: "the upstream",
        answer: Some(Answer { status_interval: interval, flush_bytes }),
    };
    let pump = ReceivePump::new(fd, &pending, store, cfg).map_err(arg_err)?;
    let live = ReceiveThread::new(&pump);
    let l = live.clone();
    let call = crate::napi::ThreadsafeCall::new(env, on_report, "walkeeper-ingest", move |env| {
        report_object(env, &l.take(), "the upstream")
    })?;
    live.start(pump, move || {
        call.call();
    })
    .map_err(|e| JsError::error("WALCORE_IO", format!("cannot start the ingest pump thread: {e}")))?;
    env.external(live, &INGEST_PUMP_TAG)
}

#[cfg(unix)]
fn ingest_pump_arg(args: &CallArgs) -> JsResult<Arc<walcore::receive_pump::ReceiveThread>> {
    args.external::<walcore::receive_pump::ReceiveThread>(0, "pump", &INGEST_PUMP_TAG)
}

/// `ingestPumpSend(pump, message)`: queues whole protocol messages for the
/// pump to write (it owns the socket's writing while it runs).
#[cfg(unix)]
fn ingest_pump_send(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let live = ingest_pump_arg(args)?;
    let m = args.buffer(1, "message")?;
    live.send(m);
    env.undefined()
}

/// `ingestPumpStop(pump)`: the pump fsyncs what it appended, acknowledges
/// it, and ends (its last report has end "stopped") at once, even while it waits for data.
#[cfg(unix)]
fn ingest_pump_stop(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    ingest_pump_arg(args)?.request_stop();
    env.undefined()
}

/// `pumpStop(pump)`: a running `pumpRun` returns at once, even while it waits for data.
#[cfg(unix)]
fn pump_stop(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    pump_arg(args)?.request_stop();
    env.undefined()
}

/// `pumpClose(pump)`: closes the pump's socket duplicate. Only after the last
/// `pumpRun` settled (the caller awaits it); a running pump is stopped instead
/// and the call throws.
#[cfg(unix)]
fn pump_close(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    if !pump_arg(args)?.close() {
        return Err(JsError::error("WALCORE_INVALID_ARGUMENT", "pumpClose: the pump is running (await pumpRun first)"));
    }
    env.undefined()
}

// ---------------------------------------------------------------------------
// The send pump (walcore::send_pump): store → socket on the thread pool, for
// a sender catching up
// ---------------------------------------------------------------------------

#[cfg(unix)]
use walcore::send_pump::{SendEnd, SendJob, SendPump};

/// A send pump with a thread of its own: each client catching up has a writer that starts the
/// moment the client has room, as each has a walsender in PostgreSQL. On libuv's four shared
/// threads, the runs of clients waiting for one started late, their receive queues ran dry, and
/// they read in twice as many, smaller pieces as from PostgreSQL (bench/sender, 8 consumers).
#[cfg(unix)]
struct SendPumpWorker {
    pump: PumpHandle<SendPump>,
    thread: crate::napi::OwnThread,
}

#[cfg(unix)]
fn send_pump_arg(args: &CallArgs) -> JsResult<Arc<SendPumpWorker>> {
    args.external::<SendPumpWorker>(0, "sendPump", &SEND_PUMP_TAG)
}

/// `sendPumpOpen({ fd, store, tli, maxSend }): SendPumpHandle` (duplicates `fd`).
#[cfg(unix)]
fn send_pump_open(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let args = &args.object(0, "options", &["fd", "store", "tli", "maxSend"])?;
    let fd = args.u32(0, "fd")? as i32;
    let store = args.external::<Store>(1, "store", &STORE_TAG)?;
    let tli = tli_arg(args, 2)?;
    let max_send = args.u32(3, "maxSend")? as usize;
    let pump = SendPump::new(fd, store, tli, max_send).map_err(arg_err)?;
    let thread = crate::napi::OwnThread::new(env, "walkeeper-send")?;
    let wake = pump.waker();
    env.external(Arc::new(SendPumpWorker { pump: PumpHandle::with_wake(pump, wake), thread }), &SEND_PUMP_TAG)
}

/// `sendPumpRun(pump, { start, end, walEnd, budget, zeroCopy? }): Promise<SendPumpReport>` —
/// writes without blocking, on the pump's own thread (see walcore::send_pump).
#[cfg(unix)]
fn send_pump_run(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let w = send_pump_arg(args)?;
    let args = &args.object(1, "options", &["", "start", "end", "walEnd", "budget", "zeroCopy", "waitMs"])?;
    let job = SendJob {
        start: lsn_arg(args, 1, "start")?,
        end: lsn_arg(args, 2, "end")?,
        wal_end: lsn_arg(args, 3, "walEnd")?,
        budget: args.u32(4, "budget")? as usize,
        zero_copy: args.opt_bool(5, "zeroCopy")?.unwrap_or(true),
        wait: std::time::Duration::from_millis(args.opt_u32(6, "waitMs")?.unwrap_or(0) as u64),
    };
    let h = w.clone();
    crate::napi::spawn_on(
        env,
        &w.thread,
        move || {
            h.pump
                .run(|p, stop| p.run(&job, stop))
                .map_err(|why| JsError::error("WALCORE_INVALID_ARGUMENT", format!("sendPumpRun: the pump is {why}")))
        },
        |env, r| {
            let o = env.object()?;
            env.set(o, "sent", env.bigint(r.sent.0)?)?;
            env.set(o, "messages", env.number(r.messages as f64)?)?;
            let (kind, message, code) = match &r.end {
                SendEnd::Done => ("done", String::new(), None),
                SendEnd::Full => ("full", String::new(), None),
                SendEnd::Stopped => ("stopped", String::new(), None),
                SendEnd::Io(e) => ("io", e.to_string(), None),
                SendEnd::Store(e) => ("store", e.message.clone(), Some(e.code.as_str())),
            };
            env.set(o, "end", env.string(kind)?)?;
            if !message.is_empty() {
                env.set(o, "message", env.string(&message)?)?;
            }
            if let Some(c) = code {
                env.set(o, "code", env.string(c)?)?;
            }
            if !r.tail.is_empty() {
                env.set(o, "tail", env.buffer(&r.tail)?)?;
            }
            Ok(o)
        },
    )
}

/// `sendPumpStop(pump)`: a running `sendPumpRun` returns before its next message.
#[cfg(unix)]
fn send_pump_stop(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    send_pump_arg(args)?.pump.request_stop();
    env.undefined()
}

/// `sendPumpClose(pump)`: as `pumpClose`.
#[cfg(unix)]
fn send_pump_close(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let w = send_pump_arg(args)?;
    if !w.pump.close() {
        return Err(JsError::error("WALCORE_INVALID_ARGUMENT", "sendPumpClose: the pump is running (await sendPumpRun first)"));
    }
    w.thread.end();
    env.undefined()
}

#[cfg(not(unix))]
fn pump_unsupported(_env: &Env, _args: &CallArgs) -> JsResult<napi_value> {
    Err(JsError::error("WALCORE_INVALID_ARGUMENT", "the receive and send pumps need a Unix socket descriptor"))
}
#[cfg(not(unix))]
use pump_unsupported as pump_open;
#[cfg(not(unix))]
use pump_unsupported as pump_run;
#[cfg(not(unix))]
use pump_unsupported as pump_stop;
#[cfg(not(unix))]
use pump_unsupported as pump_close;
#[cfg(not(unix))]
use pump_unsupported as ingest_pump_start;
#[cfg(not(unix))]
use pump_unsupported as ingest_pump_send;
#[cfg(not(unix))]
use pump_unsupported as ingest_pump_stop;
#[cfg(not(unix))]
use pump_unsupported as send_pump_open;
#[cfg(not(unix))]
use pump_unsupported as send_pump_run;
#[cfg(not(unix))]
use pump_unsupported as send_pump_stop;
#[cfg(not(unix))]
use pump_unsupported as send_pump_close;

/// `zstdCompress(data, level): Promise<Buffer>` — one zstd frame, on the thread pool.
fn zstd_compress(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let data = args.buffer_ref(0, "data")?;
    let level = args.u32(1, "level")? as i32;
    spawn_with_buffers(env, vec![data], move |bufs: &mut [BufferRef]| walcore::zstd::compress(bufs[0].as_slice(), level).map_err(js_err), |env, out| env.buffer(&out))
}

/// `zstdDecompress(data, maxBytes): Promise<Buffer>` — every frame, at most maxBytes out.
fn zstd_decompress(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let data = args.buffer_ref(0, "data")?;
    let max = args.u32(1, "maxBytes")? as usize;
    spawn_with_buffers(env, vec![data], move |bufs: &mut [BufferRef]| walcore::zstd::decompress(bufs[0].as_slice(), max).map_err(js_err), |env, out| env.buffer(&out))
}

/// `segmentWrite({ data, compressed, pad, tli, hi, lo, systemId?, pgVersion?, path, sync }):
/// Promise<{ systemId, pgVersion, segmentSize }>` — a segment from an archive, checked as it is
/// written to a new file, on the thread pool (see walcore/src/segment_file.rs).
#[cfg(unix)]
fn segment_write(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    use walcore::segment_file::{write_segment, Expect, SegmentName, WriteOptions};
    let o = &args.object(0, "options", &["data", "compressed", "pad", "tli", "hi", "lo", "systemId", "pgVersion", "path", "sync"])?;
    let data = o.buffer_ref(0, "data")?;
    let opts = WriteOptions { compressed: o.bool(1, "compressed")?, pad: o.bool(2, "pad")?, sync: o.bool(9, "sync")? };
    let name = SegmentName { tli: o.u32(3, "tli")?, hi: o.u32(4, "hi")?, lo: o.u32(5, "lo")? };
    let expect = Expect { system_id: o.opt_bigint_u64(6, "systemId")?, pg_version: o.opt_u32(7, "pgVersion")? };
    let path = PathBuf::from(o.string(8, "path")?);
    spawn_with_buffers(env, vec![data], move |bufs: &mut [BufferRef]| write_segment(bufs[0].as_slice(), name, expect, &path, &opts).map_err(js_err), |env, id| {
        let r = env.object()?;
        env.set(r, "systemId", env.bigint(id.system_id)?)?;
        env.set(r, "pgVersion", env.number(id.pg_version as f64)?)?;
        env.set(r, "segmentSize", env.number(id.seg_size as f64)?)?;
        Ok(r)
    })
}

#[cfg(not(unix))]
use pump_unsupported as segment_write;

/// `zstdCompressFile(path, level, length?, padTo?): Promise<{ bytes, data }>` — a file's first
/// `length` bytes (all by default), zero-padded to `padTo`, read and compressed on the thread pool.
fn zstd_compress_file(env: &Env, args: &CallArgs) -> JsResult<napi_value> {
    let path = PathBuf::from(args.string(0, "path")?);
    let level = args.u32(1, "level")? as i32;
    let len = args.opt_u32(2, "length")?.map(|v| v as usize);
    let pad = args.opt_u32(3, "padTo")?.map(|v| v as usize);
    spawn(env, move || walcore::zstd::compress_file(&path, level, len, pad).map_err(js_err), |env, (bytes, data)| {
        let o = env.object()?;
        env.set(o, "bytes", env.number(bytes as f64)?)?;
        env.set(o, "data", env.buffer(&data)?)?;
        Ok(o)
    })
}
