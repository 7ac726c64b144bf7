//! The upload-to-thumbnail app of `examples/thumbnails`, end to end: an
//! image put into bucket `uploads` fires the function once, which stores a
//! thumbnail in bucket `thumbnails` and its sizes in key-value store
//! `thumbnails`; `GET /gallery` lists it; and a node killed with SIGKILL
//! right after the uploads were answered still makes every thumbnail once
//! it is back.

use std::{io::Read as _, path::Path, time::Duration};

use serde_json::{Value, json};
use wisp_testing::{Node, Response, send};

use crate::WISP;

/// A `width`×`height` 24-bit BMP of a colour gradient.
fn bmp(width: u32, height: u32) -> Vec<u8> {
    let row = (width * 3).div_ceil(4) * 4;
    let pixels = row * height;
    let mut image = Vec::with_capacity(54 + pixels as usize);
    image.extend_from_slice(b"BM");
    for value in [54 + pixels, 0, 54, 40] {
        image.extend_from_slice(&value.to_le_bytes());
    }
    image.extend_from_slice(&(width as i32).to_le_bytes());
    image.extend_from_slice(&(height as i32).to_le_bytes());
    image.extend_from_slice(&1u16.to_le_bytes());
    image.extend_from_slice(&24u16.to_le_bytes());
    for value in [0, pixels, 2835, 2835, 0, 0] {
        image.extend_from_slice(&value.to_le_bytes());
    }
    for y in 0..height {
        for x in 0..width {
            image.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
        }
        image.resize(image.len() + (row - width * 3) as usize, 0);
    }
    image
}

/// `method /s3{path}` with the admin token.
fn s3(node: &Node, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    send(node.admin(method, &format!("/s3{path}")), body)
}

/// Uploads `body` as `uploads/{key}`.
fn upload(node: &Node, key: &str, body: &[u8]) {
    let put = send(
        node.admin("PUT", &format!("/s3/uploads/{key}"))
            .set("Content-Type", "image/bmp"),
        Some(body),
    );
    assert_eq!(put.status, 200, "{key}: {}", put.body);
}

/// The sizes recorded for `key`, once there are some.
fn record(node: &Node, key: &str) -> Option<Value> {
    let read = send(
        node.admin("GET", &format!("/system/kv/thumbnails/{key}")),
        None,
    );
    (read.status == 200).then(|| serde_json::from_str(&read.body).expect("a JSON record"))
}

/// `GET path` with the admin token: status, content type and body as bytes.
fn fetch(node: &Node, path: &str) -> (u16, Option<String>, Vec<u8>) {
    let response = match node.admin("GET", path).call() {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("GET {path}: {error}"),
    };
    let status = response.status();
    let content_type = response.header("content-type").map(str::to_owned);
    let mut body = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut body)
        .expect("a body");
    (status, content_type, body)
}

/// The width and height a PNG's header declares.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

/// The calls of the function that succeeded, by the key their answer names.
fn calls(node: &Node) -> Vec<String> {
    let listed = send(
        node.admin("GET", "/system/calls?function=thumbnails&status=succeeded"),
        None,
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
    listed.json()["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|call| {
            let answer = call["result"]["body"].as_str().unwrap_or_default();
            answer
                .split([':', ' '])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Deploys the example from its own directory: `wisp deploy` builds it.
fn deploy(node: &Node) {
    let manifest = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/thumbnails/wisp.toml"
    ));
    let mut deploy = node.cli(WISP);
    deploy.args(["deploy", "-f"]).arg(manifest);
    let output = deploy.output().expect("wisp deploy runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_upload_becomes_a_thumbnail_in_the_gallery_even_across_a_kill() {
    let node = Node::start(WISP);
    deploy(&node);
    let empty = node.get("/gallery");
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert!(empty.body.contains("0 image(s)"), "{}", empty.body);

    upload(&node, "cats/tom.bmp", &bmp(400, 300));
    upload(&node, "notes.txt", b"not an image at all");
    assert!(
        node.eventually(Duration::from_secs(60), || record(&node, "cats/tom.bmp")
            .is_some()),
        "no thumbnail was recorded: {}",
        node.log()
    );
    let mut recorded = record(&node, "cats/tom.bmp").unwrap();
    let (status, content_type, png) = fetch(&node, "/s3/thumbnails/cats/tom.bmp");
    assert_eq!((status, content_type.as_deref()), (200, Some("image/png")));
    assert_eq!(png_size(&png), (160, 120));
    assert_eq!(recorded["thumbBytes"].take(), png.len());
    assert_eq!(
        recorded,
        json!({
            "width": 400, "height": 300, "thumbWidth": 160, "thumbHeight": 120,
            "bytes": 54 + 1200 * 300, "thumbBytes": null,
        })
    );

    // The gallery shows it, and serves its thumbnail.
    let gallery = node.get("/gallery");
    assert_eq!(gallery.status, 200, "{}", gallery.body);
    assert!(
        gallery.body.contains("<img src=\"/gallery/cats/tom.bmp\"")
            && gallery.body.contains("400×300"),
        "{}",
        gallery.body
    );
    let (status, _, served) = fetch(&node, "/gallery/cats/tom.bmp");
    assert_eq!((status, served), (200, png));
    // A file that is no image is skipped, not retried.
    assert!(
        node.eventually(Duration::from_secs(30), || calls(&node).len() == 2),
        "{:?}",
        calls(&node)
    );
    assert_eq!(record(&node, "notes.txt"), None);
    assert_eq!(s3(&node, "HEAD", "/thumbnails/notes.txt", None).status, 404);

    // Uploads answered, then the node killed: once it is back, each makes
    // its thumbnail, and each upload fired the function once.
    let keys: Vec<String> = (0..6).map(|n| format!("batch/{n}.bmp")).collect();
    for (n, key) in keys.iter().enumerate() {
        upload(&node, key, &bmp(200 + 10 * n as u32, 100));
    }
    let data_dir = node.data_dir.clone();
    let scratch = node.kill();
    let node = Node::start_with(WISP, scratch, data_dir, &[]);
    assert!(
        node.eventually(Duration::from_secs(90), || keys
            .iter()
            .all(|key| record(&node, key).is_some())),
        "not every upload made a thumbnail: {}",
        node.log()
    );
    for (n, key) in keys.iter().enumerate() {
        assert_eq!(record(&node, key).unwrap()["width"], 200 + 10 * n);
    }
    let mut fired = calls(&node);
    fired.sort();
    let mut expected: Vec<String> = ["cats/tom.bmp", "notes.txt"]
        .into_iter()
        .map(str::to_owned)
        .chain(keys.iter().cloned())
        .collect();
    expected.sort();
    assert_eq!(fired, expected);
    let gallery = node.get("/gallery");
    assert!(gallery.body.contains("7 image(s)"), "{}", gallery.body);
}
