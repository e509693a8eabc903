//! CPU time from `/proc`, to know what the generator and the server cost.
//!
//! A load generator on the same machine as its target competes with it for
//! CPU. Each step records the generator's own CPU (this process), the
//! launched server's, and the machine's busy fraction, so a figure can say
//! whether the server or the generator ran out of CPU first.

/// Linux reports process times in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_S: f64 = 100.0;

/// CPU counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSnapshot {
    /// This process's user + system time, seconds.
    pub own_s: f64,
    /// The watched child's user + system time, seconds.
    pub child_s: Option<f64>,
    /// Machine-wide busy ticks.
    pub busy: u64,
    /// Machine-wide ticks.
    pub total: u64,
}

/// User + system seconds of a `/proc/<pid>/stat` line.
pub fn parse_proc_stat(line: &str) -> Option<f64> {
    // The command name may contain spaces; fields resume after its ')'.
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

/// (busy, total) ticks of the `cpu` line of `/proc/stat`.
pub fn parse_machine_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Reads the counters now (zeros where `/proc` is unavailable).
pub fn snapshot(child: Option<u32>) -> CpuSnapshot {
    let own_s = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|l| parse_proc_stat(&l))
        .unwrap_or(0.0);
    let child_s = child.and_then(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|l| parse_proc_stat(&l))
    });
    let (busy, total) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_machine_stat(&t))
        .unwrap_or((0, 0));
    CpuSnapshot {
        own_s,
        child_s,
        busy,
        total,
    }
}

/// CPU used between two snapshots over `wall_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuUse {
    /// Cores the generator kept busy on average.
    pub generator_cores: f64,
    /// Cores the launched server kept busy.
    pub server_cores: Option<f64>,
    /// Machine-wide busy fraction, 0–1.
    pub machine_busy: f64,
}

/// The difference of two snapshots.
pub fn usage(a: &CpuSnapshot, b: &CpuSnapshot, wall_s: f64) -> CpuUse {
    let wall = wall_s.max(1e-9);
    let total = b.total.saturating_sub(a.total);
    CpuUse {
        generator_cores: (b.own_s - a.own_s).max(0.0) / wall,
        server_cores: match (a.child_s, b.child_s) {
            (Some(x), Some(y)) => Some((y - x).max(0.0) / wall),
            _ => None,
        },
        machine_busy: if total == 0 {
            0.0
        } else {
            b.busy.saturating_sub(a.busy) as f64 / total as f64
        },
    }
}

/// Whether the generator, not the target, may have limited a step: the
/// machine was nearly saturated and the generator held a large share of it.
pub fn generator_bound(u: &CpuUse, cores: usize) -> bool {
    let busy_cores = u.machine_busy * cores as f64;
    u.machine_busy >= 0.9 && u.generator_cores >= 0.4 * busy_cores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_process_times_even_with_spaces_in_the_name() {
        let line =
            "1234 (tokio worker) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_proc_stat(line), Some(3.0));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn reads_machine_busy_and_total() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(parse_machine_stat(text), Some((150, 1000)));
    }

    #[test]
    fn usage_and_the_bottleneck_flag() {
        let a = CpuSnapshot {
            own_s: 1.0,
            child_s: Some(2.0),
            busy: 0,
            total: 0,
        };
        let b = CpuSnapshot {
            own_s: 2.0,
            child_s: Some(2.5),
            busy: 950,
            total: 1000,
        };
        let u = usage(&a, &b, 1.0);
        assert_eq!(u.generator_cores, 1.0);
        assert_eq!(u.server_cores, Some(0.5));
        assert!((u.machine_busy - 0.95).abs() < 1e-9);
        assert!(
            generator_bound(&u, 2),
            "the generator held over half the busy CPU"
        );
        let server_heavy = CpuUse {
            generator_cores: 0.3,
            server_cores: Some(1.6),
            machine_busy: 0.95,
        };
        assert!(!generator_bound(&server_heavy, 2));
        let idle = CpuUse {
            generator_cores: 0.9,
            server_cores: None,
            machine_busy: 0.5,
        };
        assert!(
            !generator_bound(&idle, 2),
            "CPU to spare: not the bottleneck"
        );
    }

    #[test]
    fn live_snapshot_moves_forward() {
        let a = snapshot(Some(std::process::id()));
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = snapshot(Some(std::process::id()));
        assert!(b.own_s >= a.own_s);
        assert!(b.total >= a.total);
        assert!(b.child_s.is_some());
    }
}
