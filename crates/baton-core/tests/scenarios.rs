//! Scenario tests: scripts of commands and the transcript the state machine produces.
//!
//! Each `tests/scripts/NAME.script` is run line by line; the transcript (every command, its
//! outcome or error, and the events it emitted) must equal `NAME.golden`. To regenerate the
//! golden files after an intended change, run with `BATON_GOLDEN=1` and review the diff.
//!
//! Script lines: `@T COMMAND ARGS` applies COMMAND with leader time T (ms); `# ...` comments.
//! Commands: `open CLIENT ttl=MS`, `close S`, `expire S...`, `acquire NAME s=S r=R [wait=MS]
//! [delay=MS]`, `release NAME s=S t=TOKEN`, `cancel NAME s=S r=R`, `tick`, and `describe NAME`
//! (a read: prints holder and queue without applying anything).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use baton_core::{AcquireRequest, Command, Entry, Kind, Limits, Mode, StateMachine};

fn parse_args(words: &[&str]) -> (Vec<String>, BTreeMap<String, u64>) {
    let mut positional = Vec::new();
    let mut named = BTreeMap::new();
    for w in words {
        match w.split_once('=') {
            Some((k, v)) => {
                named.insert(k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad number in {w}")));
            }
            None => positional.push(w.to_string()),
        }
    }
    (positional, named)
}

fn run_script(script: &str) -> String {
    let limits =
        Limits { max_waiters_per_lock: 3, max_locks_per_session: 4, max_sessions_per_client: 3, ..Limits::default() };
    let mut sm = StateMachine::new(limits);
    let mut out = String::new();
    let mut index = 0;
    for line in script.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (time, rest) = line.split_once(' ').expect("a line is `@T command`");
        let time: u64 = time.trim_start_matches('@').parse().expect("time is a number");
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (pos, named) = parse_args(&words[1..]);
        let arg = |k: &str| *named.get(k).unwrap_or_else(|| panic!("{line}: missing {k}="));
        let command = match words[0] {
            "open" => Command::OpenSession {
                client: pos[0].clone(),
                ttl_ms: arg("ttl"),
                request_id: named.get("r").copied().unwrap_or(0),
            },
            "close" => Command::CloseSession { session: pos[0].parse().unwrap() },
            "expire" => {
                Command::ExpireSessions { sessions: pos.iter().map(|s| s.parse().unwrap()).collect(), as_of: u64::MAX }
            }
            "acquire" => {
                // `read` / `write`: a read/write lock; `permits=N capacity=C`: a semaphore.
                let elect = pos.iter().find_map(|p| p.strip_prefix("elect:")).map(|v| v.as_bytes().to_vec());
                let (kind, mode) = if let Some(n) = named.get("parties") {
                    (Kind::Barrier { parties: *n as u32 }, Mode::Exclusive)
                } else if pos.iter().any(|p| p == "latch") {
                    (Kind::Latch, Mode::Exclusive)
                } else if elect.is_some() {
                    (Kind::Election, Mode::Exclusive)
                } else if pos.iter().any(|p| p == "read") {
                    (Kind::RwLock, Mode::Shared)
                } else if pos.iter().any(|p| p == "write") {
                    (Kind::RwLock, Mode::Exclusive)
                } else if let Some(n) = named.get("permits") {
                    (Kind::Semaphore { capacity: arg("capacity") as u32 }, Mode::Permits(*n as u32))
                } else {
                    (Kind::Mutex, Mode::Exclusive)
                };
                Command::Acquire(AcquireRequest {
                    name: pos[0].clone(),
                    session: arg("s"),
                    request_id: arg("r"),
                    wait_ms: named.get("wait").copied(),
                    lock_delay_ms: named.get("delay").copied().unwrap_or(0),
                    kind,
                    mode,
                    value: elect.unwrap_or_default(),
                })
            }
            "release" => Command::Release { name: pos[0].clone(), session: arg("s"), token: arg("t") },
            "cancel" => Command::Cancel { name: pos[0].clone(), session: arg("s"), request_id: arg("r") },
            "tick" => Command::Tick,
            "latch-set" => Command::LatchSet { name: pos[0].clone(), count: pos[1].parse().unwrap() },
            "latch-down" => Command::LatchCountDown { name: pos[0].clone() },
            "proclaim" => Command::Proclaim {
                name: pos[0].clone(),
                session: arg("s"),
                token: arg("t"),
                value: pos[1].as_bytes().to_vec(),
            },
            "add" => Command::CounterAdd { name: pos[0].clone(), delta: pos[1].parse().unwrap() },
            "cas" => Command::CounterCas {
                name: pos[0].clone(),
                expected: pos[1].parse().unwrap(),
                new: pos[2].parse().unwrap(),
            },
            "set" => Command::RegisterSet {
                name: pos[0].clone(),
                value: Some(pos[1].as_bytes().to_vec()),
                expected_version: named.get("v").copied(),
            },
            "del" => {
                Command::RegisterSet { name: pos[0].clone(), value: None, expected_version: named.get("v").copied() }
            }
            "get" => {
                let r = sm.register(&pos[0]).map(|r| (String::from_utf8_lossy(&r.value).into_owned(), r.version));
                writeln!(out, "> {line}\n  counter={} register={r:?}", sm.counter(&pos[0])).unwrap();
                continue;
            }
            "describe" => {
                writeln!(out, "> {line}").unwrap();
                match sm.lock(&pos[0]) {
                    None => writeln!(out, "  free").unwrap(),
                    Some(l) => {
                        let waiters: Vec<String> =
                            l.waiters.iter().map(|w| format!("s{}/r{}", w.session, w.request_id)).collect();
                        if l.kind == Kind::Mutex {
                            let (h, c) = (l.held_by(), l.closed_until_ms);
                            writeln!(out, "  holder={h:?} waiters=[{}] closed_until={c}", waiters.join(" ")).unwrap();
                        } else {
                            let holders: Vec<String> =
                                l.holders.iter().map(|h| format!("s{}/t{}/{:?}", h.session, h.token, h.mode)).collect();
                            writeln!(
                                out,
                                "  {:?} holders=[{}] waiters=[{}]",
                                l.kind,
                                holders.join(" "),
                                waiters.join(" ")
                            )
                            .unwrap();
                        }
                    }
                }
                continue;
            }
            other => panic!("unknown command {other}"),
        };
        index += 1;
        let mut events = Vec::new();
        let result = sm.apply(index, &Entry::new(time, time, command), &mut events);
        writeln!(out, "> {line}").unwrap();
        match result {
            Ok(outcome) => writeln!(out, "  ok {outcome:?}").unwrap(),
            Err(e) => writeln!(out, "  error {e:?}: {e}").unwrap(),
        }
        for e in events {
            writeln!(out, "  event {e:?}").unwrap();
        }
        // Every snapshot must restore to an identical state machine.
        assert_eq!(StateMachine::from_snapshot(&sm.to_snapshot()).unwrap(), sm, "snapshot round trip at {line}");
    }
    out
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let regenerate = std::env::var_os("BATON_GOLDEN").is_some();
    let mut scripts: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    scripts.sort();
    let mut ran = 0;
    for path in scripts.iter().filter(|p| p.extension().is_some_and(|e| e == "script")) {
        let transcript = run_script(&std::fs::read_to_string(path).unwrap());
        let golden = path.with_extension("golden");
        if regenerate {
            std::fs::write(&golden, &transcript).unwrap();
        } else {
            let expected = std::fs::read_to_string(&golden)
                .unwrap_or_else(|_| panic!("{} missing: run with BATON_GOLDEN=1", golden.display()));
            assert_eq!(transcript, expected, "transcript of {} differs from its golden file", path.display());
        }
        ran += 1;
    }
    assert!(ran >= 5, "expected the scenario scripts in {}", dir.display());
}
