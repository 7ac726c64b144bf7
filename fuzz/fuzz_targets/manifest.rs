//! `wisp.toml` as written by anyone: parsing never panics, and every function
//! it accepts becomes a deployment the API validates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp_core::{FunctionSpec, manifest::Manifest};

fuzz_target!(|text: &str| {
    if let Ok(manifest) = Manifest::parse(text) {
        // As `wisp deploy` would send it, with whatever it declared uploaded.
        let digest = format!("sha256:{}", "0".repeat(64));
        for function in &manifest.function {
            let uploaded = |path: &Option<String>| path.as_ref().map(|_| digest.clone());
            let _ = FunctionSpec::from_deployment(
                function.deployment(uploaded(&function.artifact), uploaded(&function.files)),
            );
        }
    }
});
