//! Embeds the path of the Python shared library into the binary (an rpath), so the worker
//! subcommand finds libpython without LD_LIBRARY_PATH when Python lives outside the
//! loader's default paths (pyenv, a custom prefix). When libpython is linked statically
//! (the project's scripts set PYO3_CONFIG_FILE, see scripts/python-link.sh), it exports
//! the executable's symbols for C extension modules instead.
//!
//! On glibc >= 2.36 it also links with packed relative relocations (`-z
//! pack-relative-relocs`, DT_RELR): weir is a PIE with about 18,000 relative relocations,
//! which as RELA entries are 430 KiB that the loader reads at every start, so they stay
//! resident in the master and in every worker; as RELR they are a few KiB. Older glibc
//! cannot load such a binary, hence the check (the build host's glibc, native builds only).
use std::process::Command;

fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=PYO3_CONFIG_FILE");
    if !config.shared {
        // libpython is linked in (scripts/python-link.sh): C extension modules (sqlite3,
        // json, the app's own) resolve the interpreter's symbols from the executable.
        println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic");
    }
    if glibc_has_relr() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// A native Linux/glibc build on a host whose glibc (>= 2.36) loads DT_RELR.
fn glibc_has_relr() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("TARGET") != var("HOST")
    {
        return false;
    }
    // `getconf GNU_LIBC_VERSION` prints e.g. "glibc 2.36".
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nums = text
        .trim()
        .strip_prefix("glibc ")
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse::<u32>().ok());
    matches!((nums.next(), nums.next()), (Some(Some(major)), Some(Some(minor))) if (major, minor) >= (2, 36))
}
