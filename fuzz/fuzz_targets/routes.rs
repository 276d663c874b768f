//! Path routing: any request target against a table of receivers.
#![no_main]

use fluxgate::edge::routes::Routes;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

#[path = "support.rs"]
mod support;

static ROUTES: LazyLock<Routes> = LazyLock::new(|| {
    let settings = support::settings(5);
    Routes::new(&settings.receivers)
});

fuzz_target!(|data: &[u8]| {
    if let Ok(uri) = http::Uri::try_from(data) {
        let _ = ROUTES.find(&uri);
    }
});
