//! The one C-FIND responder of every FIND service: a pending response per match, a look for
//! a C-CANCEL between two of them, the final status.
//!
//! Between responses it yields to the core's other tasks, so a long result set neither
//! starves the ingest on the same core nor keeps the reader task from seeing a C-CANCEL.

use crate::net::dimse::command::Command;
use crate::net::dimse::find::{final_response, pending_response_with, status, FindAnswer};
use crate::rt::NetStream;

use super::conn::{Conn, Interrupt};

/// Responses sent between two yields to the runtime.
const YIELD_EVERY: usize = 8;

/// How a C-FIND ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindEnd {
    /// Every match sent, then 0000.
    Success,
    /// Stopped by a C-CANCEL-RQ (FE00 sent).
    Cancelled,
    /// Refused with a failure status.
    Refused,
    /// The peer aborted or the connection failed midway.
    Gone,
}

/// The answer when the work pool did not finish a C-FIND job: out of resources (A700) when
/// its queue was full, unable to process (C000) when the job itself failed.
pub fn pool_refusal(e: &crate::rt::PoolError) -> FindAnswer {
    FindAnswer::Refused {
        status: if e.is_busy() {
            status::OUT_OF_RESOURCES
        } else {
            status::UNABLE_TO_PROCESS
        },
        comment: e.to_string(),
        offending: None,
    }
}

/// Streams `answer` to the C-FIND-RQ `rq` on `pc_id`; returns how it ended and how many
/// pending responses went out.
pub async fn respond<S: NetStream>(
    conn: &mut Conn<S>,
    rq: &Command,
    pc_id: u8,
    answer: FindAnswer,
) -> (FindEnd, usize) {
    let matches = match answer {
        FindAnswer::Refused {
            status,
            comment,
            offending,
        } => {
            tracing::warn!(status = format_args!("{status:04X}"), %comment, "C-FIND refused");
            let rsp = final_response(rq, status, Some(&comment), offending);
            return match conn.send_message(pc_id, &rsp, None).await {
                Ok(()) => (FindEnd::Refused, 0),
                Err(_) => (FindEnd::Gone, 0),
            };
        }
        FindAnswer::Matches(m) => (status::PENDING, m),
        FindAnswer::MatchesWithStatus(s, m) => (s, m),
    };
    let (pending_status, matches) = matches;
    let pending = pending_response_with(rq, pending_status);
    for (sent, identifier) in matches.iter().enumerate() {
        if sent % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
        match conn.poll_cancel(rq.message_id) {
            None => {}
            Some(Interrupt::Cancel) => {
                tracing::info!(sent, total = matches.len(), "C-FIND cancelled by the SCU");
                let rsp = final_response(rq, status::CANCEL, None, None);
                return match conn.send_message(pc_id, &rsp, None).await {
                    Ok(()) => (FindEnd::Cancelled, sent),
                    Err(_) => (FindEnd::Gone, sent),
                };
            }
            Some(Interrupt::Gone) => return (FindEnd::Gone, sent),
        }
        if conn
            .send_message(pc_id, &pending, Some(identifier))
            .await
            .is_err()
        {
            return (FindEnd::Gone, sent);
        }
    }
    let rsp = final_response(rq, status::SUCCESS, None, None);
    match conn.send_message(pc_id, &rsp, None).await {
        Ok(()) => (FindEnd::Success, matches.len()),
        Err(_) => (FindEnd::Gone, matches.len()),
    }
}
