//! TensorBoard event files: every line `metrics.jsonl` gets is also written, as scalars, to
//! `RUN_DIR/tb/events.out.tfevents.<seconds>.<host>`, which `tensorboard --logdir RUN_DIR/tb` reads.
//!
//! The format is TensorFlow's record file of `Event` protocol buffers
//! (tensorflow/core/util/event.proto, summary.proto): each record is its length (u64, little
//! endian), the masked CRC-32C of those 8 bytes, the bytes, and their masked CRC-32C. The first
//! event names the file version. Only the few fields written here are encoded, by hand:
//! `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5 }`,
//! `Summary { value = 1 (repeated) }`, `Summary.Value { tag = 1 (string), simple_value = 2 (float) }`.
//! A test reads the files back with the `tensorboard` package itself.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TensorFlow's masked CRC: a rotation and an offset, so that a CRC of data holding CRCs is not
/// degenerate.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = CRC32C.checksum(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// An `Event` with its wall time and step, and either a file version or a summary of scalars.
fn event(
    wall_time: f64,
    step: i64,
    file_version: Option<&str>,
    scalars: &[(String, f32)],
) -> Vec<u8> {
    let mut e = Vec::new();
    varint(1 << 3 | 1, &mut e); // wall_time, fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e); // step, varint (two's complement for a negative int64)
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut v);
            varint(2 << 3 | 5, &mut v); // simple_value, fixed32
            v.extend_from_slice(&value.to_le_bytes());
            bytes_field(1, &v, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

/// One record of the file: length, its CRC, the data, its CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

/// The scalars of one `metrics.jsonl` line: `kind/key` for each number in it, `kind/key/name`
/// inside objects and `kind/key/i` inside arrays (the loss weights are named after the losses).
/// `step`, `epoch` and `kind` are the event's own fields, not scalars.
pub fn scalars_of(line: &serde_json::Value) -> Vec<(String, f32)> {
    let kind = line["kind"].as_str().unwrap_or("metrics");
    let mut out = Vec::new();
    let Some(obj) = line.as_object() else {
        return out;
    };
    for (key, v) in obj {
        if matches!(key.as_str(), "kind" | "step" | "epoch") {
            continue;
        }
        flatten(&format!("{kind}/{key}"), key, v, &mut out);
    }
    out
}

const LOSS_NAMES: [&str; 4] = ["align", "gru", "cls", "ctc"];

fn flatten(tag: &str, key: &str, v: &serde_json::Value, out: &mut Vec<(String, f32)>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((tag.to_string(), x as f32));
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let name = match (key, LOSS_NAMES.get(i)) {
                    ("weights", Some(n)) if a.len() == 4 => n.to_string(),
                    _ => i.to_string(),
                };
                flatten(&format!("{tag}/{name}"), "", x, out);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                flatten(&format!("{tag}/{k}"), k, x, out);
            }
        }
        _ => {}
    }
}

/// An event file being written; every line is flushed, so a run stopped at any point leaves a
/// readable file.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it (a resumed run adds a file; TensorBoard reads them
    /// all in order).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let now = wall_time();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let (file, path) =
            create_unique(dir, &format!("events.out.tfevents.{}.{host}", now as u64))?;
        let mut w = Self { file, path };
        w.write(&event(now, 0, Some("brain.Event:2"), &[]))?;
        Ok(w)
    }

    /// Writes one `metrics.jsonl` line's scalars at its step.
    pub fn line(&mut self, line: &serde_json::Value) -> Result<()> {
        let scalars = scalars_of(line);
        if scalars.is_empty() {
            return Ok(());
        }
        let step = line["step"].as_i64().unwrap_or(0);
        self.write(&event(wall_time(), step, None, &scalars))
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(&record(data))
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A new file `dir/stem.PID`, or `stem.PID.K` for the first K free: a run resumed within the
/// same second, in the same process, must not write into the file before it.
fn create_unique(dir: &Path, stem: &str) -> Result<(std::fs::File, PathBuf)> {
    let pid = std::process::id();
    let mut k = 0;
    loop {
        let name = match k {
            0 => format!("{stem}.{pid}"),
            k => format!("{stem}.{pid}.{k}"),
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && k < 1000 => k += 1,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value (the CRC of "123456789") and a record's layout.
    #[test]
    fn crc_and_record_layout() {
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 3);
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(
            u32::from_le_bytes(r[15..].try_into().unwrap()),
            masked_crc(b"abc")
        );
    }

    /// Two writers in one directory in the same second (a resumed run) get two files.
    #[test]
    fn writers_in_the_same_second_get_their_own_files() {
        let d = std::env::temp_dir().join(format!("signrt-tb-{}", std::process::id()));
        let a = EventWriter::create(&d).unwrap();
        let b = EventWriter::create(&d).unwrap();
        assert_ne!(a.path, b.path);
        let files = std::fs::read_dir(&d).unwrap().count();
        let _ = std::fs::remove_dir_all(&d);
        assert!(files >= 2);
    }

    #[test]
    fn a_step_line_flattens_to_named_scalars() {
        let line = serde_json::json!({"kind": "step", "step": 3, "epoch": 0, "loss": 1.5,
            "weights": [1.0, 2.0, 3.0, 4.0], "group_norms": {"visual": 0.5}, "note": "x"});
        let mut got = scalars_of(&line);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, f32)> = [
            ("step/group_norms/visual", 0.5),
            ("step/loss", 1.5),
            ("step/weights/align", 1.0),
            ("step/weights/cls", 3.0),
            ("step/weights/ctc", 4.0),
            ("step/weights/gru", 2.0),
        ]
        .iter()
        .map(|(t, v)| (t.to_string(), *v))
        .collect();
        assert_eq!(got, want);
    }
}
