//! Link flags for the `indexd` and `peer` binaries.
//!
//! On Linux with glibc, the binaries' relative relocations are packed (`-z
//! pack-relative-relocs`, glibc's `DT_RELR`, since glibc 2.36 and GNU ld 2.38): about 18,000
//! of them took a 438 KB `.rela.dyn` section, which the dynamic loader reads at every start
//! and which then stays resident, 0.45 MB of indexd's 1M-file memory figure (about 0.5 byte
//! per file); packed, they take 8 KB. A linker without the option ignores it with a
//! warning. Tests and examples are linked as before.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
