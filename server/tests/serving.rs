//! HTTP semantics of static serving: bodies, HEAD, ranges, validators, cache headers.

mod common;

use common::*;

#[tokio::test]
async fn get_returns_exact_bytes_with_length_and_json_type() {
    let srv = TestServer::start().await;
    let r = get(srv.addr, "/metadata/timestamp.json", &[]).await;
    assert_eq!(r.status, 200);
    let on_disk = std::fs::read(srv.root.join("metadata/timestamp.json")).unwrap();
    assert_eq!(r.body, on_disk);
    assert_eq!(
        r.header("content-length"),
        Some(on_disk.len().to_string().as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("last-modified").is_some());
}

#[tokio::test]
async fn get_streams_large_file_exactly_with_octet_stream_type() {
    let srv = TestServer::start().await;
    let r = get(srv.addr, &format!("/{}", large_target()), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("content-length"),
        Some(LARGE_LEN.to_string().as_str())
    );
    assert_eq!(r.body, pattern(LARGE_LEN, 1));
}

#[tokio::test]
async fn head_returns_get_headers_without_body() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata/root.json".to_string(),
        format!("/{}", large_target()),
    ] {
        let g = get(srv.addr, &path, &[]).await;
        let h = request(srv.addr, "HEAD", &path, &[]).await;
        assert_eq!(h.status, 200, "{path}");
        assert!(h.body.is_empty(), "HEAD {path} carried a body");
        for name in [
            "content-length",
            "content-type",
            "etag",
            "last-modified",
            "cache-control",
        ] {
            assert_eq!(h.header(name), g.header(name), "{name} differs for {path}");
        }
    }
}

#[tokio::test]
async fn head_sends_no_body_bytes_on_the_wire() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start().await;
    let mut s = connect(srv.addr).await;
    let raw = request_head("HEAD", &format!("/{}", large_target()), &[], true);
    s.write_all(raw.as_bytes()).await.unwrap();
    let (resp, rest) = read_head(&mut s).await.unwrap();
    assert_eq!(resp.status, 200);
    let (more, closed) = drain_until_closed(&mut s, STEP).await;
    assert!(closed);
    assert_eq!(rest.len() + more, 0, "HEAD response had body bytes");
}

#[tokio::test]
async fn keep_alive_connection_serves_several_requests() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start().await;
    let mut s = connect(srv.addr).await;
    for path in [
        "/metadata/root.json",
        "/metadata/timestamp.json",
        "/metadata/2.root.json",
    ] {
        s.write_all(request_head("GET", path, &[], false).as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s, false).await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, std::fs::read(srv.root.join(&path[1..])).unwrap());
    }
}

#[tokio::test]
async fn range_requests_return_206_with_content_range_for_small_and_large_files() {
    let srv = TestServer::start().await;
    let small = std::fs::read(srv.root.join(small_target())).unwrap();
    let large = pattern(LARGE_LEN, 1);
    let cases: [(String, &Vec<u8>); 2] = [
        (format!("/{}", small_target()), &small),
        (format!("/{}", large_target()), &large),
    ];
    for (path, content) in cases {
        let len = content.len();
        // `a-b`, `a-` and `-n`, including a range that spans a streaming chunk boundary.
        let specs = [
            ("bytes=0-9".to_string(), 0, 9),
            ("bytes=5-".to_string(), 5, len - 1),
            ("bytes=-7".to_string(), len - 7, len - 1),
            (
                format!("bytes={}-{}", len - 20, len + 100),
                len - 20,
                len - 1,
            ),
            (
                format!("bytes={}-{}", len / 2, len / 2 + 262_150),
                len / 2,
                (len / 2 + 262_150).min(len - 1),
            ),
        ];
        for (spec, start, end) in specs {
            let r = get(srv.addr, &path, &[("Range", &spec)]).await;
            assert_eq!(r.status, 206, "{path} {spec}");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {start}-{end}/{len}").as_str()),
                "{path} {spec}"
            );
            assert_eq!(
                r.header("content-length"),
                Some((end - start + 1).to_string().as_str())
            );
            assert_eq!(r.body, content[start..=end], "{path} {spec}");
        }
    }
}

#[tokio::test]
async fn unsatisfiable_range_returns_416_with_star_content_range() {
    let srv = TestServer::start().await;
    let path = format!("/{}", large_target());
    for spec in [
        format!("bytes={LARGE_LEN}-"),
        "bytes=999999999-1999999999".into(),
        "bytes=-0".into(),
    ] {
        let r = get(srv.addr, &path, &[("Range", &spec)]).await;
        assert_eq!(r.status, 416, "{spec}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{LARGE_LEN}").as_str())
        );
        assert!(r.body.is_empty());
    }
}

#[tokio::test]
async fn multi_range_and_invalid_range_serve_full_body() {
    let srv = TestServer::start().await;
    let path = format!("/{}", large_target());
    for spec in ["bytes=0-1,5-9", "bytes=9-2", "lines=1-2", "bytes=abc"] {
        let r = get(srv.addr, &path, &[("Range", spec)]).await;
        assert_eq!(r.status, 200, "{spec}");
        assert!(r.header("content-range").is_none());
        assert_eq!(r.body.len(), LARGE_LEN);
    }
}

#[tokio::test]
async fn if_range_with_stale_validator_serves_full_body() {
    let srv = TestServer::start().await;
    let path = format!("/{}", large_target());
    let etag = get(srv.addr, &path, &[])
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let ok = get(
        srv.addr,
        &path,
        &[("Range", "bytes=0-3"), ("If-Range", &etag)],
    )
    .await;
    assert_eq!(ok.status, 206);
    let stale = get(
        srv.addr,
        &path,
        &[("Range", "bytes=0-3"), ("If-Range", "\"stale\"")],
    )
    .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), LARGE_LEN);
}

#[tokio::test]
async fn matching_if_none_match_returns_304_without_body() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata/timestamp.json".to_string(),
        format!("/{}", large_target()),
    ] {
        let first = get(srv.addr, &path, &[]).await;
        let etag = first.header("etag").expect("etag").to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong etag: {etag}"
        );
        for inm in [
            etag.clone(),
            format!("\"nope\", {etag}"),
            format!("W/{etag}"),
            "*".into(),
        ] {
            let r = get(srv.addr, &path, &[("If-None-Match", &inm)]).await;
            assert_eq!(r.status, 304, "{path} {inm}");
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag"), Some(etag.as_str()));
            assert_eq!(r.header("cache-control"), first.header("cache-control"));
        }
        let miss = get(srv.addr, &path, &[("If-None-Match", "\"other\"")]).await;
        assert_eq!(miss.status, 200);
        assert_eq!(miss.body, first.body);
    }
}

#[tokio::test]
async fn if_modified_since_returns_304_only_when_not_modified() {
    let srv = TestServer::start().await;
    let first = get(srv.addr, "/metadata/root.json", &[]).await;
    let lm = first.header("last-modified").unwrap().to_owned();
    let r = get(
        srv.addr,
        "/metadata/root.json",
        &[("If-Modified-Since", &lm)],
    )
    .await;
    assert_eq!(r.status, 304);
    let old = "Thu, 01 Jan 2015 00:00:00 GMT";
    let r = get(
        srv.addr,
        "/metadata/root.json",
        &[("If-Modified-Since", old)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
}

#[tokio::test]
async fn failed_if_match_returns_412() {
    let srv = TestServer::start().await;
    let r = get(srv.addr, "/metadata/root.json", &[("If-Match", "\"nope\"")]).await;
    assert_eq!(r.status, 412);
}

#[tokio::test]
async fn etag_changes_when_file_is_replaced_by_rename() {
    let srv = TestServer::start().await;
    let before = get(srv.addr, "/metadata/timestamp.json", &[]).await;
    let tmp = srv.root.join("metadata/.timestamp.json.new");
    std::fs::write(&tmp, br#"{"signed":{"_type":"timestamp","version":8}}"#).unwrap();
    std::fs::rename(&tmp, srv.root.join("metadata/timestamp.json")).unwrap();
    let after = get(srv.addr, "/metadata/timestamp.json", &[]).await;
    assert_ne!(before.header("etag"), after.header("etag"));
    let etag = before.header("etag").unwrap();
    let r = get(
        srv.addr,
        "/metadata/timestamp.json",
        &[("If-None-Match", etag)],
    )
    .await;
    assert_eq!(r.status, 200, "stale etag must not yield 304");
    assert!(r.text().contains("\"version\":8"));
}

#[tokio::test]
async fn cache_control_is_immutable_for_consistent_snapshot_names() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata/1.root.json".to_string(),
        "/metadata/2.root.json".into(),
        "/metadata/7.snapshot.json".into(),
        "/metadata/5.targets.json".into(),
        "/metadata/3.apps.json".into(),
        format!("/{}", large_target()),
        format!("/{}", small_target()),
    ] {
        let r = get(srv.addr, &path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn cache_control_is_no_cache_for_moving_names_and_errors() {
    let srv = TestServer::start().await;
    for path in [
        "/metadata/timestamp.json",
        "/metadata/root.json",
        "/targets/plain.bin",
    ] {
        let r = get(srv.addr, path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
    }
    // A client probing for the next root version must never get a cached 404.
    let r = get(srv.addr, "/metadata/3.root.json", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("cache-control"), Some("no-cache"));
}

#[tokio::test]
async fn symlink_inside_served_tree_is_followed() {
    let srv = TestServer::start().await;
    let r = get(srv.addr, "/targets/inner-link.bin", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"plain target without hash prefix");
}

#[tokio::test]
async fn query_string_is_ignored() {
    let srv = TestServer::start().await;
    let r = get(srv.addr, "/metadata/root.json?x=1", &[]).await;
    assert_eq!(r.status, 200);
}
