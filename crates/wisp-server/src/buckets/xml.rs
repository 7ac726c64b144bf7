//! S3's XML: the documents the node answers with, and the two a client
//! sends (a multipart upload's completion, a batch of deletions), read
//! with `quick-xml`.

use quick_xml::{escape::escape, events::Event};
use wisp_core::objects::{BucketInfo, Listing};

const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// A document with one root element holding `body`.
pub(super) fn document(root: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} xmlns=\"{NAMESPACE}\">{body}</{root}>"
    )
}

/// `<name>text</name>`, the text escaped.
pub(super) fn element(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", escape(text))
}

/// An instant as S3 writes it in XML: ISO 8601 in UTC, with milliseconds.
pub(super) fn instant(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S.000Z")
        .to_string()
}

/// `ListAllMyBucketsResult`.
pub(super) fn buckets(owner: &str, buckets: &[BucketInfo], suffix: &str) -> String {
    let listed: String = buckets
        .iter()
        .map(|bucket| {
            format!(
                "<Bucket>{}{}</Bucket>",
                element("Name", &format!("{}{suffix}", bucket.name)),
                element("CreationDate", &instant(bucket.created_at))
            )
        })
        .collect();
    document(
        "ListAllMyBucketsResult",
        &format!(
            "<Owner>{}{}</Owner><Buckets>{listed}</Buckets>",
            element("ID", owner),
            element("DisplayName", owner)
        ),
    )
}

/// What a listing was asked for, as its answer repeats it.
pub(super) struct Asked<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    pub max_keys: usize,
    /// `encoding-type=url`: keys and prefixes percent-encoded.
    pub url_encoded: bool,
    /// Version 2 (`list-type=2`): its continuation token and start; else version 1's marker.
    pub v2: Option<(Option<&'a str>, Option<&'a str>)>,
    pub marker: Option<&'a str>,
}

/// `ListBucketResult`, of version 1 or 2; `next` is the token or marker
/// the next page starts from.
pub(super) fn listing(asked: &Asked<'_>, listing: &Listing, next: Option<String>) -> String {
    let text = |name: &str, value: &str| {
        if asked.url_encoded {
            element(name, &super::encode_key(value))
        } else {
            element(name, value)
        }
    };
    let mut body = element("Name", asked.bucket);
    body += &text("Prefix", asked.prefix);
    if let Some(delimiter) = asked.delimiter {
        body += &text("Delimiter", delimiter);
    }
    body += &element("MaxKeys", &asked.max_keys.to_string());
    if asked.url_encoded {
        body += &element("EncodingType", "url");
    }
    body += &element("IsTruncated", &next.is_some().to_string());
    match asked.v2 {
        Some((token, start_after)) => {
            body += &element(
                "KeyCount",
                &(listing.objects.len() + listing.prefixes.len()).to_string(),
            );
            if let Some(token) = token {
                body += &element("ContinuationToken", token);
            }
            if let Some(start_after) = start_after {
                body += &text("StartAfter", start_after);
            }
            if let Some(next) = &next {
                body += &element("NextContinuationToken", next);
            }
        }
        None => {
            body += &text("Marker", asked.marker.unwrap_or(""));
            if let Some(next) = &next {
                body += &text("NextMarker", next);
            }
        }
    }
    for object in &listing.objects {
        body += &format!(
            "<Contents>{}{}{}{}<StorageClass>STANDARD</StorageClass></Contents>",
            text("Key", &object.key),
            element("LastModified", &instant(object.modified)),
            element("ETag", &format!("\"{}\"", object.etag)),
            element("Size", &object.size.to_string()),
        );
    }
    for prefix in &listing.prefixes {
        body += &format!(
            "<CommonPrefixes>{}</CommonPrefixes>",
            text("Prefix", prefix)
        );
    }
    document("ListBucketResult", &body)
}

/// S3's error document.
pub(super) fn error(code: &str, message: &str, resource: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>{}{}{}{}</Error>",
        element("Code", code),
        element("Message", message),
        element("Resource", resource),
        element("RequestId", request_id)
    )
}

/// The text of every `name` element in `xml`, in order, each with the
/// texts of the `fields` inside it.
fn records(xml: &[u8], name: &str, fields: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut records = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut field: Option<usize> = None;
    loop {
        match reader.read_event() {
            Err(error) => return Err(error.to_string()),
            Ok(Event::Eof) => return Ok(records),
            Ok(Event::Start(start)) => {
                let local = start.local_name();
                let local = local.as_ref();
                if local == name.as_bytes() {
                    current = Some(vec![String::new(); fields.len()]);
                } else if current.is_some() {
                    field = fields.iter().position(|f| f.as_bytes() == local);
                }
            }
            Ok(Event::Text(text)) => {
                if let (Some(record), Some(index)) = (&mut current, field) {
                    let text = text.decode().map_err(|error| error.to_string())?;
                    record[index] +=
                        &quick_xml::escape::unescape(&text).map_err(|error| error.to_string())?;
                }
            }
            Ok(Event::GeneralRef(reference)) => {
                if let (Some(record), Some(index)) = (&mut current, field) {
                    let name = reference.decode().map_err(|error| error.to_string())?;
                    let entity = format!("&{name};");
                    record[index] +=
                        &quick_xml::escape::unescape(&entity).map_err(|error| error.to_string())?;
                }
            }
            Ok(Event::End(end)) => {
                if end.local_name().as_ref() == name.as_bytes() {
                    records.extend(current.take());
                }
                field = None;
            }
            Ok(_) => {}
        }
    }
}

/// A `CompleteMultipartUpload` document's parts: number and ETag.
pub(super) fn completed_parts(xml: &[u8]) -> Result<Vec<(u32, String)>, String> {
    records(xml, "Part", &["PartNumber", "ETag"])?
        .into_iter()
        .map(|record| {
            let number = record[0]
                .trim()
                .parse()
                .map_err(|_| format!("part number `{}` is not a number", record[0]))?;
            Ok((number, record[1].trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// A `Delete` document's keys, and whether it asks for a quiet answer.
pub(super) fn deleted_keys(xml: &[u8]) -> Result<(Vec<String>, bool), String> {
    let keys = records(xml, "Object", &["Key"])?
        .into_iter()
        .map(|mut record| record.remove(0))
        .collect();
    let quiet = records(xml, "Delete", &["Quiet"])?
        .first()
        .is_some_and(|record| record[0].trim() == "true");
    Ok((keys, quiet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_and_a_deletion_parse_as_clients_send_them() {
        let xml = br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a1"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>&quot;b2&quot;</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            completed_parts(xml).unwrap(),
            [(1, "a1".to_owned()), (2, "b2".to_owned())]
        );
        let xml = br#"<Delete><Object><Key>a &amp; b.txt</Key></Object><Object><Key>c</Key></Object><Quiet>true</Quiet></Delete>"#;
        assert_eq!(
            deleted_keys(xml).unwrap(),
            (vec!["a & b.txt".to_owned(), "c".to_owned()], true)
        );
        assert!(completed_parts(b"<Part><PartNumber>x</PartNumber></Part>").is_err());
    }
}
