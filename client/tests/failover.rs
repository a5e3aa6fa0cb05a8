//! Profiles that list several node addresses: the client tries them in turn on every socket
//! transport (hsmctl, the library), says which addresses failed and why when none answers,
//! and refuses a profile whose list is empty or whose connect timeout is zero.
// Tests may panic on unexpected results: that is how they fail.
#![allow(clippy::unwrap_used)]

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::{Profile, Transport};
use ferrohsm_test_support::Data;
use ferrohsm_test_support::daemon::{free_port, hsmctl_command, output_within};
use ferrohsm_test_support::status::{assert_exit, ok};

/// alice's profile, edited by `f`, written as `clients/NAME`.
fn edit(d: &Data, name: &str, f: impl Fn(&mut toml::Table)) -> std::path::PathBuf {
    let mut t: toml::Table = std::fs::read_to_string(d.profile("alice"))
        .unwrap()
        .parse()
        .unwrap();
    f(&mut t);
    let p = d.dir.join("clients").join(name);
    std::fs::write(&p, t.to_string()).unwrap();
    p
}

fn ctl(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = hsmctl_command(profile);
    c.args(args);
    output_within(&mut c, std::time::Duration::from_secs(60))
}

const SECTIONS: [(&str, &str); 3] = [("tcp", "tcp"), ("tls", "tls"), ("tls_psk", "tls-psk")];

#[test]
fn the_next_address_is_tried_when_one_is_down_on_every_socket_transport() {
    let d = Data::init("alice");
    let _hsmd = d.start();
    // Nothing listens on `dead`: connecting there is refused at once.
    let dead = format!("127.0.0.1:{}", free_port());
    let listed = edit(&d, "two.toml", |t| {
        for (section, _) in SECTIONS {
            let live = t[section]["addr"].clone();
            t[section].as_table_mut().unwrap().insert(
                "addr".into(),
                toml::Value::Array(vec![dead.clone().into(), live]),
            );
        }
    });
    for (_, transport) in SECTIONS {
        let out = ok(&ctl(&listed, &["--transport", transport, "ping"]));
        assert_eq!(out.trim(), "ok", "{transport}");
    }
    let p = Profile::load(&listed).unwrap();
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
    let none = edit(&d, "none.toml", |t| {
        t["tcp"].as_table_mut().unwrap().insert(
            "addr".into(),
            toml::Value::Array(vec![a.clone().into(), b.clone().into()]),
        );
    });
    let o = ctl(&none, &["ping"]);
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
    let empty = edit(&d, "empty.toml", |t| {
        t["tcp"]
            .as_table_mut()
            .unwrap()
            .insert("addr".into(), toml::Value::Array(vec![]));
    });
    let o = ctl(&empty, &["ping"]);
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[tcp] addr: expected an address or a list of them"),
        "{err}"
    );
    let zero = edit(&d, "zero.toml", |t| {
        t.insert("connect_timeout_ms".into(), 0.into());
    });
    let o = ctl(&zero, &["ping"]);
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("connect_timeout_ms: expected a positive number"),
        "{err}"
    );
}
