//! `baton dev` and `baton server`: run a node until a signal, or until it stops on its own.

use super::*;

pub(crate) fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| format!("--peers entry {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("--peers entry {part:?}: {id:?} is not a node id"))?;
        if id == 0 {
            return Err("--peers: node ids start at 1".into());
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("--peers names node {id} twice"));
        }
    }
    if peers.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(peers)
}

/// Exit code of a server that stopped on a fatal error (EX_SOFTWARE).
const EXIT_SERVER_FAILED: u8 = 71;

pub(crate) async fn serve_until_signal(server: Server) -> ExitCode {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return fail(1, format!("cannot install signal handler: {e}")),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        // The node stopped on its own: a disk write or the node failed (already logged).
        result = server.stopped() => {
            server.shutdown().await;
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_SERVER_FAILED, format!("fatal: {e}; the node stopped")),
            };
        }
    }
    eprintln!("baton: shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}
