//! Configuration parsing: any text as the configuration file, after a valid head so the
//! receivers, limits, ranges, cluster and relay sections are reached too.
#![no_main]

use fluxgate::config::Settings;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::LazyLock;

#[path = "support.rs"]
mod support;

static DIR: LazyLock<PathBuf> = LazyLock::new(support::folder);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Half the inputs stand alone, half follow a valid [server] and [kubernetes].
    let text = if data.first().is_some_and(|b| b & 1 == 0) {
        text.to_string()
    } else {
        support::head(&DIR) + text
    };
    let path = DIR.join("fuzz.toml");
    if std::fs::write(&path, text).is_ok() {
        let _ = Settings::load(&path);
    }
});
