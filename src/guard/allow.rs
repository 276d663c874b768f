//! A receiver's `allow_from`: CIDR networks and named range sets.

use super::cidr::IpSet;
use super::ranges::RangeSet;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct AllowList {
    pub nets: IpSet,
    /// Looked up on every request, so a refresh takes effect at once.
    pub sets: Vec<Arc<RangeSet>>,
}

impl AllowList {
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.nets.contains(ip) || self.sets.iter().any(|s| s.contains(ip))
    }
}
