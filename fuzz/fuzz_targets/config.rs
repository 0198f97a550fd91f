//! The config parser (`Config::from_toml`, src/config/).
//!
//! Properties: never panics (error positions are computed from byte spans of hostile text);
//! an error renders; and in a config that is accepted, every route's own path resolves to that
//! route (a protected route that can never match would fail open to a shorter one).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::policy::{resolve, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: relative `*_file` paths resolve to nothing.
    let source = Path::new("/nonexistent-portcullis-fuzz/portcullis.toml");
    match Config::from_toml(source, text) {
        Ok(config) => {
            for route in config.routes.iter() {
                if let Ok((_, target)) = resolve(&config.routes, route.path.as_str()) {
                    match target {
                        Target::Route(found) => assert!(
                            found.path.as_str().len() >= route.path.as_str().len(),
                            "route {} is shadowed by {} on its own path",
                            route.path,
                            found.path
                        ),
                        Target::Reserved => {}
                        Target::NoRoute => panic!("route {} misses its own path", route.path),
                    }
                }
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
