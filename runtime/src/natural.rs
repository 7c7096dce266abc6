//! Natural ordering of file names: digit runs compare by value, so `frame_2`
//! comes before `frame_10`.

use std::cmp::Ordering;

/// Compares two names naturally. Equal numeric values with different zero
/// padding (`1` vs `01`) fall back to the plain byte order, so the order is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            let ord = ab[i].cmp(&bb[j]);
            if ord != Ordering::Equal {
                return ord;
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j)).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_by_value() {
        let mut v = vec![
            "frame_10.jpg",
            "frame_2.jpg",
            "frame_1.jpg",
            "frame_100.jpg",
            "frame_02.jpg",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "frame_1.jpg",
                "frame_02.jpg",
                "frame_2.jpg",
                "frame_10.jpg",
                "frame_100.jpg"
            ]
        );
        let mut v = vec!["images0010.png", "images0009.png", "a", "a1", "b"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "a1", "b", "images0009.png", "images0010.png"]);
        // longer than u64 digit runs do not overflow
        assert_eq!(
            natural_cmp("x99999999999999999999999", "x100000000000000000000000"),
            Ordering::Less
        );
    }
}
