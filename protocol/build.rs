//! Compiles spec/ferry.proto with protox (pure Rust; no system protoc needed) and prost-build.

fn main() {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec");
    let proto = format!("{proto_dir}/ferry.proto");
    println!("cargo:rerun-if-changed={proto}");
    let descriptors =
        protox::compile([&proto], [proto_dir]).expect("spec/ferry.proto must compile");
    prost_build::Config::new()
        .bytes([".ferry.v1.Send.body", ".ferry.v1.Message.body"])
        .compile_fds(descriptors)
        .expect("prost-build code generation");
}
