//! Puts libtorch's folder into the rpath of this crate's binaries and tests, so they run without
//! LD_LIBRARY_PATH (torch-sys, a direct dependency, exports it as DEP_TCH_LIBTORCH_LIB).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
