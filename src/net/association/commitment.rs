//! Storage Commitment Push Model on an established association: the N-ACTION is answered at
//! once, the N-EVENT-REPORT follows on this association or a new one.
//!
//! Skeleton (issue 13): refuses until the service is built.

use tracing::{debug, warn};

use super::{Established, Flow};
use crate::net::dimse::command::{encode_response, Command};
use crate::net::dimse::status::UNRECOGNIZED_OPERATION;
use crate::rt::{NetStream, ObjFile};

impl<F: ObjFile, S: NetStream> Established<F, S> {
    /// An N-ACTION-RQ on Storage Commitment with its dataset (`None`: it came without one).
    pub(super) async fn commitment_action(
        &mut self,
        cmd: Command,
        pc_id: u8,
        _data: Option<Vec<u8>>,
    ) -> Flow {
        warn!("Storage Commitment not built yet");
        let rsp = encode_response(
            &cmd,
            cmd.command_field | 0x8000,
            UNRECOGNIZED_OPERATION,
            Some("not built yet"),
        );
        self.reply(pc_id, &rsp, None).await
    }

    /// The requestor's N-EVENT-REPORT-RSP to one of our reports.
    pub(super) async fn commitment_report_response(&mut self, cmd: Command, _pc_id: u8) -> Flow {
        debug!(status = ?cmd.status, "N-EVENT-REPORT-RSP");
        Flow::Continue
    }
}
