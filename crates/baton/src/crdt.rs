//! `baton crdt`: the coordination-free tier's counters, sets and registers from the shell.

use baton_client::crdt::{CrdtKind, CrdtValue, ReadLevel};

use super::*;

/// Where to send, and how fresh a read must be.
#[derive(clap::Args)]
pub(crate) struct CrdtArgs {
    /// Comma-separated client addresses of any nodes (the first that answers takes the call).
    #[arg(long, default_value = "127.0.0.1:7700")]
    endpoints: String,
    /// How fresh a read must be: local (this node's state), session (this command's own
    /// writes: the same as local for a single command), converged (every live node has what the
    /// answering node has).
    #[arg(long, value_enum, default_value = "local")]
    level: Level,
    /// Longest wait of a converged read, or of a bounded subtraction for rights, in ms.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Level {
    Local,
    Session,
    Converged,
}

#[derive(Subcommand)]
pub(crate) enum CrdtCmd {
    /// A counter that any node updates alone: `baton crdt counter NAME add N | sub N | get`.
    Counter {
        #[command(flatten)]
        args: CrdtArgs,
        /// pn: adds and subtractions; g: adds only; bounded: never below zero (a node subtracts
        /// from its own rights, asking others for more).
        #[arg(long, value_enum, default_value = "pn")]
        kind: CounterKind,
        /// The counter's name.
        name: String,
        /// The operation.
        op: CounterOp,
        /// add, sub: the amount (at least 1).
        amount: Option<u64>,
    },
    /// A set that any node updates alone: `baton crdt set NAME add E | remove E | members`.
    Set {
        #[command(flatten)]
        args: CrdtArgs,
        /// or: adds and removes (an add concurrent with a remove wins); g: adds only.
        #[arg(long, value_enum, default_value = "or")]
        kind: SetKind,
        /// The set's name.
        name: String,
        /// The operation.
        op: SetOp,
        /// add, remove: the element.
        element: Option<String>,
    },
    /// Print every change of the objects named NAME (or starting with it, --prefix) on the node,
    /// one line each: `KIND NAME VALUE (local|merged)`; for a name, the current values first.
    Watch {
        #[command(flatten)]
        args: CrdtArgs,
        /// Every object whose name starts with NAME.
        #[arg(long)]
        prefix: bool,
        /// The name (or prefix).
        name: String,
    },
    /// A register that any node writes alone: `baton crdt register NAME set V | get | clear`.
    Register {
        #[command(flatten)]
        args: CrdtArgs,
        /// lww: the write with the latest hybrid-logical-clock stamp wins; mv: concurrent
        /// writes are all kept until a write that saw them replaces them.
        #[arg(long, value_enum, default_value = "lww")]
        kind: RegisterKind,
        /// The register's name.
        name: String,
        /// The operation.
        op: RegisterOp,
        /// set: the value.
        value: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum CounterKind {
    Pn,
    G,
    Bounded,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum CounterOp {
    /// Add the amount; prints the value on the answering node.
    Add,
    /// Subtract the amount; prints the value.
    Sub,
    /// Print the value.
    Get,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum SetKind {
    Or,
    G,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum SetOp {
    /// Add the element.
    Add,
    /// Remove the element.
    Remove,
    /// Print the members, one per line.
    Members,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum RegisterKind {
    Lww,
    Mv,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum RegisterOp {
    /// Write the value.
    Set,
    /// Print the value (mv: every concurrent value, one per line).
    Get,
    /// Clear the value (lww only).
    Clear,
}

fn level(l: Level) -> ReadLevel {
    match l {
        Level::Local => ReadLevel::Local,
        Level::Session => ReadLevel::Session,
        Level::Converged => ReadLevel::Converged,
    }
}

pub(crate) async fn crdt(cmd: CrdtCmd) -> ExitCode {
    let args = match &cmd {
        CrdtCmd::Counter { args, .. }
        | CrdtCmd::Set { args, .. }
        | CrdtCmd::Register { args, .. }
        | CrdtCmd::Watch { args, .. } => args,
    };
    let client = match connect(&args.endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let tier = client.crdt().with_timeout(Duration::from_millis(args.timeout_ms));
    let lvl = level(args.level);
    let usage = |m: &str| fail(EXIT_USAGE, format!("crdt: {m}"));
    let result: baton_client::Result<Vec<String>> = match cmd {
        CrdtCmd::Watch { name, prefix, .. } => {
            let mut events = tier.watch(&name, prefix);
            while let Some(e) = events.recv().await {
                match e {
                    Ok(e) if e.r#type == "crdt_sync" => {
                        out!("-- watching {} on the node (changes from here on)", e.name);
                    }
                    Ok(e) => {
                        let value = match e.crdt_kind.as_str() {
                            "gcounter" | "pncounter" | "bcounter" => e.counter_value.to_string(),
                            "gset" | "orset" => format!("{:?}", e.members),
                            _ => {
                                format!("{:?}", e.values.iter().map(|v| String::from_utf8_lossy(v)).collect::<Vec<_>>())
                            }
                        };
                        let how = if e.r#type == "crdt_value" {
                            "now"
                        } else if e.local {
                            "local"
                        } else {
                            "merged"
                        };
                        out!("{} {} {value} ({how})", e.crdt_kind, e.name);
                    }
                    Err(e) => return client_error(e),
                }
            }
            Ok(vec![])
        }
        CrdtCmd::Counter { kind, name, op, amount, .. } => {
            let kind = match kind {
                CounterKind::Pn => CrdtKind::PnCounter,
                CounterKind::G => CrdtKind::GCounter,
                CounterKind::Bounded => CrdtKind::BoundedCounter,
            };
            let show = move |v: CrdtValue| {
                if kind == CrdtKind::BoundedCounter {
                    vec![format!("{} (this node's rights: {})", v.value, v.rights)]
                } else {
                    vec![v.value.to_string()]
                }
            };
            match (op, amount) {
                (CounterOp::Get, None) => tier.read(kind, &name, lvl).await.map(show),
                (CounterOp::Add, Some(n)) => tier.add(kind, &name, n).await.map(show),
                (CounterOp::Sub, Some(n)) => tier.subtract(kind, &name, n).await.map(show),
                (CounterOp::Get, Some(_)) => return usage("get takes no amount"),
                (_, None) => return usage("add and sub take the amount"),
            }
        }
        CrdtCmd::Set { kind, name, op, element, .. } => {
            let kind = match kind {
                SetKind::Or => CrdtKind::OrSet,
                SetKind::G => CrdtKind::GSet,
            };
            let show = |v: CrdtValue| v.members;
            match (op, element) {
                (SetOp::Members, None) => tier.read(kind, &name, lvl).await.map(show),
                (SetOp::Add, Some(e)) => tier.insert(kind, &name, &e).await.map(|_| vec![]),
                (SetOp::Remove, Some(e)) if kind == CrdtKind::OrSet => tier.remove(&name, &e).await.map(|_| vec![]),
                (SetOp::Remove, Some(_)) => return usage("a grow-only set has no remove"),
                (SetOp::Members, Some(_)) => return usage("members takes no element"),
                (_, None) => return usage("add and remove take the element"),
            }
        }
        CrdtCmd::Register { kind, name, op, value, .. } => {
            let kind = match kind {
                RegisterKind::Lww => CrdtKind::LwwRegister,
                RegisterKind::Mv => CrdtKind::MvRegister,
            };
            let show = |v: CrdtValue| v.values.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
            match (op, value) {
                (RegisterOp::Get, None) => tier.read(kind, &name, lvl).await.map(show),
                (RegisterOp::Set, Some(v)) => tier.write(kind, &name, v.as_bytes()).await.map(|_| vec![]),
                (RegisterOp::Clear, None) if kind == CrdtKind::LwwRegister => tier.clear(&name).await.map(|_| vec![]),
                (RegisterOp::Clear, _) => return usage("clear applies to an lww register, and takes no value"),
                (RegisterOp::Get, Some(_)) => return usage("get takes no value"),
                (RegisterOp::Set, None) => return usage("set takes the value"),
            }
        }
    };
    match result {
        Ok(lines) => {
            for l in lines {
                out!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => client_error(e),
    }
}
