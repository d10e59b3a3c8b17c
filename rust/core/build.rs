//! Compiles protos/ego/v1 with prost, using the vendored protoc so that building the wheel
//! needs no system protobuf compiler.
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    let proto = root.join("ego/v1/envelopes.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.extern_path(".google.protobuf.Any", "crate::envelope::Any");
    config.compile_protos(&[proto], &[root, protoc_bin_vendored::include_path().expect("include")]).expect("compile protos");
}
