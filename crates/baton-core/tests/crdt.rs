//! Property tests of the coordination-free types: the merge laws (commutative, associative,
//! idempotent), deltas against whole states, convergence in any delivery order, each type's
//! meaning (counts add up, adds win over concurrent removes, LWW picks the highest stamp) and
//! the bounded counter's invariant (never below zero, anywhere, at any time).

use baton_core::crdt::{Kind, Object, Op, Value};
use baton_core::Hlc;
use proptest::prelude::*;

const REPLICAS: u64 = 3;

/// One step of a random history over three replicas of one object.
#[derive(Clone, Debug)]
enum Step {
    /// Replica `r` applies an update.
    Update { r: u64, op: Op },
    /// Deliver the `i`-th delta made so far (wrapping) to replica `r` (again, maybe).
    Deliver { i: usize, r: u64 },
    /// Replica `to` joins replica `from`'s whole state (anti-entropy).
    Sync { from: u64, to: u64 },
}

fn op_for(kind: Kind) -> BoxedStrategy<Op> {
    let elem = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from);
    match kind {
        Kind::GCounter => (1u64..5).prop_map(Op::Add).boxed(),
        Kind::PnCounter => prop_oneof![(1u64..5).prop_map(Op::Add), (1u64..5).prop_map(Op::Subtract)].boxed(),
        Kind::BoundedCounter => prop_oneof![
            (1u64..5).prop_map(Op::Add),
            (1u64..5).prop_map(Op::Subtract),
            (1u64..REPLICAS + 1, 1u64..5).prop_map(|(to, n)| Op::Transfer { to, n }),
        ]
        .boxed(),
        Kind::GSet => elem.prop_map(Op::Insert).boxed(),
        Kind::OrSet => prop_oneof![elem.clone().prop_map(Op::Insert), elem.prop_map(Op::Remove)].boxed(),
        Kind::LwwRegister => {
            prop_oneof![(0u8..4).prop_map(|v| Op::Write(Some(vec![v]))), Just(Op::Write(None)),].boxed()
        }
        Kind::MvRegister => (0u8..4).prop_map(|v| Op::Write(Some(vec![v]))).boxed(),
    }
}

fn history(kind: Kind) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (1..=REPLICAS, op_for(kind)).prop_map(|(r, op)| Step::Update { r, op }),
        3 => (0usize..64, 1..=REPLICAS).prop_map(|(i, r)| Step::Deliver { i, r }),
        1 => (1..=REPLICAS, 1..=REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    prop::collection::vec(step, 1..60)
}

fn any_kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

/// Runs a history; returns every state any replica passed through, the final states, and the
/// deltas made. Checks the bounded counter's invariant at every step.
struct Run {
    seen: Vec<Object>,
    replicas: Vec<Object>,
    deltas: Vec<Object>,
}

fn run(kind: Kind, steps: &[Step]) -> Run {
    let mut replicas: Vec<Object> = (0..REPLICAS).map(|_| kind.empty()).collect();
    let mut deltas = Vec::new();
    let mut seen = vec![kind.empty()];
    let mut clock = Hlc::default();
    for step in steps {
        match step {
            Step::Update { r, op } => {
                clock = clock.next(clock.physical_ms + 1);
                let at = &mut replicas[(*r - 1) as usize];
                let before = at.clone();
                match at.update("x", *r, op.clone(), clock) {
                    Ok(d) => deltas.push(d),
                    Err(_) => assert_eq!(*at, before, "a refused update changed the state"),
                }
            }
            Step::Deliver { i, r } => {
                if !deltas.is_empty() {
                    let d = deltas[i % deltas.len()].clone();
                    replicas[(*r - 1) as usize].join(&d).unwrap();
                }
            }
            Step::Sync { from, to } => {
                let s = replicas[(*from - 1) as usize].clone();
                replicas[(*to - 1) as usize].join(&s).unwrap();
            }
        }
        for (i, s) in replicas.iter().enumerate() {
            if let Value::Bounded { value, rights } = s.value(i as u64 + 1) {
                assert!(value >= 0, "bounded counter below zero on replica {}: {value}", i + 1);
                assert!(rights >= 0, "replica {} has negative rights {rights}", i + 1);
            }
        }
        seen.extend(replicas.iter().cloned());
    }
    Run { seen, replicas, deltas }
}

fn joined(a: &Object, b: &Object) -> Object {
    let mut x = a.clone();
    x.join(b).unwrap();
    x
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// join(a, b) = join(b, a); join(join(a, b), c) = join(a, join(b, c)); join(a, a) = a.
    #[test]
    fn merge_laws(kind in any_kind(), steps in history(Kind::OrSet), picks in prop::collection::vec(any::<prop::sample::Index>(), 3)) {
        let steps: Vec<Step> = retarget(kind, &steps);
        let r = run(kind, &steps);
        let [a, b, c] = [&picks[0], &picks[1], &picks[2]].map(|i| i.get(&r.seen).clone());
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        prop_assert_eq!(joined(&a, &a), a.clone());
    }

    /// Every replica that joins every delta, in any order and any number of times, ends equal
    /// to one that joins the whole states; and all replicas end equal.
    #[test]
    fn deltas_converge_like_states(kind in any_kind(), steps in history(Kind::OrSet), order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>())) {
        let steps = retarget(kind, &steps);
        let r = run(kind, &steps);
        let mut by_states = kind.empty();
        for s in &r.replicas {
            by_states.join(s).unwrap();
        }
        for (i, replica) in r.replicas.iter().enumerate() {
            // Deliver every delta (shuffled by a seed, some twice) on top of what it has.
            let mut x = replica.clone();
            let mut ds = r.deltas.clone();
            let mut seed = order ^ i as u64;
            for k in (1..ds.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ds.swap(k, (seed >> 33) as usize % (k + 1));
            }
            for d in ds.iter().chain(ds.iter().take(3)) {
                x.join(d).unwrap();
            }
            prop_assert_eq!(&x, &by_states, "replica {} after every delta differs from the join of states", i + 1);
        }
        // A fresh replica from the deltas alone reaches the same state.
        let mut fresh = kind.empty();
        for d in r.deltas.iter().rev() {
            fresh.join(d).unwrap();
        }
        prop_assert_eq!(fresh, by_states);
    }

    /// What the types mean: a counter is the sum of its accepted updates; a set holds an element
    /// iff some add of it was not seen by any remove; an LWW register holds its highest stamp.
    #[test]
    fn meanings(kind in any_kind(), steps in history(Kind::OrSet)) {
        let steps = retarget(kind, &steps);
        let mut replicas: Vec<Object> = (0..REPLICAS).map(|_| kind.empty()).collect();
        let mut sum: i128 = 0;
        let mut clock = Hlc::default();
        let mut last_write: Option<Option<Vec<u8>>> = None;
        for step in &steps {
            if let Step::Update { r, op } = step {
                clock = clock.next(clock.physical_ms + 1);
                if replicas[(*r - 1) as usize].update("x", *r, op.clone(), clock).is_ok() {
                    match op {
                        Op::Add(n) => sum += *n as i128,
                        Op::Subtract(n) => sum -= *n as i128,
                        Op::Write(v) => last_write = Some(v.clone()),
                        _ => {}
                    }
                }
            }
        }
        let mut all = kind.empty();
        for s in &replicas {
            all.join(s).unwrap();
        }
        match all.value(1) {
            Value::Counter(v) | Value::Bounded { value: v, .. } => prop_assert_eq!(v, sum),
            // Stamps grow with every update here, so the last write wins.
            Value::Register { value, .. } => prop_assert_eq!(value, last_write.flatten()),
            _ => {}
        }
    }
}

/// The history strategy is built once for the OR-set's ops; re-draw each update's op for `kind`
/// from its shape, so that one history strategy serves every kind.
fn retarget(kind: Kind, steps: &[Step]) -> Vec<Step> {
    steps
        .iter()
        .map(|s| match s {
            Step::Update { r, op } => Step::Update { r: *r, op: reshape(kind, op, *r) },
            other => other.clone(),
        })
        .collect()
}

fn reshape(kind: Kind, op: &Op, r: u64) -> Op {
    let (insert, e) = match op {
        Op::Insert(e) => (true, e.clone()),
        Op::Remove(e) => (false, e.clone()),
        other => return other.clone(),
    };
    let n = e.as_bytes()[0] as u64 - b'a' as u64 + 1;
    match kind {
        Kind::GCounter => Op::Add(n),
        Kind::PnCounter if insert => Op::Add(n),
        Kind::PnCounter => Op::Subtract(n),
        Kind::BoundedCounter if insert && n == 4 => Op::Transfer { to: r % REPLICAS + 1, n: 2 },
        Kind::BoundedCounter if insert => Op::Add(n),
        Kind::BoundedCounter => Op::Subtract(n),
        Kind::GSet => Op::Insert(e),
        Kind::OrSet => op.clone(),
        Kind::LwwRegister if insert => Op::Write(Some(e.into_bytes())),
        Kind::LwwRegister => Op::Write(None),
        Kind::MvRegister => Op::Write(Some(e.into_bytes())),
    }
}

#[test]
fn concurrent_add_wins_over_remove() {
    let mut a = Kind::OrSet.empty();
    let mut b = Kind::OrSet.empty();
    let t = Hlc { physical_ms: 1, logical: 0 };
    let d = a.update("s", 1, Op::Insert("x".into()), t).unwrap();
    b.join(&d).unwrap();
    // b removes what it saw while a adds x again: the new add was not seen by the remove.
    let rm = b.update("s", 2, Op::Remove("x".into()), t).unwrap();
    let add = a.update("s", 1, Op::Insert("x".into()), t).unwrap();
    a.join(&rm).unwrap();
    b.join(&add).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.value(1), Value::Members(vec!["x".into()]));
    // A remove that saw every add removes it everywhere.
    let rm = a.update("s", 1, Op::Remove("x".into()), t).unwrap();
    b.join(&rm).unwrap();
    assert_eq!(b.value(2), Value::Members(vec![]));
}

#[test]
fn mv_register_keeps_concurrent_writes_until_one_overwrites_them() {
    let t = Hlc { physical_ms: 1, logical: 0 };
    let mut a = Kind::MvRegister.empty();
    let mut b = Kind::MvRegister.empty();
    let da = a.update("r", 1, Op::Write(Some(b"1".to_vec())), t).unwrap();
    let db = b.update("r", 2, Op::Write(Some(b"2".to_vec())), t).unwrap();
    a.join(&db).unwrap();
    b.join(&da).unwrap();
    assert_eq!(a.value(1), Value::Values(vec![b"1".to_vec(), b"2".to_vec()]));
    assert_eq!(a, b);
    let d = a.update("r", 1, Op::Write(Some(b"3".to_vec())), t).unwrap();
    b.join(&d).unwrap();
    assert_eq!(b.value(2), Value::Values(vec![b"3".to_vec()]));
}

#[test]
fn bounded_counter_spends_only_local_rights_and_transfers_them() {
    let t = Hlc::default();
    let mut a = Kind::BoundedCounter.empty();
    let mut b = Kind::BoundedCounter.empty();
    b.join(&a.update("c", 1, Op::Add(5), t).unwrap()).unwrap();
    assert_eq!(b.value(2), Value::Bounded { value: 5, rights: 0 });
    let err = b.update("c", 2, Op::Subtract(1), t).unwrap_err();
    assert!(err.to_string().contains("holds rights to subtract 0, not 1"), "{err}");
    b.join(&a.update("c", 1, Op::Transfer { to: 2, n: 3 }, t).unwrap()).unwrap();
    b.update("c", 2, Op::Subtract(3), t).unwrap();
    assert_eq!(b.value(2), Value::Bounded { value: 2, rights: 0 });
    assert!(a.update("c", 1, Op::Subtract(3), t).is_err(), "a gave 3 of its 5 away");
}
