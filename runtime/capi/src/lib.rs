//! signrt's C ABI: [`signrt_runtime::recognizer`] behind opaque handles, for
//! kiosk and handheld applications in C, C++, Python (ctypes) or Kotlin (JNI).
//!
//! Rules every function keeps:
//! - a function that can fail returns a [`SignrtStatus`]; on failure
//!   [`signrt_last_error`] gives the message, for the calling thread;
//! - no panic crosses the boundary: one is caught and becomes
//!   `SIGNRT_STATUS_PANIC`;
//! - handles are created and destroyed here; a NULL handle is an
//!   `SIGNRT_STATUS_INVALID_ARGUMENT`, never a crash;
//! - strings given to the caller are freed with [`signrt_string_free`].
//!
//! `include/signrt.h` is generated from this file by cbindgen.

#![allow(clippy::missing_safety_doc)] // the safety rules are the header's, stated above

use signrt_runtime::endpoint::EndpointConfig;
use signrt_runtime::recognizer::{
    FrameRef, PixelFormat, Recognizer, RecognizerError, RecognizerOptions, Stream, MAX_SIDE,
};
use signrt_runtime::Precision;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// What a call did.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignrtStatus {
    Ok = 0,
    /// A NULL pointer, a bad option or a bad frame description.
    InvalidArgument = 1,
    /// The bundle directory cannot be opened or fails its checks.
    Bundle = 2,
    /// A frame's pixels cannot be used (size, stride, plane too short).
    Frame = 3,
    /// Recognition failed (the model, or the memory budget was passed).
    Pipeline = 4,
    /// The call does not fit the stream's state (a frame after input_finished).
    State = 5,
    /// A bug in signrt: a panic was caught at the boundary.
    Panic = 6,
}

/// Pixel layouts of [`SignrtFrame`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignrtPixelFormat {
    /// Packed R, G, B bytes in plane 0.
    Rgb24 = 0,
    /// Packed 4:2:2, Y0 U Y1 V, in plane 0 (most USB cameras).
    Yuyv = 1,
    /// Planar 4:2:0: Y, U, V in planes 0, 1, 2.
    I420 = 2,
}

/// How a recogniser decodes. Start from `signrt_options_default`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SignrtOptions {
    /// CTC beam width; 1 = greedy (glosses arrive sooner).
    pub beam: u32,
    /// Non-zero: endpointing on (sentence events and a fresh start after each).
    pub endpoint: i32,
    /// Endpoint rule 1, seconds: rest that ends an utterance with nothing signed.
    pub rest_without_sign: f32,
    /// Endpoint rule 2, seconds: rest after signing that ends the sentence.
    pub rest_after_sign: f32,
    /// Endpoint rule 3, seconds: the longest utterance.
    pub max_utterance: f32,
    /// Bytes; 0 = no budget.
    pub memory_budget: u64,
    /// Frame rate of the frames you push.
    pub fps: f32,
    /// Non-zero: `partial` events (glosses not final yet) among the events.
    pub partials: i32,
    /// Frames of right context a posterior waits for before its glosses are
    /// final; fewer: final glosses sooner. -1: the default (half the bundle's
    /// stride).
    pub lookahead: i32,
    /// Which of the bundle's graphs run: 0 = auto (int8 on CPUs with int8 dot
    /// products, else f32), 1 = f32, 2 = int8.
    pub precision: i32,
}

/// One frame, borrowed for the call only. `format` is a [`SignrtPixelFormat`].
/// `strides` are bytes per row of each plane (0: the row's own bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SignrtFrame {
    pub format: i32,
    pub width: u32,
    pub height: u32,
    pub planes: [*const u8; 3],
    pub strides: [u32; 3],
    /// Non-zero: YUV in full range (0-255) instead of video range.
    pub full_range: i32,
}

/// A loaded bundle and its options.
pub struct SignrtRecognizer(Recognizer);

/// One input, fed frame by frame.
pub struct SignrtStream(Stream);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

type Failure = (SignrtStatus, String);

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning its failure or panic into a status and a message.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> SignrtStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SignrtStatus::Ok,
        Ok(Err((code, msg))) => {
            set_error(&msg);
            code
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(&format!(
                "internal error (a bug in signrt, please report): {what}"
            ));
            SignrtStatus::Panic
        }
    }
}

fn invalid(msg: impl Into<String>) -> Failure {
    (SignrtStatus::InvalidArgument, msg.into())
}

fn failure(e: RecognizerError) -> Failure {
    let code = match &e {
        RecognizerError::Bundle(_) => SignrtStatus::Bundle,
        RecognizerError::Frame { .. } => SignrtStatus::Frame,
        RecognizerError::Pipeline(_) => SignrtStatus::Pipeline,
        RecognizerError::Endpoint(_) | RecognizerError::Options(_) => SignrtStatus::InvalidArgument,
        RecognizerError::Finished => SignrtStatus::State,
    };
    (code, e.to_string())
}

/// `&mut T` from a handle, or an error naming the argument.
unsafe fn handle<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    p.as_mut().ok_or_else(|| invalid(format!("{what} is NULL")))
}

fn give_string(s: String, out: *mut *mut c_char) -> Result<(), Failure> {
    if out.is_null() {
        return Err(invalid("the output pointer is NULL"));
    }
    let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
    unsafe { *out = c.into_raw() };
    Ok(())
}

/// The message of the last failed call on this thread ("" if none). Valid
/// until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn signrt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// signrt's version, e.g. "0.1.0" (static; do not free).
#[no_mangle]
pub extern "C" fn signrt_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Fills `options` with the defaults: beam 5, endpointing on with the
/// runtime's default rules, no memory budget, 25 fps, partial results on.
#[no_mangle]
pub unsafe extern "C" fn signrt_options_default(options: *mut SignrtOptions) -> SignrtStatus {
    guard(|| {
        let o = handle(options, "options")?;
        let d = RecognizerOptions::default();
        let e = d.endpoint.unwrap_or_default();
        *o = SignrtOptions {
            beam: d.beam as u32,
            endpoint: 1,
            rest_without_sign: e.rest_without_sign,
            rest_after_sign: e.rest_after_sign,
            max_utterance: e.max_utterance,
            memory_budget: 0,
            fps: d.fps,
            partials: i32::from(d.partials),
            lookahead: d.lookahead.map_or(-1, |n| n as i32),
            precision: 0,
        };
        Ok(())
    })
}

/// Opens the bundle directory `bundle_dir` (UTF-8 path). `options` may be
/// NULL for the defaults. On success `*out` is a recogniser to destroy with
/// `signrt_recognizer_destroy`.
#[no_mangle]
pub unsafe extern "C" fn signrt_recognizer_create(
    bundle_dir: *const c_char,
    options: *const SignrtOptions,
    out: *mut *mut SignrtRecognizer,
) -> SignrtStatus {
    guard(|| {
        if bundle_dir.is_null() || out.is_null() {
            return Err(invalid("bundle_dir and out must not be NULL"));
        }
        let dir = CStr::from_ptr(bundle_dir)
            .to_str()
            .map_err(|_| invalid("bundle_dir is not UTF-8"))?;
        let opts = match options.as_ref() {
            Some(o) => RecognizerOptions {
                beam: o.beam as usize,
                endpoint: (o.endpoint != 0).then_some(EndpointConfig {
                    rest_without_sign: o.rest_without_sign,
                    rest_after_sign: o.rest_after_sign,
                    max_utterance: o.max_utterance,
                }),
                memory_budget: (o.memory_budget > 0).then_some(o.memory_budget as usize),
                fps: o.fps,
                partials: o.partials != 0,
                lookahead: usize::try_from(o.lookahead).ok(),
                precision: match o.precision {
                    0 => Precision::Auto,
                    1 => Precision::F32,
                    2 => Precision::Int8,
                    p => {
                        return Err(invalid(format!(
                            "precision {p}: 0 (auto), 1 (f32) or 2 (int8)"
                        )))
                    }
                },
            },
            None => RecognizerOptions::default(),
        };
        let r = Recognizer::new(Path::new(dir), opts).map_err(failure)?;
        *out = Box::into_raw(Box::new(SignrtRecognizer(r)));
        Ok(())
    })
}

/// Frees a recogniser (NULL is ignored). Its streams stay usable.
#[no_mangle]
pub unsafe extern "C" fn signrt_recognizer_destroy(recognizer: *mut SignrtRecognizer) {
    if !recognizer.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(recognizer))));
    }
}

/// A new stream of `recognizer`: loads the graphs and checks the memory
/// budget. Destroy it with `signrt_stream_destroy`.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_create(
    recognizer: *const SignrtRecognizer,
    out: *mut *mut SignrtStream,
) -> SignrtStatus {
    guard(|| {
        let r = recognizer
            .as_ref()
            .ok_or_else(|| invalid("recognizer is NULL"))?;
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let s = r.0.create_stream().map_err(failure)?;
        *out = Box::into_raw(Box::new(SignrtStream(s)));
        Ok(())
    })
}

/// Frees a stream (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_destroy(stream: *mut SignrtStream) {
    if !stream.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(stream))));
    }
}

/// Borrows a C frame as a [`FrameRef`]; plane lengths follow from the
/// format, size and strides (the caller promises that much memory).
unsafe fn frame_ref(f: &SignrtFrame) -> Result<FrameRef<'_>, Failure> {
    let format = match f.format {
        0 => PixelFormat::Rgb24,
        1 => PixelFormat::Yuyv,
        2 => PixelFormat::I420,
        n => {
            return Err(invalid(format!(
                "frame format {n} is not a SignrtPixelFormat"
            )))
        }
    };
    let (w, h) = (f.width as usize, f.height as usize);
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(invalid(format!("frame size {w}x{h} is not a frame size")));
    }
    let mut planes: [&[u8]; 3] = [&[]; 3];
    for (i, &(row, n)) in format.plane_shapes(w, h).iter().enumerate() {
        if n == 0 {
            continue;
        }
        if f.planes[i].is_null() {
            return Err(invalid(format!("frame plane {i} is NULL")));
        }
        let stride = (f.strides[i] as usize).max(row);
        planes[i] = std::slice::from_raw_parts(f.planes[i], stride * (n - 1) + row);
    }
    Ok(FrameRef {
        format,
        width: w,
        height: h,
        planes,
        strides: f.strides.map(|s| s as usize),
        full_range: f.full_range != 0,
    })
}

/// Takes one frame (copied and converted before the call returns). With
/// several frames waiting, decodes one first, so memory stays bounded.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_accept_frame(
    stream: *mut SignrtStream,
    frame: *const SignrtFrame,
) -> SignrtStatus {
    guard(|| {
        let s = handle(stream, "stream")?;
        let f = frame.as_ref().ok_or_else(|| invalid("frame is NULL"))?;
        let f = frame_ref(f)?;
        s.0.accept_frame(&f).map_err(failure)
    })
}

/// 1 while `signrt_stream_decode` has work, 0 when not, -1 for a NULL stream.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_is_ready(stream: *const SignrtStream) -> i32 {
    stream.as_ref().map_or(-1, |s| s.0.is_ready() as i32)
}

/// Decodes one waiting frame (or, after input_finished, the rest).
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_decode(stream: *mut SignrtStream) -> SignrtStatus {
    guard(|| handle(stream, "stream")?.0.decode().map_err(failure))
}

/// No more frames will come; decode the rest with `signrt_stream_decode`.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_input_finished(stream: *mut SignrtStream) -> SignrtStatus {
    guard(|| {
        handle(stream, "stream")?.0.input_finished();
        Ok(())
    })
}

/// 1 when a sentence has ended (and reset has not been called), 0 when not,
/// -1 for a NULL stream.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_is_endpoint(stream: *const SignrtStream) -> i32 {
    stream.as_ref().map_or(-1, |s| s.0.is_endpoint() as i32)
}

/// Starts the next utterance (see `signrt_runtime::recognizer::Stream::reset`).
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_reset(stream: *mut SignrtStream) -> SignrtStatus {
    guard(|| handle(stream, "stream")?.0.reset().map_err(failure))
}

/// `*out` = the result's glosses, space-separated: the sentence that ended
/// while is_endpoint, otherwise the utterance in progress. Free with
/// `signrt_string_free`.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_result_text(
    stream: *const SignrtStream,
    out: *mut *mut c_char,
) -> SignrtStatus {
    guard(|| {
        let s = stream.as_ref().ok_or_else(|| invalid("stream is NULL"))?;
        give_string(s.0.result().text, out)
    })
}

/// `*out` = the result as JSON: `{"text", "glosses": [gloss events], "is_endpoint"}`.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_result_json(
    stream: *const SignrtStream,
    out: *mut *mut c_char,
) -> SignrtStatus {
    guard(|| {
        let s = stream.as_ref().ok_or_else(|| invalid("stream is NULL"))?;
        let json = serde_json::to_string(&s.0.result()).unwrap_or_default();
        give_string(json, out)
    })
}

/// `*out` = the events since the last call, one JSON object a line, as
/// `signrt run --format jsonl` prints them (docs/output-schema.md); "" if none.
#[no_mangle]
pub unsafe extern "C" fn signrt_stream_take_events_jsonl(
    stream: *mut SignrtStream,
    out: *mut *mut c_char,
) -> SignrtStatus {
    guard(|| {
        let s = handle(stream, "stream")?;
        let mut text = String::new();
        for e in s.0.take_events() {
            text.push_str(&e.to_jsonl().to_string());
            text.push('\n');
        }
        give_string(text, out)
    })
}

/// Frees a string this library returned (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn signrt_string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}
