//! `hsm-stress`: load with local verification, fault injection and per-operation benchmarks
//! against a real `hsmd`, over every transport.
//!
//! ```text
//!  hsm-stress run   --> N client threads (each its own connection and identity, round-robin
//!                       over profiles and transports) + fault threads
//!                       every result checked locally (verify.rs) -> report.rs (table, JSON, SVG)
//!  hsm-stress bench --> per transport x op x in-flight x clients: ops/s, p50/p99
//!                       + the same crypto in-process on one thread (the baseline, the ratio)
//! ```
//! `--spawn` starts the `hsmd` that sits beside this binary on loopback with fresh credentials
//! ([`spawn::Spawned`]); otherwise the profiles given name a running server.
#![forbid(unsafe_code)]

pub mod bench;
pub mod report;
pub mod run;
pub mod spawn;
pub mod verify;

use std::time::Duration;

use ferrohsm_client::profile::Transport;

/// Transport names on the command line and in reports.
pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        Transport::TlsPsk => "tls-psk",
        Transport::Shm => "shm",
    }
}

/// Every transport.
pub const ALL_TRANSPORTS: [Transport; 4] = [
    Transport::Tcp,
    Transport::Tls,
    Transport::TlsPsk,
    Transport::Shm,
];

/// Parses `30s`, `500ms`, `2m` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: expected ms, s or m"
            ));
        }
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a comma-separated transport list.
pub fn parse_transports(s: &str) -> Result<Vec<Transport>, String> {
    s.split(',').map(|t| t.trim().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_transports() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_duration("3h"),
            Err(r#"invalid duration unit in "3h": expected ms, s or m"#.to_string())
        );
        assert_eq!(
            parse_duration("x"),
            Err(r#"invalid duration "x": expected e.g. 30s, 500ms, 2m"#.to_string())
        );
        assert_eq!(
            parse_duration("86401"),
            Err(r#"duration "86401" is out of range"#.to_string())
        );
        assert_eq!(
            parse_transports("tcp,shm").unwrap(),
            [Transport::Tcp, Transport::Shm]
        );
        assert_eq!(
            parse_transports("tcp,udp"),
            Err(r#"unknown transport "udp"; expected tcp, tls, tls-psk or shm"#.to_string())
        );
    }
}
