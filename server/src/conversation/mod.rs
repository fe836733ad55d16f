//! Conversation streams: one bidirectional stream per active conversation, opened by either side with
//! `Open` (FERRY-STREAM-*). It carries Send → SendAck, Deliver → Ack and Pull → PullResult.
//!
//! One file per concern, in the order a frame meets them:
//! - [`stream`]: accepting a client-opened stream, authorizing its Open, and the serve loop that reads
//!   frames, dispatches them and writes the answers to Sends in the order the Sends arrived;
//! - [`send`]: the checks before an append, queueing it, and the SendAck or Error once it is durable;
//! - [`pull`]: one page of history for Pull, kept within the frame size;
//! - [`delivery`]: fan-out of a durable message to every online device (this node and the cluster bus),
//!   the per-connection outbound loop that writes Delivers and datagrams, and Ack cursors.
//!
//! Sends are pipelined: each is checked and its append queued in arrival order (so seqs follow that
//! order, FERRY-SEND-8), and the store batches the appends of many Sends into one commit. The serve loop
//! keeps the pending appends in an ordered set, so answers leave in request order while later appends
//! are already committing. The set is bounded: max_inflight_sends caps the appends in it, and reading
//! pauses once the refusals queued behind them reach as many again.

mod delivery;
mod pull;
mod send;
mod stream;

pub(crate) use delivery::{deliver, deliver_local, outbound_loop};
pub(crate) use stream::accept_loop;
#[cfg(feature = "fuzzing")]
pub(crate) use stream::serve_client_stream;
