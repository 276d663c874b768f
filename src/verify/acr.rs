//! `acr`: no credential beyond the secret path; the body must decode into
//! `{action, target: {repository, tag}}`.

use super::payload::{BodyShape, Shape};
use super::ReceiverType;

#[derive(Debug)]
pub struct Acr;

impl BodyShape for Acr {
    const TYPE: ReceiverType = ReceiverType::Acr;
    const SHAPE: &'static Shape = &Shape::Object(&[
        ("action", Shape::Str),
        (
            "target",
            Shape::Object(&[("repository", Shape::Str), ("tag", Shape::Str)]),
        ),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::payload::testing::{complete, fixture, refused};

    #[tokio::test]
    async fn pushes_pass_and_a_misshapen_body_is_refused() {
        for name in ["push.json", "chart-push.json"] {
            complete(&Acr, &fixture("acr", name)).await.unwrap();
        }
        assert_eq!(
            refused(&Acr, b"").await,
            "acr payload is empty: expected a JSON object"
        );
        assert_eq!(
            refused(&Acr, b"{'action': 'push'}").await,
            "acr payload is not JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(
            refused(&Acr, br#"{"action": "push", "target": {"tag": false}}"#).await,
            "acr payload: target.tag must be a string, not a boolean at line 1 column 42"
        );
        assert_eq!(
            refused(&Acr, br#"{"target": ["payments-service"]}"#).await,
            "acr payload: target must be a JSON object, not an array at line 1 column 12"
        );
    }
}
