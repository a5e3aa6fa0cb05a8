//! CPU time, read from the scheduler's own accounting (`se.sum_exec_runtime` in
//! `/proc/.../sched`, nanoseconds printed as milliseconds): per thread, so a bench client's
//! share is its own, and summed over a process's threads for the server. `/proc/PID/stat`
//! counts in 10 ms ticks, too coarse for a short row.

use std::time::Duration;

/// The CPU time of the thread or process whose `sched` file is `path`.
fn sched(path: &str) -> Result<Duration, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ms = text
        .lines()
        .find_map(|l| l.strip_prefix("se.sum_exec_runtime"))
        .and_then(|rest| {
            rest.trim_start_matches([' ', ':'])
                .trim()
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| format!("{path}: no se.sum_exec_runtime"))?;
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// This thread's CPU time so far.
pub(crate) fn thread() -> Result<Duration, String> {
    sched("/proc/thread-self/sched")
}

/// The CPU time so far of every live thread of process `pid` (a thread that has ended takes
/// its share with it: hsmd's threads live as long as it does). Where the kernel keeps no
/// `sched` files, the process's user and system time from `/proc/PID/stat` instead, in 10 ms
/// ticks.
pub(crate) fn process(pid: u32) -> Result<Duration, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))?;
    let (mut total, mut read) = (Duration::ZERO, false);
    for t in tasks.flatten() {
        // A thread may end between the listing and the read.
        if let Ok(d) = sched(&format!("{}/sched", t.path().display())) {
            total += d;
            read = true;
        }
    }
    if read { Ok(total) } else { stat(pid) }
}

/// User plus system time of process `pid` from `/proc/PID/stat`.
fn stat(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name, in
    // USER_HZ ticks (100 per second on Linux).
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 10))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_busy_thread_counts_its_time_and_the_process_includes_it() {
        let t0 = super::thread().unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let mine = super::thread().unwrap();
        let used = mine - t0;
        assert!(used >= std::time::Duration::from_millis(1), "{used:?}");
        // Other test threads may end meanwhile (taking their time with them): the process's
        // total is compared with this live thread's alone.
        assert!(super::process(std::process::id()).unwrap() >= mine);
    }
}
