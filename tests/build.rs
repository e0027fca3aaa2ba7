//! Builds the benchmark's XDP object (bench-ebpf: the balancer's stages plus the measuring
//! programs) for the BPF target with the pinned toolchain. The product's object is built by
//! lb-user and carries none of these programs.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The pinned stable toolchain builds `core` for bpfel-unknown-none only with bootstrap on.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "xlb-bench-ebpf",
            root_dir: root,
            features: &["programs"],
            ..Default::default()
        }],
        // The channel pinned in rust-toolchain.toml (bpf-linker's LLVM must match rustc's).
        Toolchain::Custom("1.95.0"),
    )
}
