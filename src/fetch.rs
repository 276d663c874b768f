//! GETs of documents fluxgate follows from their publishers: providers' address ranges and
//! token issuers' signing keys. Bodies are capped, so a publisher gone wrong cannot fill memory.

use std::error::Error;

/// GETs `url`; a success status gives the response headers and the whole body, anything else
/// (an error status, a body over `cap` bytes, a connection failure) a one-line reason.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
    accept: &'static str,
    cap: usize,
) -> Result<(http::HeaderMap, Vec<u8>), String> {
    let mut resp = client
        .get(url)
        .header("Accept", accept)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", causes(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: {}", causes(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > cap {
            return Err(format!("GET {url}: more than {}", size(cap)));
        }
    }
    Ok((headers, body))
}

/// reqwest's message with the causes under it ("error sending request" alone does not say
/// whether the name did not resolve or the connection was refused).
pub fn causes(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        out.push_str(": ");
        out.push_str(&c.to_string());
        next = c.source();
    }
    out
}

fn size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}
