//! Generates the gRPC code from `proto/` with a vendored protoc: nothing to install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; the variable is read by tonic-prost-build.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let baton = [root.join("baton/v1/baton.proto"), root.join("baton/v1/peer.proto")];
    // Raft messages are encoded into slices of one shared buffer (see baton-server's runtime).
    tonic_prost_build::configure()
        .bytes(".baton.peer.v1.GroupMessage.message")
        .compile_protos(&baton, std::slice::from_ref(&root))?;
    // etcd v3's API: Baton serves it (`--etcd-addr`), and `baton bench --target etcd` drives a
    // real etcd (or Baton's etcd port) with it.
    let etcd = ["mvcc", "etcdserver", "lock", "election"].map(|f| root.join(format!("etcd/{f}.proto")));
    tonic_prost_build::configure().compile_protos(&etcd, std::slice::from_ref(&root))?;
    for f in baton.iter().chain(&etcd) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
