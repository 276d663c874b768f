//! `quay`: no credential beyond the secret path; the body must decode into
//! `{docker_url, updated_tags: [string]}`.

use super::payload::{BodyShape, Shape};
use super::ReceiverType;

#[derive(Debug)]
pub struct Quay;

impl BodyShape for Quay {
    const TYPE: ReceiverType = ReceiverType::Quay;
    const SHAPE: &'static Shape = &Shape::Object(&[
        ("docker_url", Shape::Str),
        ("updated_tags", Shape::List(&Shape::Str)),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::payload::testing::{complete, fixture, refused};

    #[tokio::test]
    async fn a_push_passes_and_a_misshapen_body_is_refused() {
        complete(&Quay, &fixture("quay", "repo-push.json"))
            .await
            .unwrap();
        assert_eq!(
            refused(&Quay, &fixture("quay", "repo-push-legacy.json")).await,
            "quay payload: updated_tags must be an array, not a JSON object at line 8 column 4"
        );
        assert_eq!(
            refused(&Quay, b"").await,
            "quay payload is empty: expected a JSON object"
        );
        assert_eq!(
            refused(&Quay, b"docker_url=quay.io").await,
            "quay payload is not JSON: expected value at line 1 column 1"
        );
        assert_eq!(
            refused(&Quay, br#"{"updated_tags": ["latest", 7]}"#).await,
            "quay payload: updated_tags[1] must be a string, not a number at line 1 column 29"
        );
        assert_eq!(
            refused(&Quay, br#"{"docker_url": ["quay.io"]}"#).await,
            "quay payload: docker_url must be a string, not an array at line 1 column 16"
        );
    }
}
