//! Builds the XDP object (lb-ebpf) for the BPF target with the pinned toolchain.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The pinned stable toolchain builds `core` for bpfel-unknown-none only with bootstrap on.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(lb_toolchain()),
    )
}

/// The channel pinned in rust-toolchain.toml (bpf-linker's LLVM must match rustc's).
fn lb_toolchain() -> &'static str {
    "1.95.0"
}
