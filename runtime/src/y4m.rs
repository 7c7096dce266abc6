//! YUV4MPEG2 (`.y4m`) reading and writing, so that
//! `ffmpeg -i clip.mp4 -f yuv4mpegpipe - | signrt run --source -` works.
//!
//! Supported colour spaces: 4:2:0 (`420jpeg`, `420paldv`, `420mpeg2`, `420`,
//! the default), `422`, `444` and `mono`, 8 bit. YUV is converted to RGB with
//! BT.601 coefficients, limited range unless the header says
//! `XCOLORRANGE=FULL`. 4:2:0/4:2:2 chroma is sampled at the nearest site.

use std::io::{BufRead, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum Y4mError {
    #[error("{source_name}: cannot read: {err}")]
    Io {
        source_name: String,
        err: std::io::Error,
    },
    #[error("{source_name}: not a Y4M stream: it must start with `YUV4MPEG2 `")]
    NotY4m { source_name: String },
    #[error("{source_name}: Y4M header: {message}")]
    Header {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: frame {frame} (byte {offset}): {message}")]
    Frame {
        source_name: String,
        frame: u64,
        offset: u64,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    C420,
    C422,
    C444,
    Mono,
}

/// The stream header.
#[derive(Debug, Clone, PartialEq)]
pub struct Y4mHeader {
    pub width: usize,
    pub height: usize,
    /// Frame rate as a fraction, if given.
    pub fps: Option<(u32, u32)>,
    pub chroma: Chroma,
    pub full_range: bool,
}

impl Y4mHeader {
    fn chroma_size(&self) -> (usize, usize) {
        let (w, h) = (self.width, self.height);
        match self.chroma {
            Chroma::C420 => (w.div_ceil(2), h.div_ceil(2)),
            Chroma::C422 => (w.div_ceil(2), h),
            Chroma::C444 => (w, h),
            Chroma::Mono => (0, 0),
        }
    }

    /// Bytes of one frame's payload.
    pub fn frame_bytes(&self) -> usize {
        let (cw, ch) = self.chroma_size();
        self.width * self.height + 2 * cw * ch
    }

    pub fn fps_f32(&self) -> Option<f32> {
        self.fps
            .filter(|(_, d)| *d > 0)
            .map(|(n, d)| n as f32 / d as f32)
    }
}

/// Streams frames out of any reader.
pub struct Y4mReader<R: BufRead> {
    inner: R,
    name: String,
    header: Y4mHeader,
    payload: Vec<u8>,
    frame: u64,
    offset: u64,
}

fn read_line<R: BufRead>(r: &mut R, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r.by_ref().take(max as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(line))
}

impl<R: BufRead> Y4mReader<R> {
    /// Reads the header. `name` is used in error messages (a path, or `stdin`).
    pub fn new(mut inner: R, name: &str) -> Result<Self, Y4mError> {
        let io = |err| Y4mError::Io {
            source_name: name.into(),
            err,
        };
        let hdr = |message: String| Y4mError::Header {
            source_name: name.into(),
            message,
        };
        let line = read_line(&mut inner, 4096)
            .map_err(io)?
            .ok_or_else(|| Y4mError::NotY4m {
                source_name: name.into(),
            })?;
        if !line.starts_with(b"YUV4MPEG2 ") {
            return Err(Y4mError::NotY4m {
                source_name: name.into(),
            });
        }
        if line.last() != Some(&b'\n') {
            return Err(hdr(
                "the header line is not terminated (longer than 4096 bytes?)".into(),
            ));
        }
        let offset = line.len() as u64;
        let text = String::from_utf8_lossy(&line[10..line.len() - 1]).to_string();
        let (mut w, mut h, mut fps, mut chroma, mut full) = (None, None, None, Chroma::C420, false);
        for tok in text.split_ascii_whitespace() {
            // the key is the token's first character, which need not be ASCII
            let k = tok.chars().next().unwrap_or(' ');
            let v = &tok[k.len_utf8()..];
            match k {
                'W' => w = Some(v.parse::<usize>().map_err(|_| hdr(format!("bad width `{v}`")))?),
                'H' => h = Some(v.parse::<usize>().map_err(|_| hdr(format!("bad height `{v}`")))?),
                'F' => {
                    let (n, d) = v.split_once(':').ok_or_else(|| hdr(format!("bad frame rate `{v}`")))?;
                    let n = n.parse().map_err(|_| hdr(format!("bad frame rate `{v}`")))?;
                    let d = d.parse().map_err(|_| hdr(format!("bad frame rate `{v}`")))?;
                    fps = Some((n, d));
                }
                'I' if v != "p" && v != "?" => {
                    log::warn!("{name}: interlaced Y4M (I{v}) is read as progressive");
                }
                'C' => {
                    chroma = match v {
                        "420jpeg" | "420paldv" | "420mpeg2" | "420" => Chroma::C420,
                        "422" => Chroma::C422,
                        "444" => Chroma::C444,
                        "mono" => Chroma::Mono,
                        other => {
                            return Err(hdr(format!(
                                "colour space `C{other}` is not supported (use 8-bit 420, 422, 444 or mono, e.g. ffmpeg -pix_fmt yuv420p)"
                            )))
                        }
                    }
                }
                'X' => {
                    if let Some(r) = v.strip_prefix("COLORRANGE=") {
                        full = r.eq_ignore_ascii_case("FULL");
                    }
                }
                _ => {}
            }
        }
        let width = w.ok_or_else(|| hdr("no width (W) parameter".into()))?;
        let height = h.ok_or_else(|| hdr("no height (H) parameter".into()))?;
        if width == 0 || height == 0 || width > 16384 || height > 16384 {
            return Err(hdr(format!("frame size {width}x{height} is out of range")));
        }
        let header = Y4mHeader {
            width,
            height,
            fps,
            chroma,
            full_range: full,
        };
        Ok(Self {
            inner,
            name: name.into(),
            payload: vec![0u8; header.frame_bytes()],
            header,
            frame: 0,
            offset,
        })
    }

    pub fn header(&self) -> &Y4mHeader {
        &self.header
    }

    /// Reads the next frame as RGB8 into `rgb` (resized to w*h*3 once).
    /// Returns Ok(false) at a clean end of stream.
    pub fn next_rgb(&mut self, rgb: &mut Vec<u8>) -> Result<bool, Y4mError> {
        let ferr = |s: &Self, message: String| Y4mError::Frame {
            source_name: s.name.clone(),
            frame: s.frame + 1,
            offset: s.offset,
            message,
        };
        let line = match read_line(&mut self.inner, 1024) {
            Ok(None) => return Ok(false),
            Ok(Some(l)) => l,
            Err(err) => {
                return Err(Y4mError::Io {
                    source_name: self.name.clone(),
                    err,
                })
            }
        };
        if !line.starts_with(b"FRAME") || line.last() != Some(&b'\n') {
            return Err(ferr(
                self,
                "expected a `FRAME` marker: the previous frame had the wrong size for the header's W/H/C, or the stream is corrupt".into(),
            ));
        }
        self.offset += line.len() as u64;
        let mut got = 0;
        while got < self.payload.len() {
            match self.inner.read(&mut self.payload[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    return Err(Y4mError::Io {
                        source_name: self.name.clone(),
                        err,
                    })
                }
            }
        }
        if got < self.payload.len() {
            return Err(ferr(
                self,
                format!(
                    "truncated: {got} of {} bytes (the stream ended mid-frame)",
                    self.payload.len()
                ),
            ));
        }
        self.offset += got as u64;
        self.frame += 1;
        yuv_to_rgb(&self.header, &self.payload, rgb);
        Ok(true)
    }
}

fn yuv_to_rgb(h: &Y4mHeader, p: &[u8], rgb: &mut Vec<u8>) {
    let (w, ht) = (h.width, h.height);
    rgb.resize(w * ht * 3, 0);
    let (cw, _ch) = h.chroma_size();
    let (ys, us, vs) = (
        &p[..w * ht],
        &p[w * ht..],
        &p[w * ht + cw * h.chroma_size().1..],
    );
    for y in 0..ht {
        for x in 0..w {
            let (u, v) = match h.chroma {
                Chroma::Mono => (128, 128),
                _ => {
                    let (cx, cy) = match h.chroma {
                        Chroma::C420 => (x / 2, y / 2),
                        Chroma::C422 => (x / 2, y),
                        _ => (x, y),
                    };
                    let i = cy * cw + cx;
                    (us[i], vs[i])
                }
            };
            let o = (y * w + x) * 3;
            rgb[o..o + 3].copy_from_slice(&yuv_pixel(ys[y * w + x], u, v, h.full_range));
        }
    }
}

/// One BT.601 pixel to RGB8, from full range (0-255) or video range
/// (Y 16-235, chroma 16-240): the Y4M reader's conversion, and the push API's.
#[inline]
pub(crate) fn yuv_pixel(y: u8, u: u8, v: u8, full: bool) -> [u8; 3] {
    let (yk, yo, ck) = if full {
        (1.0f32, 0.0f32, 1.0f32)
    } else {
        (255.0 / 219.0, 16.0, 255.0 / 224.0)
    };
    let yy = (y as f32 - yo) * yk;
    let (u, v) = ((u as f32 - 128.0) * ck, (v as f32 - 128.0) * ck);
    let px = |c: f32| c.round().clamp(0.0, 255.0) as u8;
    [
        px(yy + 1.402 * v),
        px(yy - 0.344_136 * u - 0.714_136 * v),
        px(yy + 1.772 * u),
    ]
}

/// Writes RGB8 frames as a 4:4:4 full-range Y4M stream (lossless up to the
/// YUV rounding), for tests and for turning frame folders into streams.
pub struct Y4mWriter<W: Write> {
    out: W,
    width: usize,
    height: usize,
    buf: Vec<u8>,
}

impl<W: Write> Y4mWriter<W> {
    pub fn new(mut out: W, width: usize, height: usize, fps: u32) -> std::io::Result<Self> {
        writeln!(
            out,
            "YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C444 XCOLORRANGE=FULL"
        )?;
        Ok(Self {
            out,
            width,
            height,
            buf: vec![0; width * height * 3],
        })
    }

    pub fn write_rgb(&mut self, rgb: &[u8]) -> std::io::Result<()> {
        let n = self.width * self.height;
        if rgb.len() != n * 3 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("frame has {} bytes, expected {}", rgb.len(), n * 3),
            ));
        }
        for i in 0..n {
            let (r, g, b) = (
                rgb[i * 3] as f32,
                rgb[i * 3 + 1] as f32,
                rgb[i * 3 + 2] as f32,
            );
            let y = 0.299 * r + 0.587 * g + 0.114 * b;
            let u = (b - y) / 1.772 + 128.0;
            let v = (r - y) / 1.402 + 128.0;
            self.buf[i] = y.round().clamp(0.0, 255.0) as u8;
            self.buf[n + i] = u.round().clamp(0.0, 255.0) as u8;
            self.buf[2 * n + i] = v.round().clamp(0.0, 255.0) as u8;
        }
        self.out.write_all(b"FRAME\n")?;
        self.out.write_all(&self.buf)
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn frames(n: usize, w: usize, h: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|k| {
                (0..w * h * 3)
                    .map(|i| ((i * 7 + k * 31) % 256) as u8)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn rgb_round_trip_through_444() {
        let fs = frames(3, 5, 4);
        let mut wr = Y4mWriter::new(Vec::new(), 5, 4, 25).unwrap();
        for f in &fs {
            wr.write_rgb(f).unwrap();
        }
        let bytes = wr.finish().unwrap();
        let mut r = Y4mReader::new(Cursor::new(bytes), "mem").unwrap();
        assert_eq!(r.header().fps_f32(), Some(25.0));
        let mut rgb = Vec::new();
        for f in &fs {
            assert!(r.next_rgb(&mut rgb).unwrap());
            for (a, b) in rgb.iter().zip(f) {
                assert!((*a as i32 - *b as i32).abs() <= 2, "{a} vs {b}");
            }
        }
        assert!(!r.next_rgb(&mut rgb).unwrap());
    }

    #[test]
    fn limited_range_420_grey_and_colour() {
        // 2x2 frame, 4:2:0 limited range: Y=16 is black, Y=235 white; U=V=128 grey axis.
        let mut s = b"YUV4MPEG2 W2 H2 F30000:1001 C420jpeg\n".to_vec();
        s.extend_from_slice(b"FRAME\n");
        s.extend_from_slice(&[16, 235, 126, 126, 128, 128]);
        let mut r = Y4mReader::new(Cursor::new(s), "clip.y4m").unwrap();
        let mut rgb = Vec::new();
        assert!(r.next_rgb(&mut rgb).unwrap());
        assert_eq!(&rgb[0..3], &[0, 0, 0]);
        assert_eq!(&rgb[3..6], &[255, 255, 255]);
        // (126-16)*255/219 = 128.08
        assert_eq!(&rgb[6..9], &[128, 128, 128]);
        assert!((r.header().fps_f32().unwrap() - 29.97).abs() < 0.01);
    }

    #[test]
    fn errors_name_the_source_and_frame() {
        let e = Y4mReader::new(Cursor::new(b"RIFF....".to_vec()), "a.y4m")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("a.y4m") && e.contains("YUV4MPEG2"), "{e}");
        let e = Y4mReader::new(Cursor::new(b"YUV4MPEG2 H2\n".to_vec()), "a.y4m")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("width"), "{e}");
        let e = Y4mReader::new(Cursor::new(b"YUV4MPEG2 W2 H2 C420p10\n".to_vec()), "a.y4m")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("C420p10"), "{e}");
        // truncated second frame
        let mut s = b"YUV4MPEG2 W2 H2 C444\nFRAME\n".to_vec();
        s.extend_from_slice(&[0; 12]);
        s.extend_from_slice(b"FRAME\n");
        s.extend_from_slice(&[0; 5]);
        let mut r = Y4mReader::new(Cursor::new(s), "stdin").unwrap();
        let mut rgb = Vec::new();
        assert!(r.next_rgb(&mut rgb).unwrap());
        let e = r.next_rgb(&mut rgb).unwrap_err().to_string();
        assert!(
            e.contains("stdin: frame 2") && e.contains("truncated: 5 of 12"),
            "{e}"
        );
        // a frame larger than the header says: the next marker is not where it should be
        let mut s = b"YUV4MPEG2 W2 H2 C444\nFRAME\n".to_vec();
        s.extend_from_slice(&[0; 16]);
        s.extend_from_slice(b"FRAME\n");
        s.extend_from_slice(&[0; 12]);
        let mut r = Y4mReader::new(Cursor::new(s), "x.y4m").unwrap();
        assert!(r.next_rgb(&mut rgb).unwrap());
        let e = r.next_rgb(&mut rgb).unwrap_err().to_string();
        assert!(
            e.contains("x.y4m: frame 2") && e.contains("wrong size"),
            "{e}"
        );
    }
}
