//! Frame sources: everything that yields RGB frames to the pipeline.
//!
//! The pipeline sees only the [`FrameSource`] trait, so every layer above the
//! V4L2 ioctls is tested with folders and Y4M streams, without a camera.

use crate::natural::natural_cmp;
use crate::y4m::{Y4mError, Y4mReader};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no frames (.jpg, .jpeg or .png) in this folder")]
    EmptyFolder { path: PathBuf },
    #[error("{path}: not a folder")]
    NotAFolder { path: PathBuf },
    #[error("{path}: cannot decode image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: frame is {got_w}x{got_h}, but the stream's frames are {want_w}x{want_h}")]
    SizeChanged {
        path: PathBuf,
        got_w: usize,
        got_h: usize,
        want_w: usize,
        want_h: usize,
    },
    #[error(transparent)]
    Y4m(#[from] Y4mError),
    #[error("{0}")]
    Device(String),
}

/// One RGB8 frame, row-major, `width * height * 3` bytes. Reused between calls.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    /// The source's restart count when it made this frame: a frame whose epoch
    /// differs from the one before starts a new stream (a camera reconnected).
    pub epoch: u64,
}

/// A source of frames of one fixed size.
pub trait FrameSource {
    /// Fills `frame` with the next frame; Ok(false) at the end of the stream.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, SourceError>;
    /// Frame size, once known (before the first frame for most sources).
    fn size(&self) -> Option<(usize, usize)>;
    /// The source's nominal frame rate, if it has one.
    fn fps(&self) -> Option<f32>;
    /// True for live sources (a camera), which keep running whether or not we
    /// keep up: the pipeline drops frames for them instead of queueing.
    fn is_live(&self) -> bool {
        false
    }
    /// For messages: the path or device.
    fn name(&self) -> String;
}

/// Lists a folder's frames (.jpg/.jpeg/.png, any case) in natural order.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    if !dir.is_dir() {
        return Err(SourceError::NotAFolder { path: dir.into() });
    }
    let rd = std::fs::read_dir(dir).map_err(|source| SourceError::Io {
        path: dir.into(),
        source,
    })?;
    let mut files = Vec::new();
    for e in rd {
        let e = e.map_err(|source| SourceError::Io {
            path: dir.into(),
            source,
        })?;
        let p = e.path();
        let ext = p
            .extension()
            .and_then(|x| x.to_str())
            .map(|x| x.to_ascii_lowercase())
            .unwrap_or_default();
        if p.is_file() && matches!(ext.as_str(), "jpg" | "jpeg" | "png") {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(SourceError::EmptyFolder { path: dir.into() });
    }
    files.sort_by(|a, b| {
        natural_cmp(
            &a.file_name().unwrap_or_default().to_string_lossy(),
            &b.file_name().unwrap_or_default().to_string_lossy(),
        )
    });
    Ok(files)
}

/// Decodes one image file to RGB8.
pub fn decode_rgb(path: &Path, frame: &mut Frame) -> Result<(), SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Io {
        path: path.into(),
        source,
    })?;
    let img = image::load_from_memory(&bytes).map_err(|e| SourceError::Decode {
        path: path.into(),
        message: e.to_string(),
    })?;
    let rgb = img.into_rgb8();
    frame.width = rgb.width() as usize;
    frame.height = rgb.height() as usize;
    frame.rgb.clear();
    frame.rgb.extend_from_slice(rgb.as_raw());
    Ok(())
}

/// A folder of frames, in the seed's layout (`frame_0001.jpg`, ...).
pub struct FolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    size: Option<(usize, usize)>,
    fps: f32,
}

impl FolderSource {
    /// `fps` is the nominal rate used for timestamps (folders have none).
    pub fn open(dir: &Path, fps: f32) -> Result<Self, SourceError> {
        let files = list_frames(dir)?;
        // read the first frame's size without decoding the pixels
        let size = image::image_dimensions(&files[0])
            .map(|(w, h)| (w as usize, h as usize))
            .map_err(|e| SourceError::Decode {
                path: files[0].clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            dir: dir.into(),
            files,
            next: 0,
            size: Some(size),
            fps,
        })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

impl FrameSource for FolderSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, SourceError> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(false);
        };
        decode_rgb(path, frame)?;
        if let Some((w, h)) = self.size {
            if (frame.width, frame.height) != (w, h) {
                return Err(SourceError::SizeChanged {
                    path: path.clone(),
                    got_w: frame.width,
                    got_h: frame.height,
                    want_w: w,
                    want_h: h,
                });
            }
        }
        self.next += 1;
        Ok(true)
    }

    fn size(&self) -> Option<(usize, usize)> {
        self.size
    }

    fn fps(&self) -> Option<f32> {
        Some(self.fps)
    }

    fn name(&self) -> String {
        self.dir.display().to_string()
    }
}

/// A Y4M stream from a file or stdin.
pub struct Y4mSource {
    reader: Y4mReader<Box<dyn BufRead + Send>>,
    name: String,
}

impl Y4mSource {
    pub fn open_file(path: &Path) -> Result<Self, SourceError> {
        let f = std::fs::File::open(path).map_err(|source| SourceError::Io {
            path: path.into(),
            source,
        })?;
        let name = path.display().to_string();
        let r: Box<dyn BufRead + Send> = Box::new(std::io::BufReader::with_capacity(1 << 20, f));
        Ok(Self {
            reader: Y4mReader::new(r, &name)?,
            name,
        })
    }

    pub fn stdin() -> Result<Self, SourceError> {
        let r: Box<dyn BufRead + Send> =
            Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()));
        Ok(Self {
            reader: Y4mReader::new(r, "stdin")?,
            name: "stdin".into(),
        })
    }

    /// Y4M on stdin, read on a thread of its own ([`StoppableReader`]), so that
    /// setting `stop` ends the stream even while the writer is silent.
    pub fn stdin_stoppable(stop: Arc<AtomicBool>) -> Result<Self, SourceError> {
        let r = StoppableReader::spawn(std::io::stdin(), stop);
        let r: Box<dyn BufRead + Send> = Box::new(std::io::BufReader::with_capacity(1 << 20, r));
        Ok(Self {
            reader: Y4mReader::new(r, "stdin")?,
            name: "stdin".into(),
        })
    }

    pub fn from_reader(r: Box<dyn BufRead + Send>, name: &str) -> Result<Self, SourceError> {
        Ok(Self {
            reader: Y4mReader::new(r, name)?,
            name: name.into(),
        })
    }
}

impl FrameSource for Y4mSource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, SourceError> {
        let h = self.reader.header();
        frame.width = h.width;
        frame.height = h.height;
        Ok(self.reader.next_rgb(&mut frame.rgb)?)
    }

    fn size(&self) -> Option<(usize, usize)> {
        let h = self.reader.header();
        Some((h.width, h.height))
    }

    fn fps(&self) -> Option<f32> {
        self.reader.header().fps_f32()
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// Bytes a [`StoppableReader`] reads at a time, and chunks in flight.
const CHUNK: usize = 1 << 16;
const CHUNKS: usize = 4;

/// A reader over another reader (a pipe) that runs on its own thread, so that
/// a stop request is seen even while the writer is silent: `read` waits for
/// data a little at a time and between waits checks `stop`, and once it is set
/// fails with [`StoppableReader::STOPPED`]. The thread is left blocked in its
/// read when the stream stops (it ends with the process). Chunks are recycled:
/// steady reading allocates nothing.
pub struct StoppableReader {
    rx: Receiver<std::io::Result<Vec<u8>>>,
    free: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    stop: Arc<AtomicBool>,
}

impl StoppableReader {
    /// The message of the error `read` returns once stopped.
    pub const STOPPED: &'static str = "stopped";

    pub fn spawn<R: Read + Send + 'static>(mut inner: R, stop: Arc<AtomicBool>) -> Self {
        let (tx, rx) = sync_channel::<std::io::Result<Vec<u8>>>(CHUNKS);
        // every chunk is made here, once: the reader waits for a free one
        let (free, free_rx) = sync_channel::<Vec<u8>>(CHUNKS + 2);
        for _ in 0..CHUNKS + 2 {
            let _ = free.try_send(vec![0u8; CHUNK]);
        }
        let reader = move || {
            while let Ok(mut chunk) = free_rx.recv() {
                chunk.resize(CHUNK, 0);
                let read = loop {
                    match inner.read(&mut chunk) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        r => break r,
                    }
                };
                let more = match read {
                    Ok(n) => {
                        chunk.truncate(n);
                        tx.send(Ok(chunk)).is_ok() && n > 0
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        false
                    }
                };
                if !more {
                    break;
                }
            }
        };
        // a failed spawn leaves `rx` disconnected: read() then reports it
        let _ = std::thread::Builder::new()
            .name("signrt-read".into())
            .spawn(reader);
        Self {
            rx,
            free,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            stop,
        }
    }
}

impl Read for StoppableReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.eof {
                return Ok(0);
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(std::io::Error::other(Self::STOPPED));
            }
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(c)) => {
                    self.eof = c.is_empty();
                    let old = std::mem::replace(&mut self.buf, c);
                    if old.capacity() > 0 {
                        let _ = self.free.try_send(old);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(std::io::Error::other("the reading thread ended"))
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Frames held in memory, replayed `count` times in a cycle (benchmarks, tests).
pub struct MemorySource {
    frames: Vec<Frame>,
    count: usize,
    next: usize,
    fps: f32,
}

impl MemorySource {
    /// `frames` must be non-empty and all of one size.
    pub fn new(frames: Vec<Frame>, count: usize, fps: f32) -> Self {
        Self {
            frames,
            count,
            next: 0,
            fps,
        }
    }
}

impl FrameSource for MemorySource {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, SourceError> {
        if self.next >= self.count || self.frames.is_empty() {
            return Ok(false);
        }
        let f = &self.frames[self.next % self.frames.len()];
        frame.width = f.width;
        frame.height = f.height;
        frame.rgb.clear();
        frame.rgb.extend_from_slice(&f.rgb);
        self.next += 1;
        Ok(true)
    }

    fn size(&self) -> Option<(usize, usize)> {
        self.frames.first().map(|f| (f.width, f.height))
    }

    fn fps(&self) -> Option<f32> {
        Some(self.fps)
    }

    fn name(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, v: u8) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([v, x as u8, y as u8]));
        img.save(path).unwrap();
    }

    #[test]
    fn folder_in_natural_order_with_errors() {
        let d = tempfile::tempdir().unwrap();
        for (name, v) in [("frame_10.png", 10), ("frame_2.png", 2), ("frame_1.PNG", 1)] {
            write_png(&d.path().join(name), 4, 3, v);
        }
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        let mut s = FolderSource::open(d.path(), 25.0).unwrap();
        assert_eq!(s.size(), Some((4, 3)));
        let mut f = Frame::default();
        let mut seen = Vec::new();
        while s.next_frame(&mut f).unwrap() {
            seen.push(f.rgb[0]);
            assert_eq!(&f.rgb[3..6], &[f.rgb[0], 1, 0]);
        }
        assert_eq!(seen, [1, 2, 10]);

        let empty = tempfile::tempdir().unwrap();
        let e = FolderSource::open(empty.path(), 25.0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no frames"), "{e}");

        std::fs::write(d.path().join("frame_3.png"), b"\x89PNG garbage").unwrap();
        let mut s = FolderSource::open(d.path(), 25.0).unwrap();
        let mut err = None;
        loop {
            match s.next_frame(&mut f) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        let e = err.expect("corrupt frame must fail");
        assert!(e.contains("frame_3.png") && e.contains("decode"), "{e}");
    }
}
