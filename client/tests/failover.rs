//! Profiles that list several node addresses: the client tries them in turn on every socket
//! transport (hsmctl, the library), says which addresses failed and why when none answers,
//! and refuses a profile whose list is empty or whose connect timeout is zero.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_test_support::Data;
use ferrohsm_test_support::daemon::free_port;
use ferrohsm_test_support::status::{assert_exit, ok};

/// alice's profile, edited by `f`, written as `clients/NAME.toml` (for `d.ctl(NAME, ..)`):
/// `NAME`.
fn edit<'a>(d: &Data, name: &'a str, f: impl Fn(&mut toml::Table)) -> &'a str {
    let mut t: toml::Table = std::fs::read_to_string(d.profile("alice"))
        .unwrap()
        .parse()
        .unwrap();
    f(&mut t);
    std::fs::write(d.profile(name), t.to_string()).unwrap();
    name
}

const SECTIONS: [(&str, &str); 3] = [("tcp", "tcp"), ("tls", "tls"), ("tls_psk", "tls-psk")];

#[test]
fn the_next_address_is_tried_when_one_is_down_on_every_socket_transport() {
    let d = Data::init("alice");
    let _hsmd = d.start();
    // Nothing listens on `dead`: connecting there is refused at once.
    let dead = format!("127.0.0.1:{}", free_port());
    let listed = edit(&d, "two", |t| {
        for (section, _) in SECTIONS {
            let live = t[section]["addr"].clone();
            t[section].as_table_mut().unwrap().insert(
                "addr".into(),
                toml::Value::Array(vec![dead.clone().into(), live]),
            );
        }
    });
    for (_, transport) in SECTIONS {
        let out = ok(&d.ctl(listed, &["--transport", transport, "ping"]));
        assert_eq!(out.trim(), "ok", "{transport}");
    }
    let p = d.load_profile(listed);
    assert_eq!(p.tcp_addrs.as_ref().unwrap()[0], dead);
    for t in [Transport::Tcp, Transport::Tls, Transport::TlsPsk] {
        let c = BlockingClient::connect(&p, Some(t)).unwrap();
        c.ping().unwrap();
    }
}

#[test]
fn when_no_address_answers_every_one_is_named_and_hsmctl_exits_3() {
    let d = Data::init("alice");
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let none = edit(&d, "none", |t| {
        t["tcp"].as_table_mut().unwrap().insert(
            "addr".into(),
            toml::Value::Array(vec![a.clone().into(), b.clone().into()]),
        );
    });
    let o = d.ctl(none, &["ping"]);
    assert_exit(&o, 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no node answered")
            && err.contains(&format!("cannot connect to {a}"))
            && err.contains(&format!("cannot connect to {b}")),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn an_empty_address_list_or_a_zero_timeout_is_refused_before_connecting() {
    let d = Data::init("alice");
    let empty = edit(&d, "empty", |t| {
        t["tcp"]
            .as_table_mut()
            .unwrap()
            .insert("addr".into(), toml::Value::Array(vec![]));
    });
    let o = d.ctl(empty, &["ping"]);
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[tcp] addr: expected an address or a list of them"),
        "{err}"
    );
    let zero = edit(&d, "zero", |t| {
        t.insert("connect_timeout_ms".into(), 0.into());
    });
    let o = d.ctl(zero, &["ping"]);
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("connect_timeout_ms: expected a positive number"),
        "{err}"
    );
}

/// A TCP proxy to `to` that cuts its first connection once the server has sent `frames`
/// whole frames (the handshake), before the next one (the first answer) reaches the client;
/// later connections pass through whole. Its address.
fn cutting_proxy(to: String, frames: usize) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (n, c) in l.incoming().enumerate() {
            let Ok(mut c) = c else { return };
            let mut s = TcpStream::connect(&to).unwrap();
            let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                // Server to client, frame by frame: a 20-byte header with the body's length
                // in its last four bytes, then the body.
                let mut sent = 0;
                loop {
                    let mut h = [0u8; 20];
                    if s.read_exact(&mut h).is_err() {
                        break;
                    }
                    let len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]) as usize;
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).is_err() {
                        break;
                    }
                    if n == 0 && sent == frames {
                        break;
                    }
                    if c.write_all(&h).and_then(|()| c.write_all(&body)).is_err() {
                        break;
                    }
                    sent += 1;
                }
                let _ = c.shutdown(Shutdown::Both);
                let _ = s.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_lost_connection_retries_a_read_once_and_never_a_change() {
    let d = Data::init("alice");
    let _hsmd = d.start();
    let live = Profile::load(&d.profile("alice"))
        .unwrap()
        .tcp_addrs
        .unwrap()[0]
        .clone();
    // TCP login: a challenge, then the welcome (two frames); the first answer is cut.
    let through = |name: &'static str| {
        let proxy = cutting_proxy(live.clone(), 2);
        edit(&d, name, |t| {
            t["tcp"]
                .as_table_mut()
                .unwrap()
                .insert("addr".into(), proxy.clone().into());
        })
    };
    // A read: its connection is cut before the answer; hsmctl sends it once more, on a new
    // connection, and it is answered.
    let p = through("read");
    assert_eq!(ok(&d.ctl(p, &["list"])).trim(), "");
    assert_eq!(ok(&d.ctl(p, &["ping"])).trim(), "ok");
    // A change: cut the same way, it is not sent again. hsmctl says the outcome is unknown
    // (the server did receive it: the key exists, once).
    let p = through("change");
    let o = d.ctl(p, &["keygen", "--type", "ed25519", "--label", "once"]);
    assert_exit(&o, 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("hsmctl: connection_lost: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(o.stdout.is_empty());
    let listed = ok(&d.ctl("alice", &["list"]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("\tonce\t"), "{listed}");
    // In the library: a request in flight when the connection goes is `ConnectionLost`; one
    // submitted after it is a plain connection error (it was never sent).
    let p = through("library");
    let c = BlockingClient::connect(&d.load_profile(p), Some(Transport::Tcp)).unwrap();
    let e = c.ping().unwrap_err();
    assert!(
        matches!(e, ferrohsm_client::ClientError::ConnectionLost(_)),
        "{e:?}"
    );
    let e = c.ping().unwrap_err();
    assert!(
        matches!(e, ferrohsm_client::ClientError::Connection(_)),
        "{e:?}"
    );
}

#[test]
fn status_names_the_node_its_store_and_its_sessions_per_transport() {
    let d = Data::init("alice,bob");
    let _hsmd = d.start();
    let p = Profile::load(&d.profile("alice")).unwrap();
    // Held open while status is asked: one over TLS, one over shared memory, one of bob's.
    let tls = BlockingClient::connect(&p, Some(Transport::Tls)).unwrap();
    let shm = BlockingClient::connect(&p, Some(Transport::Shm)).unwrap();
    let bob = d.connect("bob");
    for c in [&tls, &shm, &bob] {
        c.ping().unwrap();
    }
    let out = ok(&d.ctl("alice", &["--json", "status"]));
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    let config: toml::Table = std::fs::read_to_string(d.config())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        s["node"],
        config["server"]["node"].as_str().unwrap(),
        "{out}"
    );
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{out}");
    assert!(s["uptime_s"].as_u64().is_some(), "{out}");
    assert_eq!(s["store"]["backend"], "sqlite", "{out}");
    assert_eq!(s["store"]["reachable"], true, "{out}");
    // hsmctl's own session and bob's are the TCP ones.
    let n = |t: &str| s["sessions"][t].as_u64().unwrap();
    assert_eq!(
        (n("tcp"), n("tls"), n("tls_psk"), n("shm")),
        (2, 1, 0, 1),
        "{out}"
    );
    assert_eq!(n("total"), 4, "{out}");
    // The text form, one line each.
    let text = ok(&d.ctl("alice", &["status"]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[3] == "store sqlite reachable", "{text}");
    assert!(
        lines[4].starts_with("sessions 4 (tcp 2, tls 1, tls-psk 0, shm 1)"),
        "{text}"
    );
    // A session that ends is no longer counted.
    drop(tls);
    ferrohsm_test_support::wait::until(
        "the TLS session to end",
        std::time::Duration::from_secs(10),
        || {
            let out = ok(&d.ctl("alice", &["--json", "status"]));
            let s: serde_json::Value = serde_json::from_str(&out).unwrap();
            s["sessions"]["tls"] == 0
        },
    );
}
