//! gRPC messages and services between masters and workers
//! (`proto/sluice/v1/engine.proto`).

#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}
