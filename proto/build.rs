//! Generates Rust code (prost messages, tonic clients and servers) from the `.proto` files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=skiff/raft.proto");
    tonic_prost_build::configure().compile_protos(&["skiff/raft.proto"], &["."])?;
    Ok(())
}
