//! The HTTP transport against a local hyper server on 127.0.0.1: streaming, limits, retries, timeouts, and a full update over HTTP.

mod support;

use std::time::{Duration, Instant};

use petrel_client::fetch::{FetchError, HttpConfig, HttpSetupError, HttpTransport, Transport};
use support::server::{Route, TestServer};
use support::*;
use tempfile::TempDir;

fn quick() -> HttpConfig {
    HttpConfig {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        retries: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        native_roots: false,
        ..HttpConfig::default()
    }
}

fn transport() -> HttpTransport {
    HttpTransport::new(quick()).unwrap()
}

#[test]
fn http_fetch_streams_the_body_into_the_sink() {
    let s = TestServer::start();
    let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    s.route("/a", Route::Ok(body.clone()));
    s.route("/chunked", Route::Chunked(body.clone()));
    let t = transport();
    for path in ["/a", "/chunked"] {
        let mut out = Vec::new();
        let n = t.fetch(&s.url(path), body.len() as u64, &mut out).unwrap();
        assert_eq!(n, body.len() as u64);
        assert_eq!(out, body, "{path}");
    }
}

#[test]
fn http_404_403_and_410_mean_not_found_and_are_not_retried() {
    let s = TestServer::start();
    s.route("/gone", Route::Status(410));
    s.route("/forbidden", Route::Status(403));
    let t = transport();
    for path in ["/missing", "/gone", "/forbidden"] {
        let err = t.fetch(&s.url(path), 100, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FetchError::NotFound { .. }), "{path}: {err}");
        assert_eq!(s.hits(path), 1, "{path} was retried");
    }
}

#[test]
fn http_declared_length_over_the_limit_is_refused_before_reading() {
    let s = TestServer::start();
    s.route("/big", Route::Ok(vec![1; 10_000]));
    let mut out = Vec::new();
    let err = transport()
        .fetch(&s.url("/big"), 9_999, &mut out)
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { max_len: 9_999, .. }),
        "{err}"
    );
    assert!(out.is_empty());
    assert_eq!(s.hits("/big"), 1, "size errors are not retried");
}

#[test]
fn http_endless_chunked_body_is_cut_off_at_the_limit() {
    let s = TestServer::start();
    s.route("/endless", Route::Endless);
    let mut out = Vec::new();
    let started = Instant::now();
    let err = transport()
        .fetch(&s.url("/endless"), 100_000, &mut out)
        .unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    assert!(out.len() <= 100_000, "{} bytes reached the sink", out.len());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn http_transient_server_errors_are_retried_with_backoff() {
    let s = TestServer::start();
    s.route(
        "/flaky",
        Route::FailThenOk {
            failures: 2,
            status: 503,
            body: b"finally".to_vec(),
        },
    );
    let mut out = Vec::new();
    transport().fetch(&s.url("/flaky"), 100, &mut out).unwrap();
    assert_eq!(out, b"finally");
    assert_eq!(s.hits("/flaky"), 3);
}

#[test]
fn http_retries_stop_after_the_configured_count() {
    let s = TestServer::start();
    s.route("/down", Route::Status(502));
    let err = transport()
        .fetch(&s.url("/down"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 502, .. }),
        "{err}"
    );
    assert_eq!(s.hits("/down"), 3, "one attempt plus two retries");
}

#[test]
fn http_slow_response_times_out() {
    let s = TestServer::start();
    s.route(
        "/slow",
        Route::Delay(Duration::from_secs(3), b"late".to_vec()),
    );
    let t = HttpTransport::new(HttpConfig {
        read_timeout: Duration::from_millis(200),
        retries: 0,
        ..quick()
    })
    .unwrap();
    let started = Instant::now();
    let err = t.fetch(&s.url("/slow"), 100, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn http_connection_refused_is_a_network_error_after_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = transport()
        .fetch(&format!("http://127.0.0.1:{port}/x"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, FetchError::Network { .. }), "{err}");
    assert!(err.is_transient());
}

#[test]
fn http_redirects_are_followed() {
    let s = TestServer::start();
    s.route("/old", Route::Redirect("/new".into()));
    s.route("/new", Route::Ok(b"moved".to_vec()));
    let mut out = Vec::new();
    transport().fetch(&s.url("/old"), 100, &mut out).unwrap();
    assert_eq!(out, b"moved");
}

#[test]
fn http_redirect_loops_are_bounded() {
    let s = TestServer::start();
    s.route("/loop", Route::Redirect("/loop".into()));
    let err = transport()
        .fetch(&s.url("/loop"), 100, &mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains("redirects"), "{err}");
    assert_eq!(
        s.hits("/loop"),
        6,
        "five redirects followed, and not retried"
    );
}

#[test]
fn extra_ca_file_without_certificates_is_refused() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("ca.pem");
    std::fs::write(&p, "not a certificate\n").unwrap();
    let err = HttpTransport::new(HttpConfig {
        extra_ca_pem: Some(p),
        ..quick()
    })
    .unwrap_err();
    assert!(matches!(err, HttpSetupError::ExtraCa { .. }), "{err}");
}

#[test]
fn updater_refreshes_searches_and_downloads_over_http() {
    let mut sim = RepoSim::new();
    sim.delegate("targets", "vendor", &["apps/*"], false);
    sim.add_target("vendor", "apps/app.bin", b"application bytes");
    sim.role_mut("vendor").version += 1;
    sim.targets.version += 1;
    sim.commit();
    let tree = TempDir::new().unwrap();
    sim.write_tree(tree.path());
    let server = TestServer::serve_dir(tree.path().to_path_buf());
    let md = TempDir::new().unwrap();
    petrel_client::tuf::updater::Updater::init_trusted_root(md.path(), &sim.initial_root())
        .unwrap();
    let config = petrel_client::tuf::updater::UpdaterConfig::new(server.url("/metadata"))
        .with_target_base_url(server.url("/targets"));
    let mut u = petrel_client::tuf::updater::Updater::new(config, transport(), md.path()).unwrap();
    u.refresh().unwrap();
    let info = u.get_target_info("apps/app.bin").unwrap().unwrap();
    let out = TempDir::new().unwrap();
    let dest = out.path().join("app.bin");
    u.download_target(&info, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"application bytes");
    let sha = &hashes_of(b"application bytes")["sha256"];
    assert_eq!(
        server.all_hits(),
        [
            "/metadata/2.root.json".to_string(),
            "/metadata/timestamp.json".into(),
            "/metadata/2.snapshot.json".into(),
            "/metadata/2.targets.json".into(),
            "/metadata/2.vendor.json".into(),
            format!("/targets/apps/{sha}.app.bin"),
        ]
    );
}
