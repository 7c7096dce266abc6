// Generates v4l2-sys-mit's bindings for one target, as its build.rs would (same bindgen, defaults).
fn main() {
    let mut a = std::env::args().skip(1);
    let (target, out) = (a.next().unwrap(), a.next().unwrap());
    let mut b = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("--target={target}"));
    if target.starts_with("aarch64") {
        b = b.clang_args(["--sysroot=/usr/aarch64-linux-gnu", "-I/usr/aarch64-linux-gnu/include"]);
    }
    b.generate().expect("bindgen").write_to_file(out).expect("write");
}
