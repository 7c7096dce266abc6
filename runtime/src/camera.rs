//! V4L2 camera capture.
//!
//! Everything above the ioctls is plain code tested without a camera: the
//! choice of pixel format, YUYV and MJPEG conversion to RGB, and the retry
//! policy for a camera that cannot be opened or disappears mid-stream. The
//! device itself (format negotiation, mmap streaming) needs the `v4l2` cargo
//! feature (on by default; its bindings are pre-generated: no libclang needed).

use std::time::Duration;

/// Pixel formats we can convert, in order of preference: YUYV converts with
/// no decoding; MJPEG needs a JPEG decode per frame but is all many USB
/// cameras offer at higher resolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Yuyv,
    Mjpeg,
}

impl PixelFormat {
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }
}

/// Picks the format to request from the ones a device offers.
pub fn choose_format(offered: &[[u8; 4]]) -> Option<PixelFormat> {
    [PixelFormat::Yuyv, PixelFormat::Mjpeg]
        .into_iter()
        .find(|f| offered.contains(&f.fourcc()))
}

/// YUYV (4:2:2, Y0 U Y1 V) to RGB8, BT.601 limited range. `stride` is the
/// device's bytes per line (>= 2·width). Returns false if `src` is too short.
pub fn yuyv_to_rgb(
    src: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    rgb: &mut Vec<u8>,
) -> bool {
    let stride = stride.max(width * 2);
    if width == 0 || height == 0 || src.len() < stride * (height - 1) + width * 2 {
        return false;
    }
    rgb.resize(width * height * 3, 0);
    let conv = |y: u8, u: f32, v: f32, out: &mut [u8]| {
        let yy = (y as f32 - 16.0) * (255.0 / 219.0);
        out[0] = (yy + 1.596_027 * v).round().clamp(0.0, 255.0) as u8;
        out[1] = (yy - 0.391_762 * u - 0.812_968 * v)
            .round()
            .clamp(0.0, 255.0) as u8;
        out[2] = (yy + 2.017_232 * u).round().clamp(0.0, 255.0) as u8;
    };
    for row in 0..height {
        let line = &src[row * stride..row * stride + width * 2];
        for x in 0..width {
            let pair = &line[(x / 2) * 4..(x / 2) * 4 + 4];
            let y = if x % 2 == 0 { pair[0] } else { pair[2] };
            let (u, v) = (pair[1] as f32 - 128.0, pair[3] as f32 - 128.0);
            let o = (row * width + x) * 3;
            conv(y, u, v, &mut rgb[o..o + 3]);
        }
    }
    true
}

/// Decodes one MJPEG frame to RGB8; returns (width, height).
pub fn mjpeg_to_rgb(src: &[u8], rgb: &mut Vec<u8>) -> Result<(usize, usize), String> {
    let img = image::load_from_memory_with_format(src, image::ImageFormat::Jpeg)
        .map_err(|e| e.to_string())?;
    let img = img.into_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    rgb.clear();
    rgb.extend_from_slice(img.as_raw());
    Ok((w, h))
}

/// Retry with exponential backoff: `attempts` tries, waiting `first`, 2·first, ...
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempts: 5,
            first: Duration::from_millis(200),
            max: Duration::from_secs(3),
        }
    }
}

impl Backoff {
    /// Runs `f` until it succeeds or the attempts are spent; returns the last
    /// error and how many attempts were made.
    pub fn retry<T, E>(&self, mut f: impl FnMut(u32) -> Result<T, E>) -> Result<T, (E, u32)> {
        let mut wait = self.first;
        let mut n = 0;
        loop {
            n += 1;
            match f(n) {
                Ok(v) => return Ok(v),
                Err(e) if n >= self.attempts.max(1) => return Err((e, n)),
                Err(_) => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(self.max);
                }
            }
        }
    }
}

/// The V4L2 devices present (`/dev/video*`), in natural order.
pub fn video_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("video"))
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| crate::natural::natural_cmp(a, b));
    v
}

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CameraConfig {
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub backoff: Backoff,
}

#[cfg(feature = "v4l2")]
mod device {
    use super::*;
    use crate::source::{Frame, FrameSource, SourceError};
    use v4l::buffer::Type;
    use v4l::io::mmap::Stream;
    use v4l::io::traits::CaptureStream;
    use v4l::video::Capture;
    use v4l::{Device, FourCC};

    /// A V4L2 camera with mmap streaming.
    pub struct V4l2Source {
        cfg: CameraConfig,
        stream: Option<Stream<'static>>,
        dev: Option<Device>,
        format: PixelFormat,
        width: usize,
        height: usize,
        stride: usize,
        fps: Option<f32>,
        /// Reconnections so far (the frames' epoch).
        epoch: u64,
    }

    fn dev_err(path: &str, what: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Device(format!("{path}: {what}: {e}"))
    }

    impl V4l2Source {
        /// Opens the device (retrying with backoff), negotiates YUYV or MJPEG at
        /// the requested size and rate, and starts mmap streaming.
        pub fn open(cfg: CameraConfig) -> Result<Self, SourceError> {
            let mut me = Self {
                cfg,
                stream: None,
                dev: None,
                format: PixelFormat::Yuyv,
                width: 0,
                height: 0,
                stride: 0,
                fps: None,
                epoch: 0,
            };
            me.connect()?;
            Ok(me)
        }

        fn connect(&mut self) -> Result<(), SourceError> {
            let path = self.cfg.path.clone();
            let backoff = self.cfg.backoff;
            let r = backoff.retry(|n| {
                if n > 1 {
                    log::warn!("{path}: retrying ({n}/{})", backoff.attempts);
                }
                self.try_connect()
            });
            r.map_err(|(e, n)| {
                SourceError::Device(format!(
                    "{e} (gave up after {n} attempts; is the camera plugged in, and is your user in the `video` group?)"
                ))
            })
        }

        fn try_connect(&mut self) -> Result<(), SourceError> {
            let path = &self.cfg.path;
            self.stream = None;
            self.dev = None;
            let dev = Device::with_path(path).map_err(|e| dev_err(path, "cannot open", e))?;
            let offered: Vec<[u8; 4]> = dev
                .enum_formats()
                .map_err(|e| dev_err(path, "cannot list formats", e))?
                .iter()
                .map(|d| d.fourcc.repr)
                .collect();
            let fmt = choose_format(&offered).ok_or_else(|| {
                dev_err(
                    path,
                    "no supported pixel format",
                    format!(
                        "offers {:?}, signrt reads YUYV or MJPG",
                        offered
                            .iter()
                            .map(|f| String::from_utf8_lossy(f).into_owned())
                            .collect::<Vec<_>>()
                    ),
                )
            })?;
            let mut want = dev
                .format()
                .map_err(|e| dev_err(path, "cannot read format", e))?;
            want.width = self.cfg.width;
            want.height = self.cfg.height;
            want.fourcc = FourCC::new(&fmt.fourcc());
            let got = dev
                .set_format(&want)
                .map_err(|e| dev_err(path, "cannot set format", e))?;
            if got.fourcc.repr != fmt.fourcc() {
                return Err(dev_err(
                    path,
                    "format refused",
                    format!("asked {:?}, got {}", fmt, got.fourcc),
                ));
            }
            if self.cfg.fps > 0 {
                if let Err(e) =
                    dev.set_params(&v4l::video::capture::Parameters::with_fps(self.cfg.fps))
                {
                    log::warn!("{path}: cannot set {} fps: {e}", self.cfg.fps);
                }
            }
            self.fps = dev
                .params()
                .ok()
                .filter(|p| p.interval.numerator > 0)
                .map(|p| p.interval.denominator as f32 / p.interval.numerator as f32);
            let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
                .map_err(|e| dev_err(path, "cannot start mmap streaming", e))?;
            stream.set_timeout(Duration::from_secs(2));
            self.format = fmt;
            self.width = got.width as usize;
            self.height = got.height as usize;
            self.stride = got.stride as usize;
            self.stream = Some(stream);
            self.dev = Some(dev);
            log::info!(
                "{path}: {}x{} {:?} at {:?} fps",
                self.width,
                self.height,
                self.format,
                self.fps
            );
            Ok(())
        }
    }

    /// The pixel formats a device offers (fourcc codes), for `signrt doctor`.
    pub fn offered_formats(path: &str) -> Result<Vec<String>, SourceError> {
        let dev = Device::with_path(path).map_err(|e| dev_err(path, "cannot open", e))?;
        Ok(dev
            .enum_formats()
            .map_err(|e| dev_err(path, "cannot list formats", e))?
            .iter()
            .map(|d| String::from_utf8_lossy(&d.fourcc.repr).into_owned())
            .collect())
    }

    impl FrameSource for V4l2Source {
        fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, SourceError> {
            loop {
                let (fmt, w, h, stride) = (self.format, self.width, self.height, self.stride);
                let path = &self.cfg.path;
                let outcome = match self.stream.as_mut() {
                    None => Err(std::io::Error::other("not streaming")),
                    Some(s) => s.next().map(|(buf, meta)| {
                        let used = meta.bytesused as usize;
                        let data = if used == 0 || used > buf.len() {
                            buf
                        } else {
                            &buf[..used]
                        };
                        match fmt {
                            PixelFormat::Yuyv => {
                                if yuyv_to_rgb(data, w, h, stride, &mut frame.rgb) {
                                    frame.width = w;
                                    frame.height = h;
                                    true
                                } else {
                                    log::warn!("{path}: short YUYV frame skipped");
                                    false
                                }
                            }
                            PixelFormat::Mjpeg => match mjpeg_to_rgb(data, &mut frame.rgb) {
                                Ok((fw, fh)) => {
                                    frame.width = fw;
                                    frame.height = fh;
                                    true
                                }
                                Err(e) => {
                                    log::warn!("{path}: bad MJPEG frame skipped: {e}");
                                    false
                                }
                            },
                        }
                    }),
                };
                match outcome {
                    Ok(true) => {
                        frame.epoch = self.epoch;
                        return Ok(true);
                    }
                    Ok(false) => continue,
                    Err(e) => {
                        // unplugged or stalled: reconnect with backoff, then give up;
                        // the frames after a reconnect start a new stream (its
                        // format may differ)
                        log::warn!("{}: capture failed ({e}); reconnecting", self.cfg.path);
                        self.connect()?;
                        self.epoch += 1;
                    }
                }
            }
        }

        fn size(&self) -> Option<(usize, usize)> {
            Some((self.width, self.height))
        }

        fn fps(&self) -> Option<f32> {
            self.fps
        }

        fn is_live(&self) -> bool {
            true
        }

        fn name(&self) -> String {
            self.cfg.path.clone()
        }
    }
}

#[cfg(feature = "v4l2")]
pub use device::{offered_formats, V4l2Source};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_preference() {
        assert_eq!(
            choose_format(&[*b"MJPG", *b"YUYV"]),
            Some(PixelFormat::Yuyv)
        );
        assert_eq!(
            choose_format(&[*b"MJPG", *b"H264"]),
            Some(PixelFormat::Mjpeg)
        );
        assert_eq!(choose_format(&[*b"H264"]), None);
    }

    #[test]
    fn yuyv_matches_y4m_422_conversion() {
        // The same 4:2:2 picture through our Y4M reader (planar 422) is an
        // independent implementation of the same BT.601 limited-range maths.
        let (w, h) = (4usize, 2usize);
        let ys = [16u8, 80, 235, 120, 50, 60, 70, 200];
        let us = [128u8, 90, 200, 30];
        let vs = [128u8, 160, 40, 220];
        let mut packed = Vec::new();
        for row in 0..h {
            for p in 0..w / 2 {
                packed.extend_from_slice(&[
                    ys[row * w + 2 * p],
                    us[row * 2 + p],
                    ys[row * w + 2 * p + 1],
                    vs[row * 2 + p],
                ]);
            }
            packed.extend_from_slice(&[0, 0]); // stride padding
        }
        let mut rgb = Vec::new();
        assert!(yuyv_to_rgb(&packed, w, h, w * 2 + 2, &mut rgb));
        let mut y4m = b"YUV4MPEG2 W4 H2 C422\nFRAME\n".to_vec();
        y4m.extend_from_slice(&ys);
        y4m.extend_from_slice(&us);
        y4m.extend_from_slice(&vs);
        let mut r = crate::y4m::Y4mReader::new(std::io::Cursor::new(y4m), "t").unwrap();
        let mut want = Vec::new();
        assert!(r.next_rgb(&mut want).unwrap());
        for (a, b) in rgb.iter().zip(&want) {
            assert!((*a as i32 - *b as i32).abs() <= 1, "{rgb:?} vs {want:?}");
        }
        assert_eq!(&rgb[0..3], &[0, 0, 0]);
        assert!(!yuyv_to_rgb(&packed[..5], w, h, w * 2, &mut rgb));
    }

    #[test]
    fn mjpeg_decodes_and_corrupt_is_an_error() {
        let img = image::RgbImage::from_fn(8, 6, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 40) as u8, 128])
        });
        let mut jpg = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(
                &mut std::io::Cursor::new(&mut jpg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let mut rgb = Vec::new();
        assert_eq!(mjpeg_to_rgb(&jpg, &mut rgb).unwrap(), (8, 6));
        assert_eq!(rgb.len(), 8 * 6 * 3);
        assert!(mjpeg_to_rgb(&jpg[..20], &mut rgb).is_err());
    }

    #[test]
    fn backoff_retries_then_reports_attempts() {
        let b = Backoff {
            attempts: 3,
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let mut calls = 0;
        let r: Result<(), (String, u32)> = b.retry(|_| {
            calls += 1;
            Err("unplugged".to_string())
        });
        assert_eq!(r.unwrap_err(), ("unplugged".to_string(), 3));
        assert_eq!(calls, 3);
        let r: Result<u32, (String, u32)> =
            b.retry(|n| if n == 2 { Ok(n) } else { Err("busy".into()) });
        assert_eq!(r.unwrap(), 2);
    }

    /// No camera exists on CI machines: opening one must fail cleanly, naming
    /// the device, after the retries.
    #[cfg(feature = "v4l2")]
    #[test]
    fn missing_device_is_a_clear_error_after_retries() {
        let cfg = CameraConfig {
            path: "/dev/video-signrt-missing".into(),
            width: 640,
            height: 480,
            fps: 25,
            backoff: Backoff {
                attempts: 2,
                first: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
        };
        let e = V4l2Source::open(cfg).err().unwrap().to_string();
        assert!(
            e.contains("/dev/video-signrt-missing") && e.contains("2 attempts"),
            "{e}"
        );
    }
}
