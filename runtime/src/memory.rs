//! Memory accounting: a counting global allocator (the `signrt` binary
//! installs it), peak RSS from the kernel, the budget estimate made at start-up
//! from the manifest and the graphs, and `--memory-budget` parsing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live and peak heap bytes.
pub struct CountingAlloc;

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Live heap bytes (0 unless [`CountingAlloc`] is the global allocator).
pub fn heap_now() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Peak heap bytes since start (or since [`reset_heap_peak`]).
pub fn heap_peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

pub fn reset_heap_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss() -> Option<usize> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// Resident set size of this process now in bytes (Linux `VmRSS`), if known.
pub fn current_rss() -> Option<usize> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(key: &str) -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Parses sizes like `512M`, `1.5G`, `300MiB`, `2000000` (bytes).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 256M or 1G)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use K, M or G)")),
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be a positive size"));
    }
    Ok((v * mult) as usize)
}

/// Formats bytes as MiB with one decimal.
pub fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// What the pipeline needs, estimated at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Weights, counted twice: tract keeps the loaded constants and their packed form.
    pub weights: usize,
    /// Sum of every intermediate tensor of one run of each graph (an upper bound).
    pub activations: usize,
    /// Frame pool, preprocessed input, feature ring and window buffers.
    pub buffers: usize,
    /// Process baseline: what was resident after loading and a warm-up (code,
    /// libraries, memory the allocator kept) less the weights and activations,
    /// plus each encoder thread's stack and allocator arena.
    pub baseline: usize,
}

impl MemoryNeed {
    pub fn total(&self) -> usize {
        self.weights + self.activations + self.buffers + self.baseline
    }

    pub fn describe(&self) -> String {
        format!(
            "{} (weights {}, activations {}, buffers {}, baseline {})",
            mib(self.total()),
            mib(self.weights),
            mib(self.activations),
            mib(self.buffers),
            mib(self.baseline)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("300MiB").unwrap(), 300 << 20);
        assert_eq!(parse_size("2048").unwrap(), 2048);
        assert_eq!(parse_size("64 kb").unwrap(), 64 << 10);
        assert!(parse_size("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0M").is_err());
    }

    #[test]
    fn rss_is_readable_on_linux() {
        let r = peak_rss().unwrap();
        assert!(r > 1 << 20, "{r}");
    }
}
