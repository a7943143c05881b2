//! Nothing outside the served tree, no temporary file and no directory listing can be
//! obtained, and only GET/HEAD are accepted.

mod common;

use common::*;

fn assert_refused(r: &RawResponse, what: &str) {
    assert!(
        matches!(r.status, 400 | 403 | 404),
        "{what}: expected 400/403/404, got {}",
        r.status
    );
    assert!(
        !r.text().contains(SECRET),
        "{what}: leaked protected content"
    );
}

#[tokio::test]
async fn dot_dot_segments_are_refused() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata/../keys/root.pem",
        "/targets/../../outside/secret.txt",
        "/metadata/./root.json",
        "/../tree/keys/root.pem",
    ] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_refused(&r, path);
    }
}

#[tokio::test]
async fn percent_encoded_dots_slashes_and_backslashes_are_refused() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata/%2e%2e/keys/root.pem",
        "/metadata/%2E%2E/keys/root.pem",
        "/metadata/.%2e/keys/root.pem",
        "/targets/..%2fkeys%2froot.pem",
        "/targets%2F..%2Fkeys%2Froot.pem",
        "/metadata%2froot.json",
        "/metadata/%5c..%5ckeys%5croot.pem",
        "/metadata/%5C..%5Ckeys%5Croot.pem",
        "/metadata/%252e%252e/keys/root.pem",
        "/metadata/root.json%00",
        "/metadata/%c0%ae%c0%ae/keys/root.pem",
    ] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 400, "{path}");
        assert_refused(&r, path);
    }
}

#[tokio::test]
async fn raw_backslashes_are_refused() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata\\..\\keys\\root.pem",
        "/metadata/..\\keys/root.pem",
        "/metadata\\root.json",
    ] {
        // Sent raw: hyper either rejects the request line (400) or we refuse the path.
        let raw = request_head("GET", path, &[], true);
        match send_raw(srv.addr, raw.as_bytes(), false).await {
            Ok(r) => {
                assert_eq!(r.status, 400, "{path}");
                assert_refused(&r, path);
            }
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{path}: {e}"
            ),
        }
    }
}

#[tokio::test]
async fn empty_segments_are_refused() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata//root.json",
        "//metadata/root.json",
        "/metadata/root.json/",
    ] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 400, "{path}");
    }
}

#[tokio::test]
async fn symlinks_resolving_outside_the_root_are_refused() {
    let srv = TestServer::start().await;
    // Sanity: the targets really exist and hold the secret.
    let outside = srv.dir.path().join("outside/secret.txt");
    assert!(std::fs::read_to_string(outside).unwrap().contains(SECRET));
    for path in ["/targets/escape.bin", "/targets/outside-dir/secret.txt"] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 403, "{path}");
        assert_refused(&r, path);
        let h = request(srv.addr, "HEAD", path, &[]).await;
        assert_eq!(h.status, 403, "HEAD {path}");
    }
}

#[tokio::test]
async fn symlinks_to_unserved_parts_of_the_root_are_refused() {
    let srv = TestServer::start().await;
    let r = get(srv.addr, "/targets/keys-link.pem", &[]).await;
    assert_eq!(r.status, 403);
    assert_refused(&r, "keys-link");
    let r = get(srv.addr, "/targets/tmp-link.json", &[]).await;
    assert_eq!(r.status, 404);
    assert_refused(&r, "tmp-link");
}

#[tokio::test]
async fn paths_outside_metadata_and_targets_are_not_served() {
    let srv = TestServer::start().await;
    for path in [
        "/keys/root.pem",
        "/tree/metadata/root.json",
        "/%6Beys/root.pem",
    ] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 404, "{path}");
        assert_refused(&r, path);
    }
}

#[tokio::test]
async fn directories_are_never_listed() {
    let srv = TestServer::start().await;
    for path in [
        "/",
        "/metadata",
        "/targets",
        "/targets/apps",
        "/targets/apps/acme/app/1.0",
        "/metadata/",
        "/targets/apps/",
    ] {
        let r = get(srv.addr, path, &[]).await;
        assert!(matches!(r.status, 400 | 403 | 404), "{path}: {}", r.status);
        assert!(!r.text().contains("root.json"), "{path} listed entries");
        assert!(!r.text().contains(HASH), "{path} listed entries");
    }
}

#[tokio::test]
async fn temporary_and_hidden_files_are_not_served() {
    let srv = TestServer::start().await;
    assert!(srv.root.join("metadata/timestamp.json.tmp").exists());
    for path in [
        "/metadata/timestamp.json.tmp",
        "/metadata/.timestamp.json.partial",
        "/targets/apps/.staging/x.bin",
    ] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 404, "{path}");
        assert_refused(&r, path);
    }
}

#[tokio::test]
async fn methods_other_than_get_and_head_get_405_with_allow() {
    let srv = TestServer::start().await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in ["/metadata/root.json", "/v1/reports"] {
            let r = request(srv.addr, method, path, &[("Content-Length", "0")]).await;
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn symlink_loops_inside_the_tree_are_404_not_500() {
    let srv = TestServer::start().await;
    let t = srv.root.join("targets");
    std::os::unix::fs::symlink("loop-b.bin", t.join("loop-a.bin")).unwrap();
    std::os::unix::fs::symlink("loop-a.bin", t.join("loop-b.bin")).unwrap();
    std::os::unix::fs::symlink("self-dir", t.join("self-dir")).unwrap();
    for path in ["/targets/loop-a.bin", "/targets/self-dir/x.bin"] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
    }
}

#[tokio::test]
async fn absolute_form_target_naming_another_host_is_400() {
    let srv = TestServer::start().await;
    let raw = "GET http://other.example/metadata/timestamp.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let r = send_raw(srv.addr, raw.as_bytes(), false).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains("timestamp"), "{}", r.text());
    // The same file in absolute form naming the host the request was sent to is served.
    let raw = format!(
        "GET http://{}/metadata/timestamp.json HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        srv.addr, srv.addr
    );
    let r = send_raw(srv.addr, raw.as_bytes(), false).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
