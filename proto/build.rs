//! Generates the Rust types, tonic clients and tonic servers for every `.proto` file in this
//! crate with `protoc` (Debian's protobuf-compiler, installed by `cargo xtask setup`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["etcd/mvccpb/kv.proto", "etcd/etcdserverpb/rpc.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["etcd", "."])
        .map_err(|e| {
            format!("protoc failed (is protobuf-compiler installed? run `cargo xtask setup`): {e}")
        })?;
    Ok(())
}
