//! A Spin component that reads a Spin variable: it imports
//! `fermyon:spin/variables`, which wisp does not provide, so a deploy of it
//! is refused, naming that interface.

use spin_sdk::{
    http::{IntoResponse, Request, Response},
    http_component,
};

#[http_component]
fn handle(_request: Request) -> anyhow::Result<impl IntoResponse> {
    let greeting = spin_sdk::variables::get("greeting")?;
    Ok(Response::builder().status(200).body(greeting).build())
}
