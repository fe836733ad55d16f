//! A tiny chat: sends each line of stdin to a conversation and prints what arrives.
//!
//! ```text
//! cargo run -p ferry-client --example chat -- 127.0.0.1:7700 ca.pem "$TOKEN" d:alice:bob
//! ```

use ferry_client::{ClientBuilder, Event};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, ca, token, conversation] = args.as_slice() else {
        eprintln!("usage: chat SERVER CA_FILE TOKEN CONVERSATION");
        std::process::exit(2);
    };
    let device = ferry_client::token::read_claims(token)
        .map(|c| c.dev)
        .unwrap_or_else(|| "chat".into());
    let (client, mut events) = ClientBuilder::new()
        .endpoint(server.as_str())
        .ca_file(ca)
        .token(token.as_str())
        .device_id(device)
        .build() // in-memory store: this example keeps nothing between runs
        .await?;

    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Message(m) => println!("[{}] {}: {}", m.seq, m.sender, m.text()),
                Event::Connection(state) => eprintln!("* {state:?}"),
                _ => {}
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let receipt = client.send(conversation.as_str(), line).await?;
        let client_side = receipt.await?;
        eprintln!("* stored as seq {}", client_side.seq);
    }
    client.shutdown().await;
    Ok(())
}
