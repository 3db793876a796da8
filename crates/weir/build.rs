//! Embeds the path of the Python shared library into the binary (an rpath), so the worker
//! subcommand finds libpython without LD_LIBRARY_PATH when Python lives outside the
//! loader's default paths (pyenv, a custom prefix).
fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
