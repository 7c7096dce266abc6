//! `signrt-quantize`: int8 post-training quantisation of a signrt bundle.

fn main() {
    eprintln!("error: signrt-quantize is not implemented yet; see the open `quantize` issue");
    std::process::exit(2);
}
