//! Compiles `ebpf/*.c` into `OUT_DIR` with the same step `cargo xtask build-ebpf` uses, so the
//! agent embeds objects built from the sources in this checkout.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ebpf_dir = manifest.join("../ebpf");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");

    match skiff_bpf_build::inputs(&ebpf_dir) {
        Ok(inputs) => {
            for input in inputs {
                println!("cargo:rerun-if-changed={}", input.display());
            }
        }
        Err(e) => fail(&e.to_string()),
    }
    // A new .c file must trigger a rebuild too.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());

    if let Err(e) = skiff_bpf_build::build_all(&ebpf_dir, &out_dir, &arch) {
        fail(&format!(
            "{e}\n(run `cargo xtask setup` to install the toolchain, then `cargo xtask build-ebpf` to see the same step on its own)"
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1);
}
