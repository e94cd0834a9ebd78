//! Every target on a few thousand generated cases (so `cargo test` covers them), and every
//! saved input of `corpus/` replayed: regressions of what fuzzing found.

use std::path::Path;
use std::time::Duration;

use baton_fuzz::runner::{self, Bounds};

#[global_allocator]
static ALLOC: baton_fuzz::alloc::Counting = baton_fuzz::alloc::Counting;

/// Cases per target: a few seconds in all in a debug build.
const CASES: u64 = 3_000;

#[test]
fn every_target_survives_its_generated_cases() {
    // Debug builds are slow: the time bound is generous, the case count decides.
    let bounds = Bounds {
        time: Duration::from_secs(120),
        cases: CASES,
        case_time: Duration::from_secs(10),
        ..Bounds::default()
    };
    for target in baton_fuzz::all_targets() {
        let report = runner::run(&target, 7, bounds);
        if let Some((failure, input)) = &report.failure {
            panic!("{}: {failure}\ninput: {}", target.name, runner::to_hex(input));
        }
        assert_eq!(report.cases, CASES, "{} ran out of time", target.name);
    }
}

#[test]
fn the_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut replayed = 0;
    for file in std::fs::read_dir(&dir).expect("the corpus folder") {
        let path = file.expect("a corpus entry").path();
        if path.extension().is_none_or(|e| e != "hex") {
            continue;
        }
        let (name, input) = runner::load(&path).expect("a saved input");
        let target = baton_fuzz::target(&name).unwrap_or_else(|| panic!("{}: no target {name}", path.display()));
        if let Err(f) = runner::run_case(target.run, &input, &Bounds::default()) {
            panic!("{}: {f}", path.display());
        }
        replayed += 1;
    }
    assert!(replayed > 0, "the corpus is empty");
}

/// The stack overflow fuzzing found (a forwarded etcd call nesting 100,000 transactions
/// aborted the process), on a thread with tokio's 2 MiB stack, where forwarded calls decode.
#[test]
fn a_deeply_nested_forwarded_transaction_is_refused_not_a_stack_overflow() {
    use baton_proto::peer::ForwardRequest;
    use prost::Message as _;
    let request = ForwardRequest {
        from: 2,
        group: baton_core::topology::ETCD_GROUP,
        etcd: baton_fuzz::gen::deep_etcd_call(100_000),
        ..Default::default()
    };
    let decoded = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            baton_server::forward::check(&request, 1, &[1, 2, 3]).map(|_| ()).map_err(|s| s.message().to_string())
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(decoded.unwrap_err().contains("nested deeper than 64"));
    let forward = baton_fuzz::target("forward").unwrap();
    let mut input = vec![0];
    input.extend(
        ForwardRequest {
            from: 2,
            group: baton_core::topology::ETCD_GROUP,
            etcd: baton_fuzz::gen::deep_etcd_call(100_000),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert_eq!(runner::run_case(forward.run, &input, &Bounds::default()), Ok(()));
}
