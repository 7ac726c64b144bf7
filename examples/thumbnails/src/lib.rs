//! thumbnails: an image stored in bucket `uploads` fires this component
//! (a bucket trigger, a CloudEvent whose JSON body names the object); it
//! reads the image, makes a thumbnail of at most 160×160 pixels with the
//! `image` crate, stores it as a PNG under the same key in bucket
//! `thumbnails`, and records the sizes in key-value store `thumbnails`.
//! `GET /gallery` is an HTML page of every thumbnail, `GET /gallery/{key}`
//! one thumbnail.
//!
//! It reaches the node in-process at `http://wisp.internal`: buckets through
//! S3's API under `/s3`, the store under `/kv`; the function declares both,
//! so it needs no token and no allowlist entry.

use std::io::{Read as _, Write as _};

use wasip2::http::{
    outgoing_handler,
    types::{
        Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
        ResponseOutparam, Scheme,
    },
};

wasip2::http::proxy::export!(Thumbnails);

/// The longest side of a thumbnail, in pixels.
const SIDE: u32 = 160;
/// Where the node serves its functions.
const NODE: &str = "wisp.internal";

struct Thumbnails;

/// An answer: status, content type, body.
type Answer = (u16, &'static str, Vec<u8>);

impl wasip2::exports::http::incoming_handler::Guest for Thumbnails {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let event = header(&request, "ce-type");
        let path = request.path_with_query().unwrap_or_default();
        let path = path.split('?').next().unwrap_or_default().to_owned();
        let answer = match (request.method(), event.as_deref()) {
            (Method::Post, Some("dev.wisp.object.created")) => {
                let body = read_all(request);
                made(&body).unwrap_or_else(|why| text(500, why))
            }
            (Method::Get, _) => {
                let key = path.strip_prefix("/gallery").unwrap_or(&path);
                match key.strip_prefix('/').filter(|key| !key.is_empty()) {
                    Some(key) => thumbnail(key),
                    None => gallery().unwrap_or_else(|why| text(502, why)),
                }
            }
            _ => text(405, "GET /gallery, or an object-created event\n".into()),
        };
        respond(response_out, answer);
    }
}

/// Makes the thumbnail of the object an event names; a file that is not an
/// image is skipped (a 200: retrying would not make it one).
fn made(event: &[u8]) -> Result<Answer, String> {
    let event: serde_json::Value =
        serde_json::from_slice(event).map_err(|error| format!("the event: {error}\n"))?;
    let key = event["key"].as_str().ok_or("the event names no key\n")?;
    let (status, original) = send(Method::Get, &format!("/s3/uploads/{}", encode(key)), None)?;
    if status == 404 {
        // Removed since: nothing to do.
        return Ok(text(200, format!("{key} is gone\n")));
    }
    if status != 200 {
        return Err(format!("reading uploads/{key}: {status}\n"));
    }
    let image = match image::load_from_memory(&original) {
        Ok(image) => image,
        Err(error) => {
            eprintln!("{key} is not an image: {error}");
            return Ok(text(200, format!("{key} is not an image; skipped\n")));
        }
    };
    let small = image.thumbnail(SIDE, SIDE);
    let mut png = Vec::new();
    small
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|error| format!("encoding the thumbnail: {error}\n"))?;
    let stored = send(
        Method::Put,
        &format!("/s3/thumbnails/{}", encode(key)),
        Some(("image/png", &png)),
    )?;
    if stored.0 != 200 {
        return Err(format!("storing thumbnails/{key}: {}\n", stored.0));
    }
    let record = serde_json::json!({
        "width": image.width(), "height": image.height(),
        "thumbWidth": small.width(), "thumbHeight": small.height(),
        "bytes": original.len(), "thumbBytes": png.len(),
    })
    .to_string();
    let recorded = send(
        Method::Put,
        &format!("/kv/thumbnails/{}", encode(key)),
        Some(("application/json", record.as_bytes())),
    )?;
    if recorded.0 != 204 {
        return Err(format!("recording {key}: {}\n", recorded.0));
    }
    Ok(text(200, format!("{key}: {record}\n")))
}

/// One thumbnail's PNG.
fn thumbnail(key: &str) -> Answer {
    match send(Method::Get, &format!("/s3/thumbnails/{key}"), None) {
        Ok((200, png)) => (200, "image/png", png),
        Ok((404, _)) => text(404, "no such thumbnail\n".into()),
        Ok((status, _)) => text(502, format!("the bucket answered {status}\n")),
        Err(why) => text(502, why),
    }
}

/// The HTML page of every thumbnail, with the sizes recorded for it.
fn gallery() -> Result<Answer, String> {
    let mut figures = String::new();
    let mut count = 0;
    let mut token: Option<String> = None;
    loop {
        let mut listing = "/s3/thumbnails?list-type=2".to_owned();
        if let Some(token) = &token {
            listing.push_str(&format!("&continuation-token={}", encode(token)));
        }
        let (status, xml) = send(Method::Get, &listing, None)?;
        if status == 404 {
            // No thumbnail made yet: the bucket is made by its first object.
            break;
        }
        if status != 200 {
            return Err(format!("listing thumbnails: {status}\n"));
        }
        let xml = String::from_utf8_lossy(&xml);
        for key in elements(&xml, "Key") {
            let (_, record) = send(
                Method::Get,
                &format!("/kv/thumbnails/{}", encode(&key)),
                None,
            )?;
            let record: serde_json::Value =
                serde_json::from_slice(&record).unwrap_or(serde_json::Value::Null);
            let caption = match (&record["width"], &record["height"]) {
                (serde_json::Value::Number(width), serde_json::Value::Number(height)) => {
                    format!("{width}×{height}, {} bytes", record["bytes"])
                }
                _ => "sizes not recorded".to_owned(),
            };
            figures.push_str(&format!(
                "<figure><img src=\"/gallery/{}\" alt=\"{key}\"><figcaption>{key}<br>{caption}\
                 </figcaption></figure>\n",
                encode(&key),
                key = escape(&key),
            ));
            count += 1;
        }
        token = elements(&xml, "NextContinuationToken").pop();
        if token.is_none() {
            break;
        }
    }
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Gallery</title>\
         <style>body{{font-family:sans-serif}}figure{{display:inline-block;margin:8px;\
         text-align:center}}</style></head>\n<body><h1>Gallery</h1>\n<p>{count} image(s). \
         Upload into bucket <code>uploads</code> to add one.</p>\n{figures}</body></html>\n"
    );
    Ok((200, "text/html; charset=utf-8", page.into_bytes()))
}

/// The unescaped text of each `<name>` element of an S3 listing.
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|rest| {
            let text = rest.split(close.as_str()).next()?;
            Some(
                text.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

/// `text` made safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A key percent-encoded for a path, its slashes kept.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A plain-text answer.
fn text(status: u16, message: String) -> Answer {
    (status, "text/plain; charset=utf-8", message.into_bytes())
}

/// A request header's value.
fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    values
        .first()
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Sends `method path` to the node, with a body and its content type: its
/// status and body.
fn send(method: Method, path: &str, body: Option<(&str, &[u8])>) -> Result<(u16, Vec<u8>), String> {
    let headers = Fields::new();
    if let Some((content_type, _)) = body {
        headers
            .set("content-type", &[content_type.as_bytes().to_vec()])
            .map_err(|error| format!("content-type: {error:?}\n"))?;
    }
    let request = OutgoingRequest::new(headers);
    let refused = |_| format!("a bad request to {path}\n");
    request.set_method(&method).map_err(refused)?;
    request.set_scheme(Some(&Scheme::Http)).map_err(refused)?;
    request.set_authority(Some(NODE)).map_err(refused)?;
    request.set_path_with_query(Some(path)).map_err(refused)?;
    let outgoing = request.body().map_err(refused)?;
    let future =
        outgoing_handler::handle(request, None).map_err(|error| format!("{path}: {error:?}\n"))?;
    if let Some((_, bytes)) = body {
        let mut stream = outgoing.write().map_err(refused)?;
        for chunk in bytes.chunks(4096) {
            stream
                .write_all(chunk)
                .map_err(|error| format!("sending {path}: {error}\n"))?;
        }
        stream
            .flush()
            .map_err(|error| format!("sending {path}: {error}\n"))?;
    }
    OutgoingBody::finish(outgoing, None).map_err(|error| format!("{path}: {error:?}\n"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response\n")?
        .map_err(|()| "the response was taken\n".to_owned())?
        .map_err(|error| format!("{path}: {error:?}\n"))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "no body\n".to_owned())?;
    let mut bytes = Vec::new();
    body.stream()
        .map_err(|()| "no body stream\n".to_owned())?
        .read_to_end(&mut bytes)
        .map_err(|error| format!("reading {path}: {error}\n"))?;
    Ok((status, bytes))
}

/// The request body, whole.
fn read_all(request: IncomingRequest) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(body) = request.consume()
        && let Ok(mut stream) = body.stream()
    {
        let _ = stream.read_to_end(&mut bytes);
    }
    bytes
}

/// Sends `answer`.
fn respond(response_out: ResponseOutparam, (status, content_type, body): Answer) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[content_type.as_bytes().to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(mut stream) = outgoing.write() {
        for chunk in body.chunks(4096) {
            if stream.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(outgoing, None);
}
