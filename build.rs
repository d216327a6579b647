//! Compiles `proto/gitpod/v1/*.proto` (the query API's messages) with prost, using the
//! pure-Rust `protox` compiler so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/gitpod/v1/audit_log.proto",
        "proto/gitpod/v1/pagination.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
