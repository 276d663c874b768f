//! Which receiver a request target names: an exact match on the path, as Flux matches
//! `RequestURI`. A query string, a trailing slash, percent-encoding or an absolute URI is not
//! the hook's path.

use crate::config::Receiver;
use http::Uri;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct Routes(HashMap<Box<str>, Arc<Receiver>>);

impl Routes {
    pub fn new(receivers: &[Arc<Receiver>]) -> Self {
        Routes(
            receivers
                .iter()
                .map(|r| (r.path.as_str().into(), r.clone()))
                .collect(),
        )
    }

    pub fn find(&self, uri: &Uri) -> Option<&Arc<Receiver>> {
        if uri.scheme().is_some() || uri.authority().is_some() {
            return None;
        }
        self.0.get(uri.path_and_query()?.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
