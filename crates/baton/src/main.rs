//! The `baton` command: run a node (`dev`, `server`) or use a cluster (`lock`, `status`,
//! `describe`). See the README for a tour.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton_client::{Client, LockKind, LockOptions};

/// `println!` that does not panic when the reader of our output has gone away (`baton status |
/// head -1`): the command's output is no longer wanted, so it exits quietly (status 0, as a
/// filter does). SIGPIPE stays ignored in every command but `sim`: a client or server must see a
/// broken socket as an error, not die of the signal.
macro_rules! out {
    () => {
        out!("")
    };
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}
use baton_server::{Server, ServerConfig};
use clap::{Parser, Subcommand};

mod auth;
mod bench;
mod cluster;
mod crdt;
mod hold;
mod logging;
mod observe;
mod serve;
mod sim;
mod tls;
mod top;
mod verbs;

use hold::lock;
use serve::{parse_peers, serve_until_signal};
use verbs::{barrier, counter, describe, elect, latch, register, status, watch};

// Exit codes (documented in the README's CLI section). Each says whether anything changed, so
// that a script can tell a bad argument from an operation that may have been applied.

/// Exit code when the lock was not acquired within --wait (EX_TEMPFAIL).
const EXIT_NOT_ACQUIRED: u8 = 75;
/// Exit code when no server could be reached, or none led the group, in time: nothing was
/// applied (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when the request was sent but its outcome is not known (the connection broke or
/// the node stopped answering with it in flight): it may or may not have been applied (EX_IOERR).
const EXIT_OUTCOME_UNKNOWN: u8 = 74;
/// Exit code when the session's lease was lost: the command was killed at the lease's deadline,
/// or never started (EX_PROTOCOL).
const EXIT_LEASE_LOST: u8 = 76;
/// Exit code for a command that could not be started.
const EXIT_NO_COMMAND: u8 = 127;
/// Exit code for bad usage or a request the server refused: nothing changed (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code when a benchmark or report could not complete (EX_SOFTWARE).
const EXIT_FAILED: u8 = 70;

#[derive(Parser)]
#[command(name = "baton", version, about = "Baton: fenced locks and leases on Raft")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Log format on stderr (level set by BATON_LOG, e.g. `debug`).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    /// Export the spans of every request (gRPC call, node request with its proposal's index
    /// and term, persist, apply, answer) to this OpenTelemetry collector over OTLP/gRPC, e.g.
    /// http://127.0.0.1:4317.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
    /// The share of traces exported with --otlp-endpoint (0..=1; sampled at each trace's root).
    #[arg(long, global = true, default_value_t = 0.01)]
    otlp_sample_ratio: f64,
    #[command(flatten)]
    tls: tls::ClientTlsArgs,
    #[command(flatten)]
    credentials: auth::CredentialArgs,
}

/// Arguments shared by the commands that hold something while running a command.
#[derive(clap::Args)]
struct HoldArgs {
    /// Comma-separated client addresses of any nodes.
    #[arg(long, default_value = "127.0.0.1:7700")]
    endpoints: String,
    /// Session TTL in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: u64,
    /// Give up (exit 75) if not acquired within this many seconds; default: wait forever.
    #[arg(long, value_parser = seconds)]
    wait: Option<f64>,
    /// Lock-delay in seconds after an expiry of this holder.
    #[arg(long, default_value_t = 0.0, value_parser = seconds)]
    lock_delay: f64,
    /// The name.
    name: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Where `baton dev` serves etcd's API by default (etcd's own default client address).
const DEV_ETCD_ADDR: &str = "127.0.0.1:2379";
/// Where `baton dev` serves health and metrics by default.
const DEV_HTTP_ADDR: &str = "127.0.0.1:7780";

/// A listener on `addr` (`baton dev`'s defaults), or `None` with a note saying why not.
async fn default_listener(addr: &str, what: &str, flag: &str) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            out!("baton dev: not serving {what}: {addr} is taken ({e}); give {flag}");
            None
        }
    }
}

/// Data groups per node of a new cluster when `--groups` is not given.
const DEFAULT_GROUPS_PER_NODE: u64 = 4;

#[derive(Subcommand)]
enum Cmd {
    /// Run a complete single-node service (data in a local folder).
    Dev {
        /// Data folder.
        #[arg(long, default_value = "./baton-data")]
        data: PathBuf,
        /// Address for clients.
        #[arg(long, default_value = "127.0.0.1:7700")]
        client_addr: String,
        /// Serve reads and keepalives from a leader lease (docs/SEMANTICS.md: assumes bounded
        /// clock drift).
        #[arg(long)]
        lease_reads: bool,
        /// Data groups (Raft groups the names are sharded over) of a new data folder, 1..=1024.
        #[arg(long, default_value_t = DEFAULT_GROUPS_PER_NODE, value_parser = clap::value_parser!(u64).range(1..=1024))]
        groups: u64,
        /// Serve etcd's v3 API here (docs/ETCD.md). Default: 127.0.0.1:2379 if that port is
        /// free, else none (a note says so).
        #[arg(long, conflicts_with = "no_etcd")]
        etcd_addr: Option<String>,
        /// Serve no etcd API.
        #[arg(long)]
        no_etcd: bool,
        /// The etcd keyspace's quota in bytes (etcd's default; 0: none): beyond it the NOSPACE
        /// alarm refuses writes that add data until `etcdctl alarm disarm`.
        #[arg(long, default_value_t = baton_server::etcd::DEFAULT_QUOTA_BYTES)]
        etcd_quota_bytes: u64,
        /// Serve /healthz, /readyz and /metrics here. Default: 127.0.0.1:7780 if that port is
        /// free, else none (a note says so).
        #[arg(long, conflicts_with = "no_http")]
        http_addr: Option<String>,
        /// Serve no HTTP endpoint.
        #[arg(long)]
        no_http: bool,
        /// TLS on every port with throw-away certificates made in the data folder (client
        /// certificates required on the client and etcd ports); prints how to use them.
        #[arg(long)]
        tls: bool,
    },
    /// Run one node of a cluster.
    Server {
        /// This node's id (a key of --peers).
        #[arg(long)]
        id: u64,
        /// Data folder.
        #[arg(long)]
        data: PathBuf,
        /// Address for clients.
        #[arg(long)]
        client_addr: String,
        /// Address for other nodes.
        #[arg(long)]
        peer_addr: String,
        /// Peer addresses of all initial members: 1=HOST:PORT,2=HOST:PORT,... (not with --join).
        #[arg(long, required_unless_present = "join", conflicts_with = "join")]
        peers: Option<String>,
        /// Join a running cluster through any of its nodes' client addresses (comma-separated):
        /// the node holds nothing until `baton cluster add-node` adds it.
        #[arg(long)]
        join: Option<String>,
        /// Raft tick in milliseconds (election timeout is 10 ticks, randomised up to 20).
        #[arg(long, default_value_t = 100)]
        tick_ms: u64,
        /// Serve reads and keepalives from a leader lease (705 ms with the default tick)
        /// instead of a heartbeat round each (docs/SEMANTICS.md: assumes bounded clock drift).
        /// Every member needs the same setting and --tick-ms.
        #[arg(long)]
        lease_reads: bool,
        /// Largest message between nodes, in MiB: a snapshot travels in one, so a state whose
        /// snapshot outgrows it cannot be sent to a lagging follower (an error says so).
        #[arg(long, default_value_t = 256)]
        max_peer_message_mib: usize,
        /// Data groups (Raft groups the names are sharded over) of a new cluster, 1..=1024; every
        /// node must be started with the same. Default: 4 per node, so that every node leads some.
        /// Ignored once the data folder exists (its layout decides).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
        groups: Option<u64>,
        /// Replicas per data group of a new cluster: with more nodes than this, each group lives
        /// on this many of them (placed evenly, and placed again as nodes join and leave).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
        replicas: u64,
        /// Serve etcd's v3 API on this address (docs/ETCD.md; off unless given). Give it to every
        /// node: etcd's clients learn the others' addresses from MemberList.
        #[arg(long)]
        etcd_addr: Option<String>,
        /// The etcd keyspace's quota in bytes (etcd's default; 0: none), enforced by the node
        /// leading the keyspace: give every node the same.
        #[arg(long, default_value_t = baton_server::etcd::DEFAULT_QUOTA_BYTES)]
        etcd_quota_bytes: u64,
        /// Serve /healthz, /readyz and /metrics (Prometheus) on this address (off unless given).
        #[arg(long)]
        http_addr: Option<String>,
        /// Count no metrics, hot names or request timings (to measure what they cost: see
        /// bench/observability.sh); /metrics keeps the gauges read at each scrape.
        #[arg(long)]
        no_metrics: bool,
        #[command(flatten)]
        tls: Box<tls::ServerTlsArgs>,
    },
    /// Hold a lock while running a command: `baton lock NAME -- CMD [ARGS...]`.
    Lock {
        #[command(flatten)]
        hold: HoldArgs,
    },
    /// Hold a read/write lock while running a command: `baton rwlock --read NAME -- CMD`.
    Rwlock {
        /// Take the read (shared) side.
        #[arg(long, conflicts_with = "write", required_unless_present = "write")]
        read: bool,
        /// Take the write (exclusive) side.
        #[arg(long)]
        write: bool,
        #[command(flatten)]
        hold: HoldArgs,
    },
    /// Hold semaphore permits while running a command: `baton sem --capacity 4 NAME -- CMD`.
    Sem {
        /// Permits to take.
        #[arg(long, default_value_t = 1)]
        permits: u32,
        /// The semaphore's capacity (every user of NAME must give the same).
        #[arg(long)]
        capacity: u32,
        #[command(flatten)]
        hold: HoldArgs,
    },
    /// A linearizable counter: `baton counter NAME add N | get | cas EXPECTED NEW`.
    Counter {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// The counter's name.
        name: String,
        /// The operation.
        op: verbs::CounterOp,
        /// add: the amount; cas: the expected and the new value.
        #[arg(allow_negative_numbers = true)]
        args: Vec<i64>,
    },
    /// A versioned register: `baton register NAME get | set VALUE | delete [--if-version V]`.
    Register {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Only write or delete if the current version is this (0: not written yet).
        #[arg(long)]
        if_version: Option<u64>,
        /// The register's name.
        name: String,
        /// The operation.
        op: verbs::RegisterOp,
        /// set: the value.
        value: Option<String>,
    },
    /// Leader election: `baton elect NAME VALUE` campaigns and holds leadership until interrupted;
    /// `baton elect --observe NAME` prints every leadership change.
    Elect {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Session TTL in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: u64,
        /// Only observe.
        #[arg(long)]
        observe: bool,
        /// The election's name.
        name: String,
        /// The value to publish once elected.
        #[arg(required_unless_present = "observe")]
        value: Option<String>,
    },
    /// Arrive at a barrier and wait for all parties (exit 75 if --wait runs out).
    Barrier {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// How many parties must arrive.
        #[arg(long)]
        parties: u32,
        /// Give up after this many seconds (default: one hour).
        #[arg(long, default_value_t = 3600.0, value_parser = seconds)]
        wait: f64,
        /// The barrier's name.
        name: String,
    },
    /// Countdown latch: `baton latch NAME set N | down | wait [--wait SECS]`.
    Latch {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// For wait: give up after this many seconds (exit 75).
        #[arg(long, default_value_t = 3600.0, value_parser = seconds)]
        wait: f64,
        /// The latch's name.
        name: String,
        /// The operation.
        op: verbs::LatchOp,
        /// For set: the count.
        count: Option<u64>,
    },
    /// Stream the events on a name (or a prefix) until interrupted.
    Watch {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Watch every name that starts with NAME.
        #[arg(long)]
        prefix: bool,
        /// Start at this sequence number (default: from now).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
        /// The name (or prefix).
        name: String,
    },
    /// The cluster's layout: the slot map, moving slots between groups, balancing.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Users: add, remove, passwd, grant-role, revoke-role (docs/SECURITY.md).
    #[command(subcommand)]
    User(auth::UserCmd),
    /// Roles and their permissions on name prefixes: add, remove, grant, revoke.
    #[command(subcommand)]
    Role(auth::RoleCmd),
    /// Authentication: enable, disable, status.
    #[command(subcommand)]
    Auth(auth::AuthCmd),
    /// The coordination-free tier: counters, sets and registers any node updates alone
    /// (docs/PRIMITIVES.md, "Linearizable or coordination-free?").
    #[command(subcommand)]
    Crdt(crdt::CrdtCmd),
    /// Show the cluster: nodes, groups, leaders, terms, indexes.
    Status {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput and latency of Baton or etcd with the same workloads.
    Bench {
        /// baton, or etcd (a real etcd v3 server, through its Lock, Lease, KV and Election APIs).
        #[arg(long, default_value = "baton")]
        target: String,
        /// Comma-separated client addresses of any nodes (etcd: of its members).
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// uncontended, uncontended-session, contended, hot-set, session-churn, keepalive-scale,
        /// election, mixed, hold.
        #[arg(long, default_value = "uncontended")]
        workload: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        duration: f64,
        /// Sessions held by keepalive-scale and hold.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Locks held by hold.
        #[arg(long, default_value_t = 100_000)]
        locks: usize,
        /// Comma-separated PIDs of the server processes, for memory and CPU figures.
        #[arg(long, default_value = "")]
        pids: String,
        /// Connections the clients share, as tasks of one process would (default: one each).
        #[arg(long, default_value_t = 0)]
        connections: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Turn `baton bench --json` lines of both targets into a markdown table and an SVG plot.
    BenchReport {
        /// The file of JSON lines.
        input: std::path::PathBuf,
        /// Where to write the plot.
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// Deterministic simulation: a campaign of seeds, or one seed replayed with its trace.
    Sim {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed of the campaign.
        #[arg(long, default_value_t = 0)]
        start_seed: u64,
        /// Run (replay) this one seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Cluster size: 1, 3, 5 or 7.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 5)]
        clients: usize,
        /// all, none, or a list of: loss,duplicate,delay,partition,crash,pause,clock,disk.
        #[arg(long, default_value = "all")]
        faults: String,
        /// Run a deliberately broken variant (each checker has at least one; docs/TESTING.md lists
        /// them, and an unknown name prints the known ones), e.g. grant-ignores-queue.
        #[arg(long)]
        bug: Option<String>,
        /// Print the whole trace (with --seed).
        #[arg(long)]
        trace: bool,
        /// Virtual milliseconds of faults.
        #[arg(long, default_value_t = 20_000)]
        fault_ms: u64,
        /// Virtual milliseconds of healed operation after the faults.
        #[arg(long, default_value_t = 15_000)]
        heal_ms: u64,
        /// Nodes serve reads and keepalives from leader leases (as `baton server --lease-reads`).
        #[arg(long)]
        lease_reads: bool,
        /// Data groups the names are sharded over; with more than one, slots also move between
        /// groups during the run (as `baton cluster move-slots`), under every fault.
        #[arg(long, default_value_t = 1)]
        groups: u64,
        /// Add a spare node that joins (`--join`) and membership changes during the run (as
        /// `baton cluster add-node` / `remove-node`), under every fault.
        #[arg(long)]
        membership: bool,
        /// Each client a user of its own (authentication on): its sessions are its user's, and
        /// its tries to close another client's session must all be refused.
        #[arg(long)]
        users: bool,
        /// Simulate the coordination-free tier instead (CRDT replicas under every fault; checks
        /// convergence, durability, session and converged reads, bounded counters).
        #[arg(long)]
        crdt: bool,
        /// With --crdt: measure acknowledged updates per virtual second on 1, 3, 5 and 7 nodes
        /// (--clients per node, --fault-ms long, no faults, a processor cost per round and input).
        #[arg(long)]
        throughput: bool,
    },
    /// The hottest names: most waiters and handoffs over the last one to two minutes, with their
    /// holders and waiters now (every data group; each node answers for its replicas).
    Hot {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Names per group (1..=256).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The dashboard in the terminal: groups (leaders, terms, grants/s, queue depth) and the hottest
    /// names with their holders and waiters, refreshing in place (q quits).
    Top {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Names per group (1..=256).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Stop after this many refreshes (0: until q).
        #[arg(long, default_value_t = 0)]
        iterations: u64,
    },
    /// What happened to a name lately: grants, releases, expiries, waits, timeouts, election
    /// leader changes (who, token, HLC and wall time), oldest first.
    History {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Most events shown, the latest (1..=10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The name.
        name: String,
    },
    /// Make a throw-away CA and certificates for a test cluster: ca.pem, node-ID.pem (naming
    /// node-ID and the hosts; for the client, etcd, HTTP and peer ports) and a client
    /// certificate per user, each with its -key.pem. For real deployments use your own CA
    /// (docs/SECURITY.md).
    Certs {
        /// Folder to write them to (made if missing; existing files are overwritten).
        dir: PathBuf,
        /// Node ids to make certificates for.
        #[arg(long, default_value = "1,2,3")]
        nodes: String,
        /// Host names and IP addresses every node certificate is valid for.
        #[arg(long, default_value = "127.0.0.1,localhost")]
        hosts: String,
        /// Users to make client certificates for (the certificate's common name).
        #[arg(long, default_value = "root")]
        users: String,
    },
    /// Show a lock's holder, fencing token and waiters.
    Describe {
        /// Comma-separated client addresses of any nodes.
        #[arg(long, default_value = "127.0.0.1:7700")]
        endpoints: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// The lock's name.
        name: String,
    },
}

fn main() -> ExitCode {
    // Bad arguments exit 64 like every other usage error (clap's own code would be 2).
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    if let Cmd::Sim {
        seeds,
        start_seed,
        seed,
        nodes,
        clients,
        faults,
        bug,
        trace,
        fault_ms,
        heal_ms,
        lease_reads,
        groups,
        membership,
        users,
        crdt,
        throughput,
    } = cli.command
    {
        // Pure computation: no runtime, no logging, no sockets. Like other filters, stop quietly
        // when the reader of our output goes away (`baton sim ... | head`). Only here: a server
        // or client must see EPIPE on a broken socket as an error, not die of SIGPIPE (the
        // chaos test caught exactly that when this was set for every command).
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        return sim::main(sim::SimArgs {
            seeds,
            start_seed,
            seed,
            nodes,
            clients,
            faults,
            bug,
            trace,
            fault_ms,
            heal_ms,
            lease_reads,
            groups,
            membership,
            users,
            crdt,
            throughput,
        });
    }
    match cli.tls.files() {
        Ok(files) => tls::set_client(files),
        Err(e) => return fail(EXIT_USAGE, e),
    }
    match cli.credentials.credentials() {
        Ok(c) => auth::set_credentials(c),
        Err(e) => return fail(EXIT_USAGE, e),
    }
    let serving = matches!(cli.command, Cmd::Dev { .. } | Cmd::Server { .. });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let tracer = {
        let _in_runtime = rt.enter();
        match logging::init(cli.log_format, cli.otlp_endpoint.as_deref(), cli.otlp_sample_ratio, serving) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("baton: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    if serving {
        // SIGHUP reloads certificates (baton_tls::watch); taken from the start, so that one sent
        // before the node serves (or to a node without TLS) does not end it.
        let _in_runtime = rt.enter();
        if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            rt.spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: TLS certificates are read again (if the node runs TLS)");
                }
            });
        }
    }
    let code = rt.block_on(run(cli.command));
    if let Some(provider) = tracer {
        let _in_runtime = rt.enter();
        if let Err(e) = provider.shutdown() {
            eprintln!("baton: spans not all exported: {e}");
        }
    }
    code
}

/// A number of seconds given on the command line: finite, not negative, at most a year (a
/// `Duration` is made of it; `nan` or `inf` used to panic there). The server has its own,
/// smaller limits for waits and delays, and says so.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=31_536_000.0).contains(&v) {
        return Err(format!("{s} is not a number of seconds within 0..=31536000"));
    }
    Ok(v)
}

fn endpoints(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

async fn run(cmd: Cmd) -> ExitCode {
    match cmd {
        Cmd::Dev {
            data,
            client_addr,
            lease_reads,
            groups,
            etcd_addr,
            no_etcd,
            etcd_quota_bytes,
            http_addr,
            no_http,
            tls,
        } => {
            let peer = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => return fail(1, format!("cannot bind a peer port: {e}")),
            };
            let peer_addr = peer.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let mut config = ServerConfig::new(1, data.clone(), BTreeMap::from([(1, peer_addr)]));
            config.lease_reads = lease_reads;
            config.groups = groups;
            config.etcd_quota_bytes = etcd_quota_bytes;
            // A given address must be free (the server binds it, or fails saying so); a default one
            // is used only if it is (another etcd may run here), bound now so that nothing can
            // take it before the server starts.
            config.http_addr = http_addr;
            config.etcd_addr = etcd_addr;
            let mut dev_set = None;
            if tls {
                match tls::dev(&data) {
                    Ok((tls, set)) => (config.tls, dev_set) = (tls, Some(set)),
                    Err(e) => return fail(1, format!("cannot make the TLS certificates: {e}")),
                }
            }
            let scheme = if tls { "https" } else { "http" };
            let http = if config.http_addr.is_some() || no_http {
                None
            } else {
                default_listener(DEV_HTTP_ADDR, "HTTP (health and metrics)", "--http-addr").await
            };
            let etcd = if config.etcd_addr.is_some() || no_etcd {
                None
            } else {
                default_listener(DEV_ETCD_ADDR, "the etcd API", "--etcd-addr").await
            };
            let client = match tokio::net::TcpListener::bind(&client_addr).await {
                Ok(l) => l,
                Err(e) => return fail(1, format!("cannot listen for clients on {client_addr}: {e}")),
            };
            match Server::start_with(config, baton_server::Listeners { client, peer, etcd, http }).await {
                Ok(server) => {
                    out!("baton dev: serving clients on {} (data in {})", server.client_addr, data.display());
                    if let Some(a) = server.etcd_addr {
                        out!("baton dev: serving etcd's v3 API on {a} (etcdctl --endpoints {a} ...)");
                    }
                    if let Some(a) = server.http_addr {
                        out!("baton dev: serving the dashboard on {scheme}://{a}/ (and /metrics, /healthz, /readyz)");
                    }
                    if let Some(set) = &dev_set {
                        for line in tls::dev_notes(set, server.client_addr, server.etcd_addr, server.http_addr) {
                            out!("baton dev: {line}");
                        }
                    }
                    serve_until_signal(server).await
                }
                Err(e) => fail(1, format!("cannot start: {e}")),
            }
        }
        Cmd::Server {
            id,
            data,
            client_addr,
            peer_addr,
            peers,
            join,
            tick_ms,
            lease_reads,
            max_peer_message_mib,
            groups,
            replicas,
            etcd_addr,
            etcd_quota_bytes,
            http_addr,
            no_metrics,
            tls,
        } => {
            let peers = match &peers {
                Some(p) => match parse_peers(p) {
                    Ok(p) => p,
                    Err(e) => return fail(EXIT_USAGE, e),
                },
                None => BTreeMap::from([(id, peer_addr.clone())]),
            };
            let nodes = peers.len() as u64;
            let mut config = ServerConfig::new(id, data.clone(), peers);
            config.groups = groups.unwrap_or(DEFAULT_GROUPS_PER_NODE * nodes).min(1024);
            config.join = join.as_deref().map(endpoints).unwrap_or_default();
            config.replication = replicas as usize;
            config.tick = Duration::from_millis(tick_ms.max(1));
            config.lease_reads = lease_reads;
            config.max_peer_message_bytes = max_peer_message_mib.max(1).saturating_mul(1 << 20);
            config.etcd_addr = etcd_addr;
            config.etcd_quota_bytes = etcd_quota_bytes;
            config.http_addr = http_addr;
            config.metrics = !no_metrics;
            config.tls = tls.config(tls::client());
            let scheme = if config.tls.serve.is_some() { "https" } else { "http" };
            match Server::start(config, &client_addr, &peer_addr).await {
                Ok(server) => {
                    out!(
                        "baton server {id}: serving clients on {} and peers on {} (data in {})",
                        server.client_addr,
                        server.peer_addr,
                        data.display()
                    );
                    if let Some(a) = server.etcd_addr {
                        out!("baton server {id}: serving etcd's v3 API on {a}");
                    }
                    if let Some(a) = server.http_addr {
                        out!(
                            "baton server {id}: serving the dashboard on {scheme}://{a}/ (and /metrics, /healthz, /readyz)"
                        );
                    }
                    serve_until_signal(server).await
                }
                Err(e) => fail(1, format!("cannot start: {e}")),
            }
        }
        Cmd::Lock { hold } => lock(hold, LockKind::Exclusive).await,
        Cmd::Rwlock { read, hold, .. } => lock(hold, if read { LockKind::Read } else { LockKind::Write }).await,
        Cmd::Sem { permits, capacity, hold } => lock(hold, LockKind::Semaphore { permits, capacity }).await,
        Cmd::Status { endpoints: eps, json } => status(eps, json).await,
        Cmd::Cluster(cmd) => cluster::run(cmd).await,
        Cmd::User(cmd) => auth::user(cmd).await,
        Cmd::Role(cmd) => auth::role(cmd).await,
        Cmd::Auth(cmd) => auth::auth(cmd).await,
        Cmd::Crdt(cmd) => crdt::crdt(cmd).await,
        Cmd::Barrier { endpoints: eps, parties, wait, name } => barrier(eps, name, parties, wait).await,
        Cmd::Latch { endpoints: eps, wait, name, op, count } => latch(eps, name, op, count, wait).await,
        Cmd::Elect { endpoints: eps, ttl, observe, name, value } => elect(eps, ttl, observe, name, value).await,
        Cmd::Watch { endpoints: eps, prefix, from, json, name } => watch(eps, name, prefix, from, json).await,
        Cmd::Counter { endpoints: eps, name, op, args } => counter(eps, name, op, args).await,
        Cmd::Register { endpoints: eps, if_version, name, op, value } => {
            register(eps, name, op, value, if_version).await
        }
        Cmd::Describe { endpoints: eps, json, name } => describe(eps, json, name).await,
        Cmd::Certs { dir, nodes, hosts, users } => match tls::make_certs(&dir, &nodes, &hosts, &users) {
            Ok(written) => {
                for f in written {
                    out!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_USAGE, e),
        },
        Cmd::Hot { endpoints: eps, json, limit } => observe::hot(eps, json, limit).await,
        Cmd::Top { endpoints: eps, interval_ms, limit, iterations } => {
            top::top(eps, Duration::from_millis(interval_ms.clamp(100, 60_000)), limit, iterations).await
        }
        Cmd::History { endpoints: eps, json, limit, name } => observe::history(eps, json, limit, name).await,
        Cmd::Sim { .. } => unreachable!("handled before the runtime starts"),
        Cmd::Bench {
            target,
            endpoints: eps,
            workload,
            clients,
            duration,
            sessions,
            locks,
            pids,
            connections,
            json,
        } => {
            let args = parse_pids(&pids).and_then(|pids| {
                let args = bench::BenchArgs {
                    target: bench::driver::Target::parse(&target)?,
                    endpoints: endpoints(&eps),
                    workload,
                    clients,
                    duration: Duration::from_secs_f64(duration.clamp(0.1, 3600.0)),
                    sessions,
                    locks,
                    pids,
                    connections,
                };
                bench::validate(&args).map(|()| args)
            });
            match args {
                Ok(args) => match bench::run(args).await {
                    Ok(report) if json => {
                        out!("{}", report.to_json());
                        ExitCode::SUCCESS
                    }
                    Ok(report) => {
                        out!("{}", report.to_text());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(EXIT_FAILED, e),
                },
                Err(e) => fail(EXIT_USAGE, e),
            }
        }
        Cmd::BenchReport { input, svg } => bench_report(&input, svg.as_deref()),
    }
}

/// `--pids`: comma-separated process ids (empty: none).
fn parse_pids(list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<u32>().map_err(|_| format!("--pids: {p:?} is not a process id")))
        .collect()
}

fn bench_report(input: &std::path::Path, svg: Option<&std::path::Path>) -> ExitCode {
    let text = match std::fs::read_to_string(input) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, format!("{}: {e}", input.display())),
    };
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| l.trim_start().starts_with('{')) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => lines.push(v),
            Err(e) => return fail(EXIT_USAGE, format!("{}:{}: not JSON: {e}", input.display(), i + 1)),
        }
    }
    print!("{}", bench::report::markdown(&lines));
    if let Some(svg) = svg {
        if let Err(e) = bench::report::plot(&lines, svg) {
            return fail(EXIT_FAILED, e);
        }
    }
    ExitCode::SUCCESS
}

fn fail(code: u8, msg: String) -> ExitCode {
    eprintln!("baton: {msg}");
    ExitCode::from(code)
}

async fn connect(eps: &str) -> Result<Client, ExitCode> {
    let eps = endpoints(eps);
    let options =
        baton_client::ClientOptions { tls: tls::client(), credentials: auth::credentials(), ..Default::default() };
    Client::connect_with(eps, options).await.map_err(client_error)
}

/// The one mapping of client errors to exit codes.
fn client_error(e: baton_client::Error) -> ExitCode {
    use baton_client::Error as E;
    match e {
        E::Status(s) => fail(EXIT_USAGE, format!("refused: {:?}: {}", s.code(), s.message())),
        E::BadEndpoint(..) | E::Tls(_) => fail(EXIT_USAGE, e.to_string()),
        E::Unreachable(..) => fail(EXIT_UNAVAILABLE, e.to_string()),
        E::OutcomeUnknown(_) => fail(EXIT_OUTCOME_UNKNOWN, e.to_string()),
        E::LeaseLost(_) => fail(EXIT_LEASE_LOST, e.to_string()),
    }
}
