//! A process's resident memory and CPU time, from `/proc` (Linux): what `baton bench` reads of
//! the servers it was given (`--pids`), and what a node's metrics report of itself.

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("pid {pid}: {e}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or(format!("pid {pid}: no VmRSS in status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or(format!("pid {pid}: unreadable VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

/// User + system CPU time a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("pid {pid}: {e}"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // plain: state is field 3, utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or(format!("pid {pid}: unreadable stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or(format!("pid {pid}: bad stat"));
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(total as f64 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 1024 * 1024);
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(me).unwrap() > 0.0);
        assert!(rss_bytes(u32::MAX).is_err());
    }
}
