//! Parsing and validation of hsmd.toml, with the errors it reports by key.

use super::*;

const KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

#[test]
fn parses_and_reports_errors_by_key() {
    let p = Path::new("t.toml");
    let ok = format!(
        "[store]\npath = \"k.db\"\n[tcp]\naddr = \"127.0.0.1:0\"\n[clients.alice]\nauth_public_key = \"{KEY}\"\n"
    );
    let c = Config::parse(&ok, p).unwrap();
    assert_eq!(c.clients.len(), 1);
    assert_eq!(c.window, 32);
    assert!(c.session_threads >= 1);
    assert_eq!(c.inline_max, DEFAULT_INLINE_MAX);
    assert_eq!(c.spin, DEFAULT_SPIN);
    let tuned = format!("[server]\nsession_threads = 3\ninline_max = 0\nworker_nice = 4\n{ok}");
    let c = Config::parse(&tuned, p).unwrap();
    assert_eq!((c.session_threads, c.inline_max, c.worker_nice), (3, 0, 4));
    let c = Config::parse(&format!("[server]\nspin_us = 0\n{ok}"), p).unwrap();
    assert_eq!(c.spin, std::time::Duration::ZERO);
    let c = Config::parse(&format!("[server]\nspin_us = 250\n{ok}"), p).unwrap();
    assert_eq!(c.spin, std::time::Duration::from_micros(250));
    let e = Config::parse(&format!("[server]\nspin_us = 10001\n{ok}"), p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.spin_us: 10001 is more than 10000"),
        "{e}"
    );
    let e = Config::parse(&format!("[server]\nworker_nice = 20\n{ok}"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("worker_nice"), "{e}");
    let e = Config::parse(&format!("[server]\nsession_threads = -1\n{ok}"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("session_threads"), "{e}");
    let c = Config::parse(&ok, p).unwrap();
    let st = c.store.unwrap();
    assert_eq!(
        (st.path, st.key_file, st.cache_keys),
        ("k.db".into(), None, 4096)
    );
    let e = Config::parse(&ok.replace("[store]\npath = \"k.db\"\n", ""), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no [store] section"), "{e}");
    let e = Config::parse("[tcp]\naddr = \"0.0.0.0:1\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("allow_insecure_remote"), "{e}");
    assert!(
        Config::parse(
            "[store]\npath = \"k.db\"\n[tcp]\naddr = \"0.0.0.0:1\"\nallow_insecure_remote = true\n",
            p
        )
        .is_ok()
    );
    let e = Config::parse("[tcp]\naddr = \"nope\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.toml: tcp.addr"), "{e}");
    let e = Config::parse(&ok.replace(KEY, "abcd"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clients.alice.auth_public_key"), "{e}");
    let e = Config::parse("[server]\nwindow = 0\n[tcp]\naddr=\"127.0.0.1:0\"\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.window"), "{e}");
    let e = Config::parse("[server]\nbogus = 1\n", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn log_format_is_text_or_json() {
    let p = Path::new("t.toml");
    let ok = format!(
        "[store]\npath = \"k.db\"\n[tcp]\naddr = \"127.0.0.1:0\"\n[clients.alice]\nauth_public_key = \"{KEY}\"\n"
    );
    assert_eq!(Config::parse(&ok, p).unwrap().log_format, LogFormat::Text);
    let json = format!("[log]\nformat = \"json\"\n{ok}");
    assert_eq!(Config::parse(&json, p).unwrap().log_format, LogFormat::Json);
    let text = format!("[log]\nformat = \"text\"\n{ok}");
    assert_eq!(Config::parse(&text, p).unwrap().log_format, LogFormat::Text);
    let e = Config::parse(&format!("[log]\nformat = \"xml\"\n{ok}"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("log.format") && e.contains("\"xml\""), "{e}");
    let e = Config::parse(&format!("[log]\nlevel = \"info\"\n{ok}"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("level"), "{e}");
}
