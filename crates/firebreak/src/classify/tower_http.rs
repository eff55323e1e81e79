//! tower-http's classification traits, so `TraceLayer` and friends use the same verdicts.

use crate::class::Class;
use crate::error::Classification;
use crate::transport::classify_display;
use http::{Request, Response};
use std::fmt;
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos,
};

/// firebreak's HTTP classifier for tower-http: a response is a failure unless its class is
/// `Success`; the failure class is firebreak's [`Class`]. It reads the [`Classification`] the
/// classify layer attached when there is one (so parsed bodies and SSE are taken into account),
/// else classifies from the status.
///
/// ```
/// use firebreak::classify::FireworksClassifier;
/// use tower_http::trace::TraceLayer;
///
/// let trace = TraceLayer::new(FireworksClassifier);
/// # let _ = trace;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FireworksClassifier;

impl ClassifyResponse for FireworksClassifier {
    type FailureClass = Class;
    type ClassifyEos = NeverClassifyEos<Class>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Class, Self::ClassifyEos> {
        let class = Classification::class_of(res);
        ClassifiedResponse::Ready(if class.is_success() {
            Ok(())
        } else {
            Err(class)
        })
    }

    fn classify_error<E: fmt::Display + 'static>(self, error: &E) -> Class {
        classify_display(error)
    }
}

impl MakeClassifier for FireworksClassifier {
    type Classifier = Self;
    type FailureClass = Class;
    type ClassifyEos = NeverClassifyEos<Class>;

    fn make_classifier<B>(&self, _req: &Request<B>) -> Self {
        *self
    }
}
