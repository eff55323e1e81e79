//! The tonic example's own code: a Channel retried by firebreak until the server serves.

#[allow(dead_code)]
#[path = "../examples/tonic_retry.rs"]
mod example;

#[tokio::test]
async fn the_tonic_example_retries_to_serving() {
    let t0 = std::time::Instant::now();
    let (status, calls) = tokio::time::timeout(std::time::Duration::from_secs(30), example::run())
        .await
        .expect("the test never finished: an awaited call, answer or request never came (see the last step it reached)")
        .unwrap();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(calls, 3);
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(200),
        "the pushback was honoured"
    );
}
