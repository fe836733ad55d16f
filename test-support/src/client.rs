//! Helpers for tests that run the `ferry-client` library: collecting what a client reports.

/// Every `Event::Message` a client reported, in report order.
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<ferry_client::ReceivedMessage>>>;

/// Collects the messages of `events` until the client stops (the loop ends with the event channel).
pub fn collect_messages(mut events: ferry_client::Events) -> Seen {
    let seen: Seen = Seen::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let ferry_client::Event::Message(m) = event {
                sink.lock().expect("seen lock").push(m);
            }
        }
    });
    seen
}
