//! Compiles `payments/v1/payments.proto` with the protoc shipped inside the
//! `protoc-bin-vendored` crate, so building needs nothing but cargo.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let includes = [PathBuf::from("."), protoc_bin_vendored::include_path()?];
    let protos = [PathBuf::from("payments/v1/payments.proto")];
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("payments_descriptor.bin");
    tonic_prost_build::configure()
        // The verified webhook body travels without a copy from hyper to the database.
        .bytes(".payments.v1.StripeEvent.raw_payload")
        // For gRPC server reflection.
        .file_descriptor_set_path(descriptor)
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
