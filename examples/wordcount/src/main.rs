//! wordcount: a `wasi:cli` command that reads the request body on STDIN and
//! answers with its line, word and byte counts as JSON on STDOUT.

use std::io::Read as _;

fn main() {
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .expect("the request body is readable");
    let text = String::from_utf8_lossy(&body);
    let lines = text.lines().count();
    let words = text.split_whitespace().count();
    let method = std::env::var("Http_Method").unwrap_or_default();
    eprintln!("counted {words} words in a {method} request of {} bytes", body.len());
    println!(
        "{{\"lines\":{lines},\"words\":{words},\"bytes\":{}}}",
        body.len()
    );
}
