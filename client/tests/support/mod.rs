//! Shared helpers for the client integration tests: a real server on 127.0.0.1:0 with
//! credentials from the real `hsmd init`, and raw-socket helpers for hostile-peer tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Profile;
use ferrohsm_proto::{Frame, FrameReader};
use ferrohsm_server::init::{InitOptions, init};
use ferrohsm_server::{Config, ServerHandle};

/// A running server and its credentials directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn start(clients: &[&str]) -> TestServer {
        TestServer::start_with(clients, |_| {})
    }

    /// `tweak` may change the config (window, limits) before the server starts.
    pub fn start_with(clients: &[&str], tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = init(&InitOptions {
            dir: dir.path().to_path_buf(),
            clients: clients.iter().map(|s| s.to_string()).collect(),
            tcp: "127.0.0.1:0".parse().expect("addr"),
            tls: "127.0.0.1:0".parse().expect("addr"),
            tls_psk: "127.0.0.1:0".parse().expect("addr"),
            shm_socket: None,
            force: false,
            passphrase: None,
        })
        .expect("hsmd init");
        let profiles: Vec<PathBuf> = report.profiles.iter().map(|(_, p)| p.clone()).collect();
        let (handle, addr) = launch(&report.config, &profiles, tweak);
        TestServer {
            dir,
            handle: Some(handle),
            addr,
        }
    }

    /// Stops the server and starts it again on the same directory (same store), on new ports.
    pub fn restart(&mut self, tweak: impl FnOnce(&mut Config)) {
        if let Some(h) = self.handle.take() {
            h.shutdown().expect("clean shutdown");
        }
        let config = self.dir.path().join("hsmd.toml");
        let profiles: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("clients"))
            .expect("clients dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        let (handle, addr) = launch(&config, &profiles, tweak);
        self.handle = Some(handle);
        self.addr = addr;
    }

    pub fn profile_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("clients").join(format!("{name}.toml"))
    }

    pub fn profile(&self, name: &str) -> Profile {
        Profile::load(&self.profile_path(name)).expect("profile loads")
    }

    pub fn connect(&self, name: &str) -> BlockingClient {
        BlockingClient::connect(&self.profile(name), None).expect("client connects")
    }

    pub fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("raw connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }
}

/// Starts a server from `config` (tweaked) and points `profiles` at its real ports.
fn launch(
    config: &std::path::Path,
    profiles: &[PathBuf],
    tweak: impl FnOnce(&mut Config),
) -> (ServerHandle, SocketAddr) {
    let mut config = Config::load(config).expect("config");
    tweak(&mut config);
    let handle = ferrohsm_server::start(config).expect("server starts");
    let addr = handle.tcp_addr().expect("tcp bound");
    // init wrote port 0 into the profiles; point them at the real ports.
    let bound = handle.bound.clone();
    for p in profiles {
        let mut t: toml::Table = std::fs::read_to_string(p)
            .expect("profile")
            .parse()
            .expect("toml");
        for (section, a) in [
            ("tcp", bound.tcp),
            ("tls", bound.tls),
            ("tls_psk", bound.tls_psk),
        ] {
            if let (Some(toml::Value::Table(sec)), Some(a)) = (t.get_mut(section), a) {
                sec.insert("addr".into(), toml::Value::String(a.to_string()));
            }
        }
        std::fs::write(p, t.to_string()).expect("profile");
    }
    (handle, addr)
}

/// The server status of a call that must fail (a panic if it succeeded or failed without one).
pub fn status<T: std::fmt::Debug>(
    r: Result<T, ferrohsm_client::ClientError>,
) -> ferrohsm_proto::Status {
    match r {
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("no server status in {e:?}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// A key named by its label.
pub fn label(s: &str) -> ferrohsm_proto::KeyRef {
    ferrohsm_proto::KeyRef::Label(s.parse().expect("a valid label"))
}

/// Reads one frame from a raw socket; `None` if the server closed the connection first.
pub fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    let mut frames = FrameReader::with_bytes(2 * 1024 * 1024, std::mem::take(buf));
    let got = loop {
        if let Ok(Some(f)) = frames.next_frame() {
            break Some(f);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break None,
            Ok(n) => frames.buffer().extend_from_slice(&chunk[..n]),
        }
    };
    *buf = frames.into_bytes();
    got
}

/// Whether the server closes the connection (reads EOF) within the read timeout.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    while read_frame(s, &mut buf).is_some() {}
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

pub fn send(s: &mut TcpStream, f: &Frame) {
    s.write_all(&f.encode()).expect("write");
}

/// `openssl`, or a loud skip (a failure under CI=true, where .ci/run installs it).
pub fn openssl() -> Option<&'static str> {
    if Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("openssl");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "openssl is missing under CI=true"
    );
    eprintln!("SKIPPED: the `openssl` command is not installed; OpenSSL interop not checked");
    None
}
