//! Kubeconfig files pointing at a stand-in.

/// A YAML double-quoted scalar. JSON string syntax is valid YAML, so the
/// token may contain anything without breaking the file.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

pub(crate) fn render(server: &str, ca_pem: &str, token: &str) -> String {
    let name = "kube-standin";
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {name}\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority-data: {ca}\n\
         users:\n\
         - name: {name}\n  \
           user:\n    \
             token: {token}\n\
         contexts:\n\
         - name: {name}\n  \
           context:\n    \
             cluster: {name}\n    \
             user: {name}\n\
         current-context: {name}\n\
         preferences: {{}}\n",
        server = yaml_str(server),
        ca = crate::base64::encode(ca_pem.as_bytes()),
        token = yaml_str(token),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_shape() {
        let k = render("https://127.0.0.1:1", "PEM", "t\"k");
        assert!(k.contains("    server: \"https://127.0.0.1:1\"\n"));
        assert!(k.contains("    token: \"t\\\"k\"\n"));
        assert!(k.contains("current-context: kube-standin\n"));
    }
}
