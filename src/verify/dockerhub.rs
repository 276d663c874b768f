//! `dockerhub`: no credential beyond the secret path; the body must decode into
//! `{push_data: {tag}, repository: {repo_url}}`.

use super::payload::{BodyShape, Shape};
use super::ReceiverType;

#[derive(Debug)]
pub struct Dockerhub;

impl BodyShape for Dockerhub {
    const TYPE: ReceiverType = ReceiverType::Dockerhub;
    const SHAPE: &'static Shape = &Shape::Object(&[
        ("push_data", Shape::Object(&[("tag", Shape::Str)])),
        ("repository", Shape::Object(&[("repo_url", Shape::Str)])),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::payload::testing::{complete, fixture, refused};

    #[tokio::test]
    async fn a_push_passes_and_a_misshapen_body_is_refused() {
        complete(&Dockerhub, &fixture("dockerhub", "push.json"))
            .await
            .unwrap();
        // Flux reads only two fields: anything else, or nothing, passes.
        complete(&Dockerhub, br#"{"push_data": {"pushed_at": 1715678151}}"#)
            .await
            .unwrap();
        assert_eq!(
            refused(&Dockerhub, b"").await,
            "dockerhub payload is empty: expected a JSON object"
        );
        assert_eq!(
            refused(&Dockerhub, b"<html>").await,
            "dockerhub payload is not JSON: expected value at line 1 column 1"
        );
        assert_eq!(
            refused(&Dockerhub, br#"{"push_data": {"tag": 2}}"#).await,
            "dockerhub payload: push_data.tag must be a string, not a number at line 1 column 23"
        );
        assert_eq!(
            refused(&Dockerhub, br#"{"repository": "example/payments-service"}"#).await,
            "dockerhub payload: repository must be a JSON object, not a string at line 1 column 41"
        );
    }
}
