//! The server library in this process, on a directory made by `hsmd init`'s library call,
//! for tests that change its `Config` (limits, timeouts) before it starts. Everything else
//! runs the real `hsmd` ([`crate::daemon`]).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrohsm_client::BlockingClient;
use ferrohsm_client::profile::Profile;
use ferrohsm_server::init::{InitOptions, init};
use ferrohsm_server::{Config, ServerHandle};

/// A running in-process server and its credentials directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestServer({})", self.addr)
    }
}

impl TestServer {
    /// A server for `clients` on loopback port 0.
    pub fn start(clients: &[&str]) -> TestServer {
        TestServer::start_with(clients, |_| {})
    }

    /// `tweak` may change the config (window, limits) before the server starts.
    pub fn start_with(clients: &[&str], tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let any = || "127.0.0.1:0".parse().expect("addr");
        let report = init(&InitOptions {
            dir: dir.path().to_path_buf(),
            clients: clients.iter().map(|s| s.to_string()).collect(),
            tcp: any(),
            tls: any(),
            tls_psk: any(),
            shm_socket: None,
            force: false,
            passphrase: None,
            store_url: None,
            node: None,
            join: None,
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

    /// The server's bound addresses.
    pub fn bound(&self) -> ferrohsm_server::Bound {
        self.handle.as_ref().expect("running").bound.clone()
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

    /// A raw TCP connection to the server.
    pub fn raw(&self) -> crate::peer::Tcp {
        crate::peer::Tcp::connect(self.addr)
    }

    /// A plain std TCP stream to the server with a 10 s read timeout.
    pub fn raw_stream(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("raw connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }
}

/// Starts a server from `config` (tweaked) and points `profiles` at its real ports.
fn launch(
    config: &Path,
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
