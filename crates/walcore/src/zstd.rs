//! zstd compression of WAL segments for object storage, through the system
//! `libzstd` (linked statically; declared here by hand, checked against
//! `zstd.h` by `build.rs`). A kept, widely deployed implementation rather
//! than our own: archives outlive programs, and `zstd -d` must read them.
//!
//! Decompression streams, so that it reads what other tools wrote too —
//! several frames, frames without a content size — and stops at a caller's
//! limit, so that a damaged or hostile object cannot make us allocate more
//! than a segment.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint, c_void};

use crate::error::{Error, ErrorCode, Result};

#[repr(C)]
struct InBuffer {
    src: *const c_void,
    size: usize,
    pos: usize,
}

#[repr(C)]
struct OutBuffer {
    dst: *mut c_void,
    size: usize,
    pos: usize,
}

#[repr(C)]
struct DStream {
    _private: [u8; 0],
}

#[repr(C)]
struct CCtx {
    _private: [u8; 0],
}

#[link(name = "zstd", kind = "static")]
extern "C" {
    fn ZSTD_compressBound(src_size: usize) -> usize;
    fn ZSTD_createCCtx() -> *mut CCtx;
    fn ZSTD_isError(code: usize) -> c_uint;
    fn ZSTD_getErrorName(code: usize) -> *const c_char;
    fn ZSTD_createDStream() -> *mut DStream;
    fn ZSTD_freeDStream(zds: *mut DStream) -> usize;
    fn ZSTD_initDStream(zds: *mut DStream) -> usize;
    fn ZSTD_decompressStream(zds: *mut DStream, output: *mut OutBuffer, input: *mut InBuffer) -> usize;
    fn ZSTD_minCLevel() -> c_int;
    fn ZSTD_CCtx_reset(cctx: *mut CCtx, reset: c_int) -> usize;
    fn ZSTD_CCtx_setParameter(cctx: *mut CCtx, param: c_int, value: c_int) -> usize;
    fn ZSTD_CCtx_setPledgedSrcSize(cctx: *mut CCtx, pledged_src_size: u64) -> usize;
    fn ZSTD_compressStream2(cctx: *mut CCtx, output: *mut OutBuffer, input: *mut InBuffer, end_op: c_int) -> usize;
    fn ZSTD_maxCLevel() -> c_int;
    fn ZSTD_compress2(cctx: *mut CCtx, dst: *mut c_void, dst_capacity: usize, src: *const c_void, src_size: usize) -> usize;
    fn ZSTD_getCParams(level: c_int, estimated_src_size: u64, dict_size: usize) -> CParams;
}

/// zstd.h's ZSTD_compressionParameters (static-linking section; we link statically).
#[repr(C)]
struct CParams {
    window_log: c_uint,
    chain_log: c_uint,
    hash_log: c_uint,
    search_log: c_uint,
    min_match: c_uint,
    target_length: c_uint,
    strategy: c_int,
}

// zstd.h's enum values (ZSTD_ResetDirective, ZSTD_cParameter, ZSTD_EndDirective).
const ZSTD_RESET_SESSION_AND_PARAMETERS: c_int = 3;
const ZSTD_C_COMPRESSION_LEVEL: c_int = 100;
const ZSTD_C_WINDOW_LOG: c_int = 101;
const ZSTD_C_HASH_LOG: c_int = 102;
const ZSTD_E_CONTINUE: c_int = 0;
const ZSTD_E_END: c_int = 2;

/// At most a 1 MiB window and a 64 Ki-entry hash table for a segment. At
/// level 3 (zstd's choice for a 16 MiB input: 2 MiB, 128 Ki) this costs no
/// ratio on WAL and less CPU: pgbench -i WAL 0.40 → 0.32 CPU s per 384 MiB at
/// 19.2× either way (+0.02% bytes), pgbench TPC-B WAL 0.97 → 0.95 s per
/// 688 MiB at +0.7% bytes (Intel Xeon); the table then fits in L2. Lower
/// levels already use less and are left alone; a smaller window also halves
/// what restoring a segment needs.
const SEGMENT_WINDOW_LOG: c_uint = 20;
const SEGMENT_HASH_LOG: c_uint = 16;

fn check(code: usize, what: &str) -> Result<usize> {
    // SAFETY: ZSTD_isError and ZSTD_getErrorName accept any value and return a static string.
    unsafe {
        if ZSTD_isError(code) != 0 {
            let name = CStr::from_ptr(ZSTD_getErrorName(code)).to_string_lossy();
            return Err(Error::new(ErrorCode::Corrupt, format!("zstd {what}: {name}")));
        }
    }
    Ok(code)
}

/// Resets `cctx` for one frame of `size` bytes at `level`, with the segment parameters above.
///
/// # Safety
/// `cctx` is a live compression context used by this thread only.
unsafe fn start_frame(cctx: *mut CCtx, level: i32, size: usize) -> Result<()> {
    check(ZSTD_CCtx_reset(cctx, ZSTD_RESET_SESSION_AND_PARAMETERS), "compress")?;
    check(ZSTD_CCtx_setParameter(cctx, ZSTD_C_COMPRESSION_LEVEL, level), "compress")?;
    let p = ZSTD_getCParams(level, size as u64, 0);
    check(ZSTD_CCtx_setParameter(cctx, ZSTD_C_WINDOW_LOG, p.window_log.min(SEGMENT_WINDOW_LOG) as c_int), "compress")?;
    check(ZSTD_CCtx_setParameter(cctx, ZSTD_C_HASH_LOG, p.hash_log.min(SEGMENT_HASH_LOG) as c_int), "compress")?;
    check(ZSTD_CCtx_setPledgedSrcSize(cctx, size as u64), "compress")?;
    Ok(())
}

/// A compression context per thread, kept: a fresh one per segment would
/// allocate and fault in its tables every time.
struct Ctx(*mut CCtx);

thread_local! {
    // SAFETY: a plain constructor; null (out of memory) is checked at use.
    static CCTX: Ctx = Ctx(unsafe { ZSTD_createCCtx() });
}

/// Runs `f` with this thread's compression context.
fn with_cctx<T>(f: impl FnOnce(*mut CCtx) -> Result<T>) -> Result<T> {
    CCTX.with(|c| {
        if c.0.is_null() {
            return Err(Error::new(ErrorCode::Io, "zstd: cannot allocate a compression context".to_string()));
        }
        f(c.0)
    })
}

/// One frame of `src` (with its content size) in `out`, replacing what it held.
fn compress_into(src: &[u8], level: i32, out: &mut Vec<u8>) -> Result<()> {
    // SAFETY: ZSTD_compressBound is a pure function.
    let bound = check(unsafe { ZSTD_compressBound(src.len()) }, "compress")?;
    out.clear();
    out.reserve(bound);
    with_cctx(|c| {
        // SAFETY: the context is this thread's; zstd writes at most `bound` bytes into the spare
        // capacity, and the length is set to what it reports written.
        unsafe {
            start_frame(c, level, src.len())?;
            let n = check(ZSTD_compress2(c, out.as_mut_ptr().cast(), bound, src.as_ptr().cast(), src.len()), "compress")?;
            out.set_len(n);
        }
        Ok(())
    })
}

/// Compresses `src` into one zstd frame (with its content size) at `level`.
pub fn compress(src: &[u8], level: i32) -> Result<Vec<u8>> {
    check_level(level)?;
    let mut out = Vec::new();
    compress_into(src, level, &mut out)?;
    Ok(out)
}

thread_local! {
    /// Room for one compressed segment, kept per pool thread: allocated and faulted in once, so a
    /// segment's compression costs no fresh 16 MiB allocation; the result is copied out at its size.
    static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `compress`, through this thread's kept output room.
fn compress_kept(src: &[u8], level: i32) -> Result<Vec<u8>> {
    OUT.with(|o| {
        let mut out = o.borrow_mut();
        compress_into(src, level, &mut out)?;
        Ok(out.as_slice().to_vec())
    })
}

/// Compresses the first `len` bytes of the file at `path` (all of it when
/// `len` is None), followed by zeros up to `pad_to` when given: a segment
/// for upload, read and compressed on the calling (pool) thread, so that
/// its 16 MiB never become a JavaScript buffer. One frame, with its content
/// size. Without padding (every complete segment) the file is mapped and
/// compressed in one call; a padded tail (a partial object) streams through
/// a 1 MiB buffer instead, so that neither path allocates, faults in and
/// zeroes 16 MiB per segment.
pub fn compress_file(path: &std::path::Path, level: i32, len: Option<usize>, pad_to: Option<usize>) -> Result<(usize, Vec<u8>)> {
    use std::io::Read;
    check_level(level)?;
    let mut f = std::fs::File::open(path).map_err(|e| Error::new(ErrorCode::Io, format!("cannot open {}: {e}", path.display())))?;
    let size = f.metadata().map_err(|e| Error::new(ErrorCode::Io, format!("cannot stat {}: {e}", path.display())))?.len() as usize;
    let want = len.unwrap_or(size);
    if want > size {
        return Err(Error::new(ErrorCode::InvalidArgument, format!("{} holds {size} bytes, {want} asked for", path.display())));
    }
    let total = pad_to.unwrap_or(want).max(want);
    if total == want {
        // A whole segment: compressed in one call straight from the page cache's pages. One call sees
        // the segment as one contiguous input, which zstd compresses faster than a stream whose window
        // wraps around its internal buffer (bench/offload: ZSTD_compressBlock_doubleFast_extDict was
        // most of the streamed path's time), and no byte is copied on the way in.
        let bytes = crate::sys::FileBytes::open(&f, want).map_err(|e| Error::new(ErrorCode::Io, format!("cannot read {}: {e}", path.display())))?;
        return Ok((want, compress_kept(bytes.as_slice(), level)?));
    }
    with_cctx(|c| {
        // SAFETY: the context is this thread's; every buffer handed to zstd is a live slice
        // (or the spare capacity of `out`, whose length is set to what zstd reports written).
        unsafe {
            start_frame(c, level, total)?;
            let bound = check(ZSTD_compressBound(total), "compress")?;
            let mut out = Vec::<u8>::with_capacity(bound);
            let mut chunk = vec![0u8; (1 << 20).min(total.max(1))];
            let mut fed = 0usize;
            loop {
                let n = chunk.len().min(total - fed);
                let from_file = want.saturating_sub(fed).min(n);
                f.read_exact(&mut chunk[..from_file]).map_err(|e| Error::new(ErrorCode::Io, format!("cannot read {}: {e}", path.display())))?;
                chunk[from_file..n].fill(0);
                fed += n;
                let last = fed == total;
                let mut input = InBuffer { src: chunk.as_ptr().cast(), size: n, pos: 0 };
                loop {
                    let len = out.len();
                    let mut o = OutBuffer { dst: out.as_mut_ptr().add(len).cast(), size: out.capacity() - len, pos: 0 };
                    let left = check(ZSTD_compressStream2(c, &mut o, &mut input, if last { ZSTD_E_END } else { ZSTD_E_CONTINUE }), "compress")?;
                    out.set_len(len + o.pos);
                    if if last { left == 0 } else { input.pos == input.size } {
                        break;
                    }
                }
                if last {
                    return Ok((want, out));
                }
            }
        }
    })
}

fn check_level(level: i32) -> Result<()> {
    // SAFETY: plain functions without arguments.
    let (lo, hi) = unsafe { (ZSTD_minCLevel(), ZSTD_maxCLevel()) };
    if level < lo || level > hi {
        return Err(Error::new(ErrorCode::InvalidArgument, format!("zstd level must be in {lo}..={hi}, not {level}")));
    }
    Ok(())
}

struct Stream(*mut DStream);

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createDStream, freed once.
        unsafe { ZSTD_freeDStream(self.0) };
    }
}

/// Decompresses every frame in `src`; an error if the result would exceed
/// `max_out` bytes or the input ends inside a frame.
pub fn decompress(src: &[u8], max_out: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(max_out.min(src.len().saturating_mul(8)).max(64 * 1024));
    decompress_each(src, max_out, CHUNK, |chunk| {
        out.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(out)
}

/// What `decompress_each` hands on at a time: small enough to stay in cache
/// between zstd writing it and the consumer reading it.
const CHUNK: usize = 256 * 1024;

/// Decompresses every frame in `src`, handing the output to `sink` in
/// pieces of at most `chunk` bytes, in order; returns the total. An error
/// if it would exceed `max_out` bytes, if the input ends inside a frame, or
/// if `sink` fails (nothing more is decompressed then).
pub fn decompress_each(src: &[u8], max_out: usize, chunk: usize, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<usize> {
    // SAFETY: the stream is freed by Drop; buffers point into live slices, and
    // zstd writes only within out.size and reports what it wrote in out.pos.
    unsafe {
        let zds = ZSTD_createDStream();
        if zds.is_null() {
            return Err(Error::new(ErrorCode::Io, "zstd: cannot allocate a decompression stream".to_string()));
        }
        let zds = Stream(zds);
        check(ZSTD_initDStream(zds.0), "decompress")?;
        let mut buf = vec![0u8; chunk.max(1)];
        let mut input = InBuffer { src: src.as_ptr().cast(), size: src.len(), pos: 0 };
        let mut total = 0usize;
        let mut last = 0usize;
        loop {
            if total >= max_out {
                if input.pos == input.size && last == 0 {
                    break; // an exact fit: every frame ended, nothing left
                }
                // Full: only an exact fit is acceptable; probe for one more byte.
                let mut probe = [0u8; 1];
                let mut o = OutBuffer { dst: probe.as_mut_ptr().cast(), size: 1, pos: 0 };
                last = check(ZSTD_decompressStream(zds.0, &mut o, &mut input), "decompress")?;
                if o.pos > 0 {
                    return Err(Error::new(ErrorCode::Corrupt, format!("zstd: decompressed data exceeds {max_out} bytes")));
                }
                if input.pos == input.size {
                    break;
                }
                continue;
            }
            let room = buf.len().min(max_out - total);
            let mut o = OutBuffer { dst: buf.as_mut_ptr().cast(), size: room, pos: 0 };
            last = check(ZSTD_decompressStream(zds.0, &mut o, &mut input), "decompress")?;
            if o.pos > 0 {
                sink(&buf[..o.pos])?;
                total += o.pos;
            }
            // All input taken: done when the last frame is complete and flushed (0), cut
            // short when zstd wants more and could give nothing (checked below). Output
            // that stopped short of the room is no sign of the end: zstd may return after
            // each block with more still to flush.
            if input.pos == input.size && (last == 0 || o.pos == 0) {
                break;
            }
        }
        // Non-zero: zstd still expects input to finish the frame.
        if last != 0 {
            return Err(Error::new(ErrorCode::Corrupt, "zstd: the data ends inside a frame (truncated object)".to_string()));
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_like(n: usize) -> Vec<u8> {
        (0..n).map(|i| if i % 512 < 64 { (i * 31 % 251) as u8 } else { 0 }).collect()
    }

    #[test]
    fn roundtrip_and_ratio() {
        let src = wal_like(1 << 20);
        let z = compress(&src, 3).unwrap();
        assert!(z.len() * 3 < src.len(), "{} bytes from {}", z.len(), src.len());
        assert_eq!(&z[..4], &[0x28, 0xB5, 0x2F, 0xFD], "zstd frame magic");
        assert_eq!(decompress(&z, src.len()).unwrap(), src);
    }

    #[test]
    fn concatenated_frames_and_empty_input() {
        let a = wal_like(100_000);
        let b = vec![7u8; 50_000];
        let mut z = compress(&a, 1).unwrap();
        z.extend(compress(&b, 19).unwrap());
        let mut want = a.clone();
        want.extend(&b);
        assert_eq!(decompress(&z, 1 << 20).unwrap(), want);
        assert_eq!(decompress(&compress(&[], 3).unwrap(), 10).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_file_compresses_whole_or_padded_with_its_content_size() {
        let dir = std::env::temp_dir().join(format!("walcore-zstd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("seg");
        let src = wal_like(3 * (1 << 20) + 12345);
        std::fs::write(&p, &src).unwrap();
        let (n, z) = compress_file(&p, 3, None, None).unwrap();
        assert_eq!(n, src.len());
        assert_eq!(decompress(&z, src.len()).unwrap(), src);
        // The frame header carries the content size (Frame_Content_Size_flag set).
        assert_ne!(z[4] & 0xC0, 0, "content size in the frame header");
        let (n, z) = compress_file(&p, 3, Some(100_000), Some(1 << 21)).unwrap();
        assert_eq!(n, 100_000);
        let d = decompress(&z, 1 << 21).unwrap();
        assert_eq!(d.len(), 1 << 21);
        assert_eq!(&d[..100_000], &src[..100_000]);
        assert!(d[100_000..].iter().all(|&b| b == 0));
        // A prefix without padding (compressed in one call from the mapped file, like a whole segment).
        let (n, z) = compress_file(&p, 3, Some(100_000), None).unwrap();
        assert_eq!(n, 100_000);
        assert_eq!(decompress(&z, 1 << 21).unwrap(), &src[..100_000]);
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        let (n, z) = compress_file(&empty, 3, None, None).unwrap();
        assert_eq!((n, decompress(&z, 10).unwrap()), (0, vec![]));
        assert_eq!(compress_file(&p, 3, Some(src.len() + 1), None).unwrap_err().code, ErrorCode::InvalidArgument);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_limit_far_above_the_size_decompresses_whole() {
        // (a segment read back with the largest segment size as its limit: the output
        // grows past its first allocation while zstd returns block by block)
        let mut src = vec![7u8; 1 << 20];
        src[..5].copy_from_slice(b"hello");
        let z = compress(&src, 3).unwrap();
        for max in [1 << 20, 1 << 24, 1 << 30] {
            assert_eq!(decompress(&z, max).unwrap(), src, "limit {max}");
        }
        let w = wal_like(3 << 20);
        assert_eq!(decompress(&compress(&w, 3).unwrap(), 1 << 30).unwrap(), w);
    }

    #[test]
    fn refuses_truncation_corruption_oversize_and_bad_level() {
        let src = wal_like(300_000);
        let z = compress(&src, 3).unwrap();
        let e = decompress(&z[..z.len() - 10], 1 << 20).unwrap_err();
        assert_eq!(e.code, ErrorCode::Corrupt, "{e}");
        let mut bad = z.clone();
        bad[0] ^= 0xFF;
        assert_eq!(decompress(&bad, 1 << 20).unwrap_err().code, ErrorCode::Corrupt);
        let e = decompress(&z, src.len() - 1).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        assert_eq!(decompress(&z, src.len()).unwrap().len(), src.len());
        assert_eq!(compress(&src, 99).unwrap_err().code, ErrorCode::InvalidArgument);
    }
}
